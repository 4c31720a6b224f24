"""DoReMi: Group DRO over domains on the excess loss against a reference model.

Paper: Xie et al., "DoReMi: Optimizing Data Mixtures Speeds Up Language Model Pretraining"
(NeurIPS 2023), Algorithm 1; code ``sangmichaelxie/doremi:doremi/trainer.py``
(``update_domain_weights``, optimizer ``doremiv1``). Each update:

* excess loss per domain ``λ_t[i] = mean over the tokens of i in the batch of
  max(ℓ_θ − ℓ_ref, 0)`` (clipped per token);
* exponentiated-gradient step ``α'_t = softmax(log α_{t−1} + η λ_t)``, i.e.
  ``α ← α ⊙ exp(η λ)`` renormalised;
* smoothing with the uniform mixture ``α_t = (1 − c) α'_t + c/K``.

``weights()`` is the current ``α_t`` (what the proxy trains on); :meth:`DoReMi.averaged_weights`
is ``ᾱ = (1/T) Σ_t α_t``, the mixture the paper outputs for the main run (the code's
``avg_domain_weights``, which averages the written weights and not the initial ones).

Defaults (the authors'): ``eta = 1`` and ``smoothing = c = 1e-3`` (paper, and
``scripts/runs/run_pile_doremi120M.sh``: ``--reweight_eta 1 --reweight_eps 1e-3``; the
``training_args.py`` default ``reweight_eps = 1e-4`` is not what the runs used); one update per
optimizer step; initial weights uniform (``configs/pile_uniform.json``).

Signal: with ``excess = "token"`` (default, as in the code) the loop supplies
``Feedback.excess_loss``, the token-mean of the per-token clipped excess. With
``excess = "mean"`` it supplies ``train_loss`` and ``ref_loss`` and the policy uses
``max(train − ref, 0)`` on the means: cheaper to wire, but the clip then acts on the domain
mean, which is smaller than the code's per-token value whenever some tokens improve on the
reference.

Absent domains: a domain that is not in the batch keeps its previous score ``λ`` (the code reads
``self.model.perdomain_scores[domain_id]``), and the update still runs for every domain.

Sampling versus loss weighting: the code samples domains uniformly and multiplies each token's
loss by ``α_t[i]`` (renormalised); with mixbatch the loop can instead sample by ``α_t`` through
the loader, which has the same expected gradient.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mixbatch.checks import choice, real, vector
from mixbatch.errors import ConfigError
from mixbatch.mixture.policies.base import (
    Feedback,
    Policy,
    PolicySettings,
    _simplex,
    _softmax,
)

__all__ = ["DoReMi", "DoReMiSettings", "Excess"]


class Excess(enum.Enum):
    """Where the clip ``max(·, 0)`` is applied."""

    TOKEN = "token"  # per token, by the loop: Feedback.excess_loss (the paper and code)
    MEAN = "mean"  # on the per-domain means: max(train_loss − ref_loss, 0)


@dataclass(frozen=True)
class DoReMiSettings(PolicySettings):
    """DoReMi settings.

    Attributes:
        eta: step size ``η`` of the exponentiated-gradient update (paper: 1).
        smoothing: ``c``, the weight of the uniform mixture mixed in (paper: 1e-3).
        excess: ``"token"`` (the loop gives ``excess_loss``) or ``"mean"`` (``train_loss``
            and ``ref_loss``).
        initial: initial domain weights ``α_0`` (default uniform, as the paper's runs).
    """

    every: int = 1
    eta: float = 1.0
    smoothing: float = 1e-3
    excess: Excess | str = Excess.TOKEN
    initial: tuple[float, ...] | None = None

    def check(self) -> None:
        super().check()
        real("eta", self.eta, lo=0.0, lo_open=True)
        real("smoothing", self.smoothing, lo=0.0, hi=1.0)
        object.__setattr__(self, "excess", choice(Excess, "excess", self.excess))
        object.__setattr__(self, "initial", vector("initial", self.initial))


class DoReMi(Policy):
    """Group DRO domain reweighting (see the module docstring)."""

    name: ClassVar[str] = "doremi"
    Settings: ClassVar[type[PolicySettings]] = DoReMiSettings
    settings: DoReMiSettings

    @property
    def needs(self) -> frozenset[str]:
        if self.settings.excess is Excess.TOKEN:
            return frozenset({"excess_loss"})
        return frozenset({"train_loss", "ref_loss"})

    def _setup(self) -> None:
        k = self.num_sources
        self.alpha = _simplex("initial", self.settings.initial, k)
        self.scores = np.zeros(k)
        self.average = self.alpha.copy()

    def _update(self, fb: Feedback) -> None:
        k = self.num_sources
        if self.settings.excess is Excess.TOKEN:
            lam = fb.excess_loss
            bad = np.isfinite(lam) & (lam < 0)
            if bad.any():
                raise ConfigError(
                    f"policy 'doremi': feedback.excess_loss[{int(np.argmax(bad))}] is "
                    f"{lam[bad][0]}; it must be the mean of per-token max(ℓ − ℓ_ref, 0), so >= 0")
        else:
            lam = np.maximum(fb.train_loss - fb.ref_loss, 0.0)
        seen = fb.mask(k) & np.isfinite(lam)
        self.scores[seen] = lam[seen]
        c = self.settings.smoothing
        with np.errstate(divide="ignore"):  # a zero initial weight stays zero when c = 0
            logits = np.log(self.alpha) + self.settings.eta * self.scores
        self.alpha = (1.0 - c) * _softmax(logits) + c / k
        n = self.updates
        self.average = self.alpha.copy() if n == 0 else (self.average * n + self.alpha) / (n + 1)
        self.updates = n + 1

    def _raw_weights(self) -> np.ndarray:
        return self.alpha.copy()

    def averaged_weights(self) -> np.ndarray:
        """``ᾱ``, the average of ``α_t`` over the updates so far (with the floor applied);
        the initial weights before any update."""
        f = self.min_weight
        return (1.0 - self.num_sources * f) * self.average + f

    def _state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "scores": self.scores.tolist(),
                "average": self.average.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.alpha = self._vec(state, "alpha")
        self.scores = self._vec(state, "scores")
        self.average = self._vec(state, "average")
