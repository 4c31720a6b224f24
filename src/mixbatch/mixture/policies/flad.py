"""EXP3-FLAD and UCB1-FLAD: bandits over auxiliary sources, rewarded by gradient alignment.

Paper: Albalak, Raffel, Wang, "Improving Few-Shot Generalization by Exploring and Exploiting
Auxiliary Data" (NeurIPS 2023), Section 3 (Algorithms 1 and 2); code
``alon-albalak/FLAD:src/trainer.py`` (``Exp3BatchedFLADTrainer``, ``UCB1BatchedFLADTrainer``).

Reward: after every optimizer step, for each source ``i`` trained in that step,
``R_i = cos(g_T, g_i)``: ``g_T`` the gradient of the whole few-shot target set, ``g_i`` the
source's gradient accumulated over the step, both restricted to the output layer
(``reward_model_partition = "lm_head"``, hence :attr:`grad_params`). The code also offers
``"magnitude"`` ``2‖a‖‖b‖ / (‖a‖² + ‖b‖²)`` and ``"cosine_and_magnitude"``
``(cos + 1)/2 + magnitude``. The smoothed reward is ``R̂_i ← (1 − β)·R̂_i + β·R_i``, starting at
``R̂ = 1`` (or ``initial_reward``, the code's similarities precomputed from
``weight_initialization_samples`` examples per source).

EXP3-FLAD (``β = 1``, no smoothing, as the paper's EXP3)::

    G_i += R̂_i / π_i                                          for each source trained
    ε_t  = min(1/K, √(ln K / (K·(10·t·A + 1))))                 t = step, A = accumulation
    π_i  = (1 − K·ε_t)·exp(ε_{t−1} G_i) / Σ_j exp(ε_{t−1} G_j) + ε_t

UCB1-FLAD (``β = 0.1``)::

    choose argmax_i R̂_i + √(2 ln N / n_i)      N = Σ_i n_i, n_i = 1 + times source i was trained

Its weights are one-hot (the code's ``weights[best] = 1``); a ``min_weight`` keeps the other
sources alive if wanted. ``n_i`` counts update rounds in which source ``i`` was observed (the
code counts micro-batches, each from one dataset, and starts every count at 1, so that
``N = rounds played + K``).

Defaults from the code: ``every = 1`` (every optimizer step), ``beta`` 1 (EXP3) and 0.1 (UCB1;
the run scripts sweep 0.1 and 0.25), ``accumulation = 1`` (set it to the run's gradient
accumulation steps, which enter ``ε_t``), reward ``"cosine"``.

Absent sources (not trained this step: masked, a ``NaN`` row, or an all-zero gradient, for which
the cosine is undefined) are unobserved: their ``R̂``, ``G`` and ``n`` do not change.
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
    _softmax,
)

__all__ = [
    "EXP3FLAD",
    "UCB1FLAD",
    "EXP3FLADSettings",
    "Reward",
    "UCB1FLADSettings",
    "exp3_flad_rate",
    "gradient_reward",
]


class Reward(enum.Enum):
    """How a source's gradient is scored against the target's."""

    COSINE = "cosine"
    MAGNITUDE = "magnitude"
    COSINE_AND_MAGNITUDE = "cosine_and_magnitude"


def gradient_reward(grads: np.ndarray, target: np.ndarray, kind: Reward = Reward.COSINE,
                    observed: np.ndarray | None = None) -> np.ndarray:
    """Reward per source (``[K]``), ``NaN`` where the source is unobserved or the cosine is
    undefined (a zero or non-finite gradient)."""
    k = grads.shape[0]
    out = np.full(k, np.nan)
    if not np.isfinite(target).all():
        return out
    tn = float(np.linalg.norm(target))
    norms = np.linalg.norm(np.where(np.isfinite(grads), grads, 0.0), axis=1)
    seen = np.isfinite(grads).all(axis=1) & (norms > 0) & (tn > 0)
    if observed is not None:
        seen &= observed
    if not seen.any():
        return out
    cos = (grads[seen] @ target) / (norms[seen] * tn)
    cos = np.clip(cos, -1.0, 1.0)
    magnitude = (2 * norms[seen] * tn + 1e-8) / (norms[seen] ** 2 + tn**2 + 1e-8)
    if kind is Reward.COSINE:
        out[seen] = cos
    elif kind is Reward.MAGNITUDE:
        out[seen] = magnitude
    else:
        out[seen] = (cos + 1) / 2 + magnitude
    return out


def exp3_flad_rate(step: int, num_sources: int, accumulation: int = 1) -> float:
    """``ε_t = min(1/K, √(ln K / (K·(10·t·A + 1))))`` (``Exp3BatchedFLADTrainer``)."""
    k = num_sources
    return min(1.0 / k, math.sqrt(math.log(k) / (k * (10 * step * accumulation + 1))))


@dataclass(frozen=True)
class _FLADSettings(PolicySettings):
    every: int = 1
    reward: Reward | str = Reward.COSINE
    initial_reward: tuple[float, ...] | None = None
    beta: float = 1.0

    def check(self) -> None:
        super().check()
        object.__setattr__(self, "reward", choice(Reward, "reward", self.reward))
        object.__setattr__(self, "initial_reward", vector("initial_reward", self.initial_reward))
        real("beta", self.beta, lo=0.0, hi=1.0, lo_open=True)


@dataclass(frozen=True)
class EXP3FLADSettings(_FLADSettings):
    """EXP3-FLAD settings.

    Attributes:
        reward: ``"cosine"``, ``"magnitude"`` or ``"cosine_and_magnitude"``.
        initial_reward: ``R̂`` before any feedback (default 1 for every source).
        beta: smoothing of the reward (1: none).
        accumulation: gradient-accumulation steps per optimizer step (``A`` in ``ε_t``).
    """

    beta: float = 1.0
    accumulation: int = 1

    def check(self) -> None:
        super().check()
        integer("accumulation", self.accumulation, lo=1)


@dataclass(frozen=True)
class UCB1FLADSettings(_FLADSettings):
    """UCB1-FLAD settings.

    Attributes:
        reward: ``"cosine"``, ``"magnitude"`` or ``"cosine_and_magnitude"``.
        initial_reward: ``R̂`` before any feedback (default 1 for every source; the code
            requires precomputed similarities here).
        beta: smoothing of the reward.
    """

    beta: float = 0.1


class _FLAD(Policy):
    grad_params: ClassVar[str | None] = "lm_head"
    settings: _FLADSettings

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"grads", "target_grad"})

    def _check_settings(self, settings: _FLADSettings) -> None:  # type: ignore[override]
        vector("initial_reward", settings.initial_reward, self.num_sources)

    def _initial_reward(self) -> np.ndarray:
        r = self.settings.initial_reward
        return np.ones(self.num_sources) if r is None else np.array(r, dtype=np.float64)

    def _observe_reward(self, fb: Feedback) -> np.ndarray:
        """Smooth the rewards of the observed sources; return their mask."""
        r = gradient_reward(fb.grads, fb.target_grad, self.settings.reward,
                            fb.mask(self.num_sources))
        seen = np.isfinite(r)
        b = self.settings.beta
        self.sim[seen] = (1 - b) * self.sim[seen] + b * r[seen]
        return seen


class EXP3FLAD(_FLAD):
    """EXP3-FLAD (see the module docstring)."""

    name: ClassVar[str] = "exp3_flad"
    Settings: ClassVar[type[PolicySettings]] = EXP3FLADSettings
    settings: EXP3FLADSettings

    def _setup(self) -> None:
        k = self.num_sources
        self.sim = self._initial_reward()
        self.gain = np.zeros(k)
        # The code computes its probabilities once at step 0: uniform, ε = 1/K.
        self.prev_eps = 1.0 / k
        self.eps = exp3_flad_rate(0, k, self.settings.accumulation)
        self.pi = (1 - k * self.eps) * _softmax(self.prev_eps * self.gain) + self.eps

    def _update(self, fb: Feedback) -> None:
        k = self.num_sources
        seen = self._observe_reward(fb)
        # the share actually sampled: π itself unless a floor was added
        self.gain[seen] += self.sim[seen] / self.weights()[seen]
        self.prev_eps = self.eps
        self.eps = exp3_flad_rate(fb.step, k, self.settings.accumulation)
        self.pi = (1 - k * self.eps) * _softmax(self.prev_eps * self.gain) + self.eps
        self.updates += 1

    def _raw_weights(self) -> np.ndarray:
        return self.pi / self.pi.sum()

    def _state(self) -> dict[str, Any]:
        return {"sim": self.sim.tolist(), "gain": self.gain.tolist(), "pi": self.pi.tolist(),
                "eps": self.eps, "prev_eps": self.prev_eps}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.sim = self._vec(state, "sim")
        self.gain = self._vec(state, "gain")
        self.pi = self._vec(state, "pi")
        self.eps = float(state["eps"])
        self.prev_eps = float(state["prev_eps"])


class UCB1FLAD(_FLAD):
    """UCB1-FLAD (see the module docstring)."""

    name: ClassVar[str] = "ucb1_flad"
    Settings: ClassVar[type[PolicySettings]] = UCB1FLADSettings
    settings: UCB1FLADSettings

    def _setup(self) -> None:
        self.sim = self._initial_reward()
        self.pulls = np.ones(self.num_sources)

    def _update(self, fb: Feedback) -> None:
        seen = self._observe_reward(fb)
        self.pulls[seen] += 1
        self.updates += 1

    def upper_confidence(self) -> np.ndarray:
        """``R̂_i + √(2 ln N / n_i)`` per source."""
        return self.sim + np.sqrt(2 * np.log(self.pulls.sum()) / self.pulls)

    def _raw_weights(self) -> np.ndarray:
        w = np.zeros(self.num_sources)
        w[int(np.argmax(self.upper_confidence()))] = 1.0
        return w

    def _state(self) -> dict[str, Any]:
        return {"sim": self.sim.tolist(), "pulls": self.pulls.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.sim = self._vec(state, "sim")
        self.pulls = self._vec(state, "pulls")
