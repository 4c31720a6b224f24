"""The ``objectives:`` section of the config: which denoisers, their weights, the layout.

::

    objectives:
      preset: ul2                 # UL2's seven denoisers (the default), or give `denoisers:`
      denoisers:                  # instead of the preset: your own
        - {name: r3, paradigm: r, rate: 0.15, mean_span: 3}
      weights: {R: 1, S: 1, X: 1} # per paradigm (shared equally by its denoisers) or per
                                  # denoiser name; default: equal per denoiser
      layout: prefix_lm           # or encoder_decoder
      sentinels: 100              # sentinel ids for span corruption
      seed: 7                     # default: the config's seed

    objectives:                   # or, instead of denoisers, "Distilling Step-by-Step!"'s
      distill:                    # answer and rationale tasks over one source's records
        rationale_weight: 0.5     # λ: the tasks are mixed 1 : λ per sample
        source: qa                # default: the only source (prepared with text_field: input)
        input_field: input        # the records' fields (these are the defaults)
        answer_field: answer
        rationale_field: rationale

Token ids: the three paradigm tokens and the sentinels come after the tokenizer's vocabulary
(``vocab_size``, ``vocab_size + 1``, ... ; :func:`token_ids`), so a model trained on these
batches has ``vocab_size + 3 + sentinels`` embeddings. Every setting out of range is one line
naming it (``objectives.denoisers.0.rate: must be < 1.0, got 1.5``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mixbatch.errors import ConfigError
from mixbatch.objectives.denoisers import UL2_DENOISERS, Denoiser, Paradigm
from mixbatch.objectives.distill import DistillConfig

__all__ = ["DenoiserConfig", "Layout", "ObjectivesConfig", "check_objectives_config",
           "token_ids"]


class Layout(str, Enum):
    """How an example is laid out in a batch."""

    PREFIX_LM = "prefix_lm"  # one decoder-only row, bidirectional over the prefix
    ENCODER_DECODER = "encoder_decoder"  # encoder inputs, decoder inputs and targets apart


class DenoiserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    paradigm: Literal["r", "s", "x"]
    rate: float = Field(gt=0, lt=1)  # corruption rate r
    mean_span: float = Field(default=1.0, ge=1)  # mean span length μ (R and X)

    def build(self) -> Denoiser:
        return Denoiser(self.name, Paradigm(self.paradigm), self.rate, self.mean_span)


class ObjectivesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["ul2"] | None = None
    denoisers: list[DenoiserConfig] | None = None
    weights: dict[str, float] | None = None
    layout: Layout = Layout.PREFIX_LM
    sentinels: int = Field(default=100, ge=1, le=4096)
    seed: int | None = None
    distill: DistillConfig | None = None  # the answer and rationale tasks instead

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        bad = {k: w for k, w in v.items() if not np.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"weights must be finite and >= 0, got {bad}")
        if sum(v.values()) <= 0:
            raise ValueError("weights are all 0; give at least one a positive weight")
        return v

    @model_validator(mode="after")
    def _one_list(self) -> ObjectivesConfig:
        if self.distill is not None:
            given = [k for k in ("preset", "denoisers", "weights") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"distill: mixes the answer and rationale tasks (weights 1 : "
                                 f"rationale_weight); give it without {', '.join(given)}")
            return self
        if self.preset is not None and self.denoisers is not None:
            raise ValueError("give `preset` or `denoisers`, not both")
        if self.denoisers is not None:
            if not self.denoisers:
                raise ValueError("denoisers: give at least one")
            names = [d.name for d in self.denoisers]
            if len(set(names)) != len(names):
                raise ValueError(f"denoisers: names repeat ({names})")
        self.weight_vector()  # names in `weights` must be known
        return self

    def build(self) -> tuple[Denoiser, ...]:
        """The denoisers: the preset (UL2's seven) or the ones given."""
        if self.denoisers is None:
            return UL2_DENOISERS
        return tuple(d.build() for d in self.denoisers)

    def weight_vector(self) -> np.ndarray:
        """One weight per denoiser (summing to 1): a paradigm's weight (``R``, ``S``, ``X``) is
        shared equally by its denoisers; a denoiser's name sets its own."""
        ds = self.build()
        if self.weights is None:
            return np.full(len(ds), 1.0 / len(ds))
        names = {d.name: i for i, d in enumerate(ds)}
        w = np.zeros(len(ds))
        for key, value in self.weights.items():
            if key in names:
                w[names[key]] += value
            elif key.lower() in ("r", "s", "x"):
                members = [i for i, d in enumerate(ds) if d.paradigm.value == key.lower()]
                if not members and value > 0:
                    raise ValueError(f"weights.{key}: no denoiser of paradigm {key!r}")
                for i in members:
                    w[i] += value / len(members)
            else:
                raise ValueError(f"weights.{key}: not a denoiser name ({', '.join(names)}) "
                                 "nor a paradigm (R, S, X)")
        if w.sum() <= 0:
            raise ValueError("weights: every denoiser has weight 0")
        return w / w.sum()


def token_ids(vocab_size: int, sentinels: int) -> tuple[dict[str, int], np.ndarray, int]:
    """Paradigm token ids, sentinel ids, and the vocabulary size with them: after the
    tokenizer's ``vocab_size`` ids come ``[NLU]``, ``[S2S]``, ``[NLG]``, then the sentinels."""
    if vocab_size < 1:
        raise ConfigError(f"objectives: the tokenizer's vocab_size {vocab_size} is not >= 1")
    modes = {p.value: vocab_size + k for k, p in enumerate(Paradigm)}
    first = vocab_size + len(modes)
    return modes, np.arange(first, first + sentinels, dtype=np.int64), first + sentinels


def check_objectives_config(cfg: Any) -> None:
    """Settings ``objectives:`` cannot go with; ``ValueError`` (pydantic's) with the first."""
    if getattr(cfg, "objectives", None) is None:
        return
    if cfg.mixup is not None:
        raise ValueError("mixup: mixes token rows, which `objectives:` turns into examples of "
                         "other widths; use one of the two")
    spec = cfg.objectives.distill
    if spec is not None:
        names = list(cfg.sources)
        name = spec.source if spec.source is not None else names[0]
        if name not in cfg.sources:
            raise ValueError(f"objectives.distill.source: {name!r} is not a source "
                             f"({', '.join(names)})")
        if len(names) > 1:
            raise ValueError(f"objectives.distill: every row is a record of source {name!r}; "
                             f"the config has other sources too ({', '.join(names)})")
        text_field = getattr(cfg.sources[name], "text_field", None)
        if text_field != spec.input_field:
            raise ValueError(f"objectives.distill: source {name!r} must be prepared from the "
                             f"records' inputs: set its text_field: {spec.input_field} (it is "
                             f"{text_field!r})")
        if cfg.batch.packing.value != "pad":
            raise ValueError("objectives.distill: a row is one record: set batch.packing: pad "
                             f"(it is {cfg.batch.packing.value!r})")
