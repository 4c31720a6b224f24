"""Online Data Mixing (ODM): a multi-armed bandit over domains, rewarded by training loss.

Paper: Albalak, Pan, Raffel, Wang, "Efficient Online Data Mixing For Language Model
Pre-Training" (arXiv 2312.02406), Section 2 (EXP3 with a smoothed reward); code
``alon-albalak/online-data-mixing:megatron/data/data_sampling_utils.py``, class
``SmoothedMeanWeightUpdater``, which the README names as the paper's method, called every step
from ``megatron/training.py`` (``train_mixed_minibatch``) through ``group_update`` with each
domain's mean loss in the batch.

Both share the exploration rate ``ε_t = min(1/K, √(ln K / (K·t)))`` (``t`` = optimizer step)
and the smoothing factor ``s = 0.9``. They differ in the reward and the normalisation:

``variant = "code"`` (default), ``group_update`` in the released code::

    R̂_i ← s·R̂_i + (1 − s)·exp(L_i)                for the domains in the batch
    π_i  = (1 − K·ε_t)·R̂_i / Σ_j R̂_j + ε_t        (linear in R̂, no softmax)

``variant = "paper"``, EXP3 with an importance-weighted smoothed reward::

    R̂_i ← s·R̂_i + (1 − s)·L_i / π_i               for the domains in the batch
    π_i  = (1 − K·ε_t)·exp(ε_{t−1} R̂_i) / Σ_j exp(ε_{t−1} R̂_j) + ε_t

Why the code variant is the default: it is what produced the published results (the 1B Pile
runs use ``data_sampling_method smoothed_mean`` with ``mixed_minibatches``), and it fits the
feedback mixbatch gives. With mixed batches every domain is observed at every step (full
information), so the bandit's ``1/π`` importance weights, which make an estimate unbiased when
only the chosen arm is seen, here inflate the reward of rarely sampled domains instead: a domain
at the exploration floor would gain ``1/ε`` times its loss per step. The linear form is also
insensitive to how large the accumulated reward gets, while ``exp(ε R̂)`` hardens as ``R̂``
grows. The paper variant is kept for one-domain-per-batch setups and for comparison; note
that its reward is a moving average, not a running sum, so ``ε_{t−1} R̂`` shrinks with
``ε_t → 0`` and the mixture flattens back towards uniform as training goes on (in our bandit
test its weights stay within 0.1 of each other after 3000 steps).

Defaults from the code and its run scripts (``scripts/*1B_ods_smoothed_mean*``): warm-up
2000 steps (``data_sampling_warmup_steps``; the initial weights are used until then and
feedback is ignored), an update every step (``data_sampling_update_frequency 1``), smoothing
0.9 (``smoothing_factor``); the runs start from the Pile's natural weights, here ``initial``
(default uniform). Updates happen when ``step > warmup`` and ``step % every == 0`` (the code's
``UpdateScheduler.requires_update``).

Absent domains: a domain not in the batch keeps its reward estimate; its probability changes
only through the others' and through ``ε_t``. A domain never seen yet has ``R̂ = 0`` and gets
``ε_t`` (code variant). Losses are in nats (``exp`` of a loss above ~700 overflows).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mixbatch.checks import choice, integer, real, vector
from mixbatch.mixture.policies.base import (
    Feedback,
    Policy,
    PolicySettings,
    _simplex,
    _softmax,
)

__all__ = ["ODM", "ODMSettings", "ODMVariant", "exploration_rate"]


class ODMVariant(enum.Enum):
    """Which of the two published update rules (module docstring)."""

    CODE = "code"
    PAPER = "paper"


def exploration_rate(step: int, num_sources: int) -> float:
    """``ε_t = min(1/K, √(ln K / (K·t)))``; ``1/K`` for ``t = 0``."""
    k = num_sources
    if step <= 0:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * step)))


@dataclass(frozen=True)
class ODMSettings(PolicySettings):
    """ODM settings.

    Attributes:
        warmup: steps during which the initial weights are used and feedback is ignored.
        smoothing: ``s`` in ``R̂ ← s·R̂ + (1 − s)·r``.
        variant: ``"code"`` or ``"paper"`` (module docstring).
        initial: the weights used during warm-up (default uniform).
    """

    every: int = 1
    warmup: int = 2000
    smoothing: float = 0.9
    variant: ODMVariant | str = ODMVariant.CODE
    initial: tuple[float, ...] | None = None

    def check(self) -> None:
        super().check()
        integer("warmup", self.warmup, lo=0)
        real("smoothing", self.smoothing, lo=0.0, hi=1.0, hi_open=True)
        object.__setattr__(self, "variant", choice(ODMVariant, "variant", self.variant))
        object.__setattr__(self, "initial", vector("initial", self.initial))


class ODM(Policy):
    """Online Data Mixing (see the module docstring)."""

    name: ClassVar[str] = "odm"
    Settings: ClassVar[type[PolicySettings]] = ODMSettings
    settings: ODMSettings

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"train_loss"})

    def due(self, step: int) -> bool:
        return step > self.settings.warmup and step % self.every == 0

    def _setup(self) -> None:
        k = self.num_sources
        self.pi = _simplex("initial", self.settings.initial, k)
        self.reward = np.zeros(k)
        self.eps = 1.0 / k
        self.prev_eps = 1.0 / k

    def _update(self, fb: Feedback) -> None:
        if fb.step <= self.settings.warmup:
            return
        k = self.num_sources
        loss = fb.train_loss
        seen = fb.mask(k) & np.isfinite(loss)
        s = self.settings.smoothing
        self.prev_eps = self.eps
        self.eps = exploration_rate(fb.step, k)
        if self.settings.variant is ODMVariant.CODE:
            self.reward[seen] = s * self.reward[seen] + (1.0 - s) * np.exp(loss[seen])
            total = self.reward.sum()
            if total > 0:
                self.pi = (1.0 - k * self.eps) * self.reward / total + self.eps
        else:
            share = self.weights()[seen]  # the share actually sampled (π unless floored)
            self.reward[seen] = s * self.reward[seen] + (1.0 - s) * loss[seen] / share
            self.pi = (1.0 - k * self.eps) * _softmax(self.prev_eps * self.reward) + self.eps
        self.updates += 1

    def _raw_weights(self) -> np.ndarray:
        return self.pi / self.pi.sum()

    def _state(self) -> dict[str, Any]:
        return {"pi": self.pi.tolist(), "reward": self.reward.tolist(), "eps": self.eps,
                "prev_eps": self.prev_eps}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.pi = self._vec(state, "pi")
        self.reward = self._vec(state, "reward")
        self.eps = float(state["eps"])
        self.prev_eps = float(state["prev_eps"])
