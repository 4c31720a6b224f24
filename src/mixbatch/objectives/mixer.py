"""Objectives mixed per sample with exact weights, by the planner's interleaving rule.

:class:`ObjectiveMixer` assigns an objective (a :class:`~.denoisers.Denoiser`) to every sample
with :class:`mixbatch.plan.interleave.Interleaver`, the rule that mixes sources: after ``n``
samples each objective has been used ``w_i·n`` times to within one. The randomness of sample
``s`` (its spans) comes from ``derive_key(seed, "objective", s)``, so sample ``s`` gets the same
example whatever the number of workers, and a resumed mixer (:meth:`state_dict`) continues
exactly. Each assignment is recorded by name (``names``) for the audit log.

:class:`ExactMix` is the assignment alone (names, weights, counters): "Distilling
Step-by-Step! Outperforming Larger Language Models with Less Training Data and Smaller Model
Sizes" mixes its answer and rationale tasks with it (weights ``1 : λ``,
:mod:`mixbatch.objectives.distill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.objectives.denoisers import Denoiser, Example, corrupt
from mixbatch.plan.interleave import Interleaver
from mixbatch.plan.permutation import derive_key

__all__ = ["ExactMix", "ObjectiveMixer"]


class ExactMix:
    """Objectives ``names`` assigned to samples with ``weights``, exactly, resumably."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], seed: int) -> None:
        names = list(names)
        if not names:
            raise ConfigError("objectives: expected at least one objective")
        if len(set(names)) != len(names):
            raise ConfigError(f"objectives: names repeat: {names}")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(names),) or not np.isfinite(w).all() or (w < 0).any() \
                or w.sum() <= 0:
            raise ConfigError(f"objectives.weights: expected {len(names)} finite weights >= 0"
                              f", not all 0, got {list(weights)}")
        self._names = names
        self.weights = w / w.sum()
        self.seed = seed
        self.rule = Interleaver(len(names))
        self.rule.set_weights(self.weights)
        self.position = 0

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def assign(self, n: int) -> np.ndarray:
        """The objectives (indices) of the next ``n`` samples."""
        out = self.rule.choose(n)
        self.position += n
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "weights": self.weights.tolist(), "seed": self.seed,
                "position": self.position, "rule": self.rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("names") != self.names or state.get("seed") != self.seed \
                or not np.allclose(state.get("weights", []), self.weights):
            raise StateError("objectives state: saved for other objectives, weights or seed; "
                             "resume with the saved ones")
        self.rule.load_state_dict(state["rule"])
        self.position = int(state["position"])


class ObjectiveMixer(ExactMix):
    """Denoisers mixed with ``weights`` (one per denoiser), exactly, per sample."""

    def __init__(self, denoisers: Sequence[Denoiser], weights: Sequence[float], seed: int,
                 mode_ids: dict[str, int], sentinels: Sequence[int]) -> None:
        if not denoisers:
            raise ConfigError("objectives: expected at least one denoiser")
        names = [d.name for d in denoisers]
        if len(set(names)) != len(names):
            raise ConfigError(f"objectives: denoiser names repeat: {names}")
        super().__init__(names, weights, seed)
        missing = sorted({d.paradigm.value for d in denoisers} - set(mode_ids))
        if missing:
            raise ConfigError(f"objectives.mode_ids: no token id for paradigm {missing[0]!r}")
        self.denoisers = tuple(denoisers)
        self.mode_ids = dict(mode_ids)
        self.sentinels = np.asarray(sentinels, dtype=np.int64)

    def transform(self, sample: int, objective: int, tokens: np.ndarray) -> Example:
        """Sample number ``sample`` through objective ``objective``."""
        d = self.denoisers[objective]
        rng = np.random.default_rng(derive_key(self.seed, "objective", sample))
        return corrupt(tokens, d, self.mode_ids[d.paradigm.value], self.sentinels, rng)

    def next(self, docs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Example]]:
        """The next ``len(docs)`` samples: their objectives and examples."""
        first = self.position
        chosen = self.assign(len(docs))
        return chosen, [self.transform(first + k, int(o), doc)
                        for k, (o, doc) in enumerate(zip(chosen, docs, strict=True))]
