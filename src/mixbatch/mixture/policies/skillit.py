"""Skill-It: online multiplicative weights over skills, steered by a skills graph.

Paper: Chen, Roberts, Bhatia, Wang, Zhang, Sala, Ré, "Skill-it! A Data-Driven Skills Framework
for Understanding and Training Language Models" (NeurIPS 2023), Algorithm 1 (online data
selection); code ``HazyResearch/skill-it:trainer/mw_trainer.py`` (``MWTrainer``).

A graph ``A ∈ R^{K×M}`` says how much training on skill ``i`` (row) lowers the loss of eval
skill ``j`` (column). After each round the mixture is::

    p_{t+1} ∝ p_1 ⊙ exp(η · A · Σ_{τ=t−w+1}^{t} L_τ)

with ``L_τ`` the eval losses (``[M]``) of the last ``w`` rounds and ``p_1`` the prior (uniform,
or ``initial``; the code's ``--mw_prior``). The sum runs over a window and multiplies the prior,
not the previous mixture: this is the code's ``mw_window >= 0`` path (standard multiplicative
weights over all rounds is not supported there either). Before the first round the mixture is
``p_0 ∝ p_1 ⊙ exp(η · A · 1)``, the code's initial loss of ones.

Options from the code: ``normalize_loss`` (use ``L / L_0``, ``L_0`` the first eval losses seen),
``eta_schedule`` (``η_t = η · ΣL_0 / ΣL_t``), ``reduce = "mean"`` (average the window instead of
summing it, the code's fine-tuning path with a ``target_mask``). A binary graph (all entries 0 or
1) has its off-diagonal ones set to ``edge_weight = 0.5``, as the code does for its synthetic
graphs; real-valued graphs are used as given. Not carried over: ``--dynamic_lambda`` and
``--ignore_lone_nodes``.

Defaults: ``eta = 0.5``, ``window = 3``, ``every = 1000`` steps per round, as in
``scripts/lego/pt/skillit.sh`` (LEGO continual pre-training; the other scripts use update steps
500/1200/100 and η 0.5/0.1/0.8/0.2, all with window 3). With no graph the identity is used
(the code's default), which makes Skill-It upweight the skills with the highest loss.

Feedback: ``eval_loss`` (``[M]``), one call per round. A group missing from an evaluation
(``NaN``) keeps its last value; a group that has never been evaluated is an error.

:func:`estimate_graph` builds ``A`` from one-skill probe runs as the paper does (and as
``HazyResearch/aioli:mixing_law_fitting.py:skills_graph``):
``A_ij = (L_j(f_0) − L_j(f_{H,i})) / L_j(f_0)``, the relative drop of eval loss ``j`` after
``H`` steps of training on skill ``i`` alone.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mixbatch.checks import boolean, choice, integer, real, vector
from mixbatch.errors import ConfigError
from mixbatch.mixture.policies.base import (
    Feedback,
    Policy,
    PolicySettings,
    _simplex,
    _softmax,
)

__all__ = ["SkillIt", "SkillItSettings", "WindowReduce", "estimate_graph"]


class WindowReduce(enum.Enum):
    """How the window of eval losses is combined."""

    SUM = "sum"
    MEAN = "mean"


def _matrix(name: str, value: Any) -> tuple[tuple[float, ...], ...] | None:
    if value is None:
        return None
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a K x M matrix of numbers, got {value!r}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ConfigError(f"{name}: expected a K x M matrix (rows: training skills, columns: "
                          f"eval skills), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name}: entries must be finite")
    return tuple(tuple(float(x) for x in row) for row in arr)


@dataclass(frozen=True)
class SkillItSettings(PolicySettings):
    """Skill-It settings.

    Attributes:
        graph: ``A``, ``K`` rows (training skills) by ``M`` columns (eval groups); default
            the ``K × K`` identity.
        eta: ``η``.
        window: ``w``, the number of latest rounds whose losses enter the update.
        normalize_loss: divide the losses by the first evaluation's.
        eta_schedule: ``η_t = η · ΣL_0 / ΣL_t``.
        reduce: ``"sum"`` (default) or ``"mean"`` over the window.
        edge_weight: the weight given to off-diagonal edges of a binary graph.
        initial: the prior ``p_1`` (default uniform).
    """

    every: int = 1000
    graph: tuple[tuple[float, ...], ...] | None = None
    eta: float = 0.5
    window: int = 3
    normalize_loss: bool = False
    eta_schedule: bool = False
    reduce: WindowReduce | str = WindowReduce.SUM
    edge_weight: float = 0.5
    initial: tuple[float, ...] | None = None

    def check(self) -> None:
        super().check()
        object.__setattr__(self, "graph", _matrix("graph", self.graph))
        real("eta", self.eta, lo=0.0, lo_open=True)
        integer("window", self.window, lo=1)
        boolean("normalize_loss", self.normalize_loss)
        boolean("eta_schedule", self.eta_schedule)
        object.__setattr__(self, "reduce", choice(WindowReduce, "reduce", self.reduce))
        real("edge_weight", self.edge_weight)
        object.__setattr__(self, "initial", vector("initial", self.initial))


class SkillIt(Policy):
    """Skill-It online data selection (see the module docstring)."""

    name: ClassVar[str] = "skillit"
    Settings: ClassVar[type[PolicySettings]] = SkillItSettings
    settings: SkillItSettings

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"eval_loss"})

    @property
    def graph(self) -> np.ndarray:
        """The graph ``A`` in use (``K × M``, after the binary-edge rule)."""
        return self._graph.copy()

    @property
    def num_eval(self) -> int:
        return self._graph.shape[1]

    def _check_settings(self, settings: SkillItSettings) -> None:  # type: ignore[override]
        if settings.graph is not None and len(settings.graph) != self.num_sources:
            raise ConfigError(f"graph: has {len(settings.graph)} rows, expected one per source "
                              f"({self.num_sources})")

    def _setup(self) -> None:
        k = self.num_sources
        s = self.settings
        if s.graph is None:
            graph = np.eye(k)
        else:
            graph = np.array(s.graph, dtype=np.float64)
            if np.isin(graph, (0.0, 1.0)).all():
                off = ~np.eye(*graph.shape, dtype=bool)
                graph[off & (graph == 1.0)] = s.edge_weight
        self._graph = graph
        self.prior = _simplex("initial", s.initial, k)
        self.window: list[np.ndarray] = []
        self.loss0: np.ndarray | None = None
        self.last: np.ndarray | None = None
        self.p = self._mix(s.eta, np.ones(graph.shape[1]))

    def _mix(self, eta: float, losses: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):  # a zero prior weight stays zero
            return _softmax(np.log(self.prior) + eta * (self._graph @ losses))

    def _update(self, fb: Feedback) -> None:
        m = self.num_eval
        loss = fb.eval_loss
        if loss.shape != (m,):
            raise ConfigError(f"policy 'skillit': feedback.eval_loss has {loss.size} values, the "
                              f"graph has {m} eval groups (columns)")
        loss = loss.copy()
        missing = ~np.isfinite(loss)
        if missing.any():
            if self.last is None:
                raise ConfigError(f"policy 'skillit': eval_loss[{int(np.argmax(missing))}] is "
                                  "missing and that group was never evaluated before")
            loss[missing] = self.last[missing]
        s = self.settings
        if self.loss0 is None:
            if s.normalize_loss and (loss <= 0).any():
                raise ConfigError("policy 'skillit': normalize_loss needs positive eval losses, "
                                  f"got {loss.tolist()}")
            self.loss0 = loss.copy()
        self.last = loss
        self.window = [*self.window, loss][-s.window:]
        stacked = np.stack(self.window)
        combined = stacked.sum(axis=0) if s.reduce is WindowReduce.SUM else stacked.mean(axis=0)
        if s.normalize_loss:
            combined = combined / self.loss0
        eta = s.eta
        if s.eta_schedule:
            eta = s.eta / (loss.sum() / self.loss0.sum())
        self.p = self._mix(eta, combined)
        self.updates += 1

    def _raw_weights(self) -> np.ndarray:
        return self.p.copy()

    def _state(self) -> dict[str, Any]:
        return {
            "p": self.p.tolist(),
            "window": [w.tolist() for w in self.window],
            "loss0": None if self.loss0 is None else self.loss0.tolist(),
            "last": None if self.last is None else self.last.tolist(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        m = self.num_eval
        self.p = self._vec(state, "p")
        self.window = [np.array(w, dtype=np.float64) for w in state["window"]]
        if len(self.window) > self.settings.window or any(w.shape != (m,) for w in self.window):
            raise ValueError("window has the wrong shape")
        self.loss0 = None if state["loss0"] is None else self._vec(state, "loss0", m)
        self.last = None if state["last"] is None else self._vec(state, "last", m)


def estimate_graph(before: Any, after: Any) -> np.ndarray:
    """A skills graph from one-skill probe runs: ``A_ij = (L_j(f_0) − L_j(f_{H,i})) / L_j(f_0)``.

    Args:
        before: eval losses at the starting model, ``[M]`` (one start for every probe) or
            ``[K, M]`` (probe ``i`` started from its own model).
        after: ``[K, M]``, row ``i`` the eval losses after training on skill ``i`` alone.

    Returns the ``K × M`` matrix of relative loss drops (negative where training on ``i`` hurt
    ``j``), ready for ``SkillIt(graph=...)``.
    """
    try:
        b = np.array(before, dtype=np.float64)
        a = np.array(after, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("estimate_graph: before and after must be arrays of losses") from None
    if a.ndim != 2 or a.size == 0:
        raise ConfigError(f"estimate_graph: after must be K x M (one row per probe run), got "
                          f"shape {a.shape}")
    if b.shape not in ((a.shape[1],), a.shape):
        raise ConfigError(f"estimate_graph: before must have shape ({a.shape[1]},) or {a.shape}, "
                          f"got {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or (b <= 0).any():
        raise ConfigError("estimate_graph: losses must be finite, and the starting losses > 0")
    return (b - a) / b
