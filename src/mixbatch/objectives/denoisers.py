"""UL2's mixture of denoisers: span corruption and prefix-LM examples with paradigm tokens.

Paper: Tay et al., "UL2: Unifying Language Learning Paradigms" (ICLR 2023), Section 3. A
denoiser turns a document of ``L`` tokens into ``(inputs, targets)``:

* **R** (regular) and **X** (extreme) denoisers corrupt ``round(L·r)`` tokens (corruption rate
  ``r``) in ``max(1, round(L·r / μ))`` spans of mean length ``μ``, laid out as in T5's
  ``random_spans_noise_mask`` ("Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer"): the noise and the kept tokens are each cut into that many
  non-empty pieces at random cut points, and the pieces alternate, kept first. Each noise span
  becomes one sentinel in the inputs; the targets are each sentinel followed by its span.
* **S** (sequential, prefix LM) keeps the first ``L − round(L·r)`` tokens as inputs and
  predicts the rest.

UL2's seven denoisers (:data:`UL2_DENOISERS`): R with ``(μ, r) = (3, 0.15), (8, 0.15)``; S with
``r = 0.25``; X with ``(3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5)``. The paradigm token
(``[NLU]`` for R, ``[S2S]`` for S, ``[NLG]`` for X) is put first in the inputs (mode switching).

Layouts: :func:`encoder_decoder` gives ``inputs`` and ``targets`` apart; :func:`prefix_lm`
gives one sequence ``[mode] inputs targets`` for a decoder-only model, with ``prefix_len``
(bidirectional attention over the prefix, :func:`prefix_lm_mask`) and the loss mask over the
targets. When a document would need more spans than there are sentinel ids, the span count is
capped at the sentinels (the spans get longer; the corrupted share is unchanged).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from mixbatch.checks import real
from mixbatch.errors import ConfigError

__all__ = [
    "UL2_DENOISERS",
    "Denoiser",
    "Example",
    "Paradigm",
    "corrupt",
    "encoder_decoder",
    "noise_mask",
    "prefix_lm",
    "prefix_lm_mask",
]


class Paradigm(enum.StrEnum):
    """The denoiser families, with UL2's paradigm tokens as :attr:`token`."""

    R = "r"
    S = "s"
    X = "x"

    @property
    def token(self) -> str:
        return {"r": "[NLU]", "s": "[S2S]", "x": "[NLG]"}[self.value]


@dataclass(frozen=True)
class Denoiser:
    """One denoiser: its family, mean span ``μ`` (ignored by S) and corruption rate ``r``."""

    name: str
    paradigm: Paradigm
    rate: float
    mean_span: float = 1.0

    def __post_init__(self) -> None:
        where = f"denoiser {self.name!r}"
        try:
            object.__setattr__(self, "paradigm", Paradigm(self.paradigm))
        except ValueError:
            raise ConfigError(f"{where}.paradigm: expected r, s or x, got {self.paradigm!r}"
                              ) from None
        try:
            real("rate", self.rate, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
            real("mean_span", self.mean_span, lo=1.0)
        except ConfigError as e:
            raise ConfigError(f"{where}.{e}") from None


UL2_DENOISERS: tuple[Denoiser, ...] = (
    Denoiser("r3", Paradigm.R, 0.15, 3.0),
    Denoiser("r8", Paradigm.R, 0.15, 8.0),
    Denoiser("s", Paradigm.S, 0.25),
    Denoiser("x3", Paradigm.X, 0.5, 3.0),
    Denoiser("x8", Paradigm.X, 0.5, 8.0),
    Denoiser("x64", Paradigm.X, 0.15, 64.0),
    Denoiser("x64r50", Paradigm.X, 0.5, 64.0),
)


@dataclass(frozen=True)
class Example:
    """``inputs`` (mode token first) and ``targets``; for the prefix-LM layout ``tokens`` is
    their concatenation and ``prefix_len`` the length of ``inputs``."""

    inputs: np.ndarray
    targets: np.ndarray

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate([self.inputs, self.targets])

    @property
    def prefix_len(self) -> int:
        return int(self.inputs.size)


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split into ``parts`` positive integers, uniformly over the compositions."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 \
        else np.zeros(0, dtype=np.int64)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(length: int, rate: float, mean_span: float, rng: np.random.Generator,
               max_spans: int | None = None) -> np.ndarray:
    """T5's span layout: ``bool[length]``, ``True`` on the corrupted tokens (needs ``length >=
    2``; exactly ``round(length·rate)`` noise tokens, at least 1 and at most ``length − 1``)."""
    if length < 2:
        raise ConfigError(f"noise_mask: a document of {length} tokens cannot be corrupted "
                          "(needs 2 or more)")
    noise = min(max(round(length * rate), 1), length - 1)
    spans = max(1, round(noise / mean_span))
    spans = min(spans, noise, length - noise, max_spans or spans)
    noise_len = _composition(noise, spans, rng)
    keep_len = _composition(length - noise, spans, rng)
    lengths = np.stack([keep_len, noise_len], axis=1).ravel()
    return np.repeat(np.tile([False, True], spans), lengths)


def _replace_spans(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """Each run of ``mask`` becomes one sentinel (the ``k``-th run gets ``sentinels[k]``)."""
    start = mask & ~np.concatenate([[False], mask[:-1]])
    run = np.cumsum(start) - 1
    out = np.where(start, sentinels[np.maximum(run, 0)], tokens)
    return out[~mask | start]


def corrupt(tokens: np.ndarray, denoiser: Denoiser, mode_id: int, sentinels: np.ndarray,
            rng: np.random.Generator) -> Example:
    """``tokens`` through ``denoiser``: ``inputs = [mode_id, ...]`` and ``targets``."""
    tokens = np.asarray(tokens)
    sentinels = np.asarray(sentinels, dtype=tokens.dtype)
    mode = np.array([mode_id], dtype=tokens.dtype)
    n = tokens.size
    if denoiser.paradigm is Paradigm.S:
        if n < 2:
            raise ConfigError(f"denoiser {denoiser.name!r}: a document of {n} tokens has no "
                              "prefix and suffix")
        cut = n - min(max(round(n * denoiser.rate), 1), n - 1)
        return Example(np.concatenate([mode, tokens[:cut]]), tokens[cut:].copy())
    if sentinels.size == 0:
        raise ConfigError(f"denoiser {denoiser.name!r}: span corruption needs sentinel ids")
    mask = noise_mask(n, denoiser.rate, denoiser.mean_span, rng, max_spans=sentinels.size)
    inputs = _replace_spans(tokens, mask, sentinels)
    targets = _replace_spans(tokens, ~mask, sentinels)
    return Example(np.concatenate([mode, inputs]), targets)


def encoder_decoder(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's inputs and the decoder's targets."""
    return example.inputs, example.targets


def prefix_lm(example: Example) -> tuple[np.ndarray, int, np.ndarray]:
    """One decoder-only sequence, its prefix length and its loss mask (next-token prediction:
    position ``t`` predicts token ``t + 1``, so the loss covers positions ``prefix_len − 1``
    to ``T − 2``)."""
    tokens = example.tokens
    loss = np.zeros(tokens.size, dtype=bool)
    loss[example.prefix_len - 1:tokens.size - 1] = True
    return tokens, example.prefix_len, loss


def prefix_lm_mask(length: int, prefix_len: int) -> np.ndarray:
    """``bool[T, T]`` attention: query ``i`` sees key ``j`` when ``j <= i`` or ``j < prefix_len``
    (bidirectional over the prefix, causal after it)."""
    i = np.arange(length)
    return (i[None, :] <= i[:, None]) | (i[None, :] < prefix_len)
