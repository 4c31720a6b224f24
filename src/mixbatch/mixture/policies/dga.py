"""Dynamic Gradient Alignment (DGA): upweight the domains whose gradients point where the
target's does.

Paper: Fan, Grangier, Ablin, "Dynamic Gradient Alignment for Online Data Mixing" (arXiv
2410.02498). Generic domains ``D_1..D_K`` and a small specialised set ``D_spe``; the bilevel
problem ``min_α L_spe(θ*(α))`` with ``θ*(α) = argmin_θ Σ_i α_i L_i(θ)`` is approximated online by
differentiating one unrolled inner step ``θ⁺ = θ − γ Σ_i α_i ∇L_i(θ)``:
``∂L_spe(θ⁺)/∂α_i ≈ −γ ⟨∇L_spe(θ), ∇L_i(θ)⟩``. Every ``T`` steps DGA takes an exponentiated-
gradient (mirror-descent) step on the simplex::

    α ← α ⊙ exp(η ⟨g_spe, g_i⟩)   renormalised

(the inner step size ``γ`` is folded into ``η``). "DGA + EMA" smooths the mixture that is
sampled: ``ᾱ ← ema·ᾱ + (1 − ema)·α``; the mirror-descent iterate ``α`` itself is not averaged.

Gradients. The paper's score is the raw inner product of gradients over *every* parameter of
the model. The online loop (:mod:`mixbatch.online`) offers it as ``grads: full`` with
``normalize_grads: false``; its default is ``grads: head`` (the output layer only, one cheap
backward per source) with ``normalize_grads: true`` (a cosine), because that is what the
policy benchmark measured and because a raw inner product's scale moves with the model, the
loss and the parameter subset, so a fixed ``eta`` would mean something different in every run.

Defaults: ``every = 10``, ``eta = 1.0``, ``ema = None`` (plain DGA). **Unverified**: no code was
released, and the paper's method section and appendix, where its ``T``, ``η`` and EMA
coefficient are, could not be read (the formulation above is checked against its abstract
and summaries: an exponentiated-gradient step on the simplex from the inner products, an
optional EMA of the sampled mixture, ``(k + 1)/T`` overhead); these are mixbatch's choices, not
the authors'. The closest released code, DoGE (``Olivia-fsm/DoGE:src/trainer.py``, same first
author), updates every step with a step of ``lr_t / μ``, ``μ = 0.05``.

Feedback: ``grads`` (``[K, P]``, one batch per domain) and ``target_grad`` (``[P]``), which costs
``K + 1`` extra backward passes per update, ``(K + 1)/T`` of the training cost amortised.
Absent domains (masked, or a row with ``NaN``) are left out of the step and keep their
probability mass; the observed domains are reweighted among themselves within their mass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mixbatch.checks import real, vector
from mixbatch.mixture.policies.base import (
    Feedback,
    Policy,
    PolicySettings,
    _simplex,
)

__all__ = ["DGA", "DGASettings"]


@dataclass(frozen=True)
class DGASettings(PolicySettings):
    """DGA settings.

    Attributes:
        eta: step size of the exponentiated-gradient update (includes the inner step ``γ``).
        ema: the weight kept by the average of sampled mixtures, in ``[0, 1)``; ``None`` for
            plain DGA.
        initial: initial weights (default uniform).
    """

    every: int = 10
    eta: float = 1.0
    ema: float | None = None
    initial: tuple[float, ...] | None = None

    def check(self) -> None:
        super().check()
        real("eta", self.eta, lo=0.0, lo_open=True)
        if self.ema is not None:
            real("ema", self.ema, lo=0.0, hi=1.0, hi_open=True)
        object.__setattr__(self, "initial", vector("initial", self.initial))


class DGA(Policy):
    """Dynamic Gradient Alignment (see the module docstring)."""

    name: ClassVar[str] = "dga"
    Settings: ClassVar[type[PolicySettings]] = DGASettings
    settings: DGASettings

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"grads", "target_grad"})

    def _setup(self) -> None:
        self.alpha = _simplex("initial", self.settings.initial, self.num_sources)
        self.average = self.alpha.copy()

    def alignment(self, fb: Feedback) -> np.ndarray:
        """``⟨g_spe, g_i⟩`` per source (``NaN`` where absent)."""
        g = fb.grads
        seen = fb.mask(self.num_sources) & np.isfinite(g).all(axis=1)
        out = np.full(self.num_sources, np.nan)
        if np.isfinite(fb.target_grad).all():
            out[seen] = g[seen] @ fb.target_grad
        return out

    def _update(self, fb: Feedback) -> None:
        score = self.alignment(fb)
        seen = np.isfinite(score)
        mass = self.alpha[seen].sum()
        if mass > 0:  # a mass of zero (zero initial weights) has nothing to redistribute
            a = self.alpha[seen]
            z = self.settings.eta * score[seen]
            with np.errstate(divide="ignore"):
                logits = np.log(a) + z - np.max(z)
            new = np.exp(logits - np.max(logits))
            self.alpha = self.alpha.copy()
            self.alpha[seen] = mass * new / new.sum()
            self.alpha /= self.alpha.sum()
        ema = self.settings.ema
        self.average = self.alpha.copy() if ema is None else ema * self.average + (1 - ema) * self.alpha
        self.updates += 1

    def _raw_weights(self) -> np.ndarray:
        return self.average.copy()

    def _state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "average": self.average.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.alpha = self._vec(state, "alpha")
        self.average = self._vec(state, "average")
