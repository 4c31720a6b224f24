"""The contract every online mixture policy keeps: feedback in, weights out, small state.

A policy reads what training measured (:class:`Feedback`) and answers with sampling weights
over the ``K`` sources (:meth:`Policy.weights`). The training loop hands those weights to
:meth:`mixbatch.loader.loader.MixedLoader.set_weights`; the interleaver continues from its
counts, so a new mixture never restarts anything.

The loop's side of the contract:

1. Build a :class:`Feedback` with the fields in :attr:`Policy.needs` (and nothing else is
   required: signals are lazy, so a loop computes only what the policy asks for).
2. Call :meth:`Policy.observe` when :meth:`Policy.due` says so (every :attr:`Policy.every`
   optimizer steps). ``observe`` always applies one update; the cadence is the loop's.
3. Read :meth:`Policy.weights` and set them on the loader.
4. Save :meth:`Policy.state_dict` next to the loader state (plain JSON, ``O(K)`` numbers, or
   ``O(K·M)`` for a skills graph) and restore it with :meth:`Policy.load_state_dict`; the
   continuation is then identical to an uninterrupted run.

Conventions:

* ``step`` is the number of optimizer steps completed when the feedback was measured. It must
  increase from one ``observe`` call to the next.
* Per-source arrays have one entry per source, in the order of the source list. A source that
  was not in the batch is marked by ``NaN`` in the array, by ``observed[i] = False``, or by
  ``counts[i] == 0``. What a method then does with it (keep its last value, or leave it out of
  the update) follows the paper or released code and is stated in each policy's docstring.
* **Floor.** Every policy has ``min_weight`` (the floor ``f``, default 0). Its raw weights
  ``w'`` (on the simplex) are mapped to ``w = (1 − K·f)·w' + f``: still on the simplex, and
  every entry is at least ``f``. The map is affine, so it commutes with averaging. ``K·f`` must
  be below 1. The methods' own smoothing (DoReMi's ``c``, the bandits' exploration rate) is
  separate and follows the authors.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from mixbatch.checks import integer, real
from mixbatch.errors import ConfigError, StateError

__all__ = [
    "STATE_FORMAT",
    "Feedback",
    "Policy",
    "PolicySettings",
    "Signal",
    "apply_floor",
]

STATE_FORMAT = "mixbatch.policy/1"


class Signal(enum.Enum):
    """The feedback fields a policy can ask for (:attr:`Policy.needs` holds their values)."""

    TRAIN_LOSS = "train_loss"
    REF_LOSS = "ref_loss"
    EXCESS_LOSS = "excess_loss"
    EVAL_LOSS = "eval_loss"
    GRADS = "grads"
    TARGET_GRAD = "target_grad"
    COUNTS = "counts"


_PER_SOURCE = ("train_loss", "ref_loss", "excess_loss", "counts")


@dataclass
class Feedback:
    """What one training step (or evaluation round) measured.

    Attributes:
        step: optimizer steps completed when this was measured (``>= 0``, increasing).
        tokens: training tokens consumed so far (all ranks), for methods that count them.
        train_loss: ``[K]`` token-mean training loss per source in this step's batch (nats).
        ref_loss: ``[K]`` the same tokens' mean loss under a frozen reference model.
        excess_loss: ``[K]`` token-mean of the *per-token* clipped excess
            ``max(ℓ_θ − ℓ_ref, 0)`` (DoReMi's signal; the clip must happen per token, so it
            cannot be rebuilt from ``train_loss`` and ``ref_loss``).
        eval_loss: ``[M]`` held-out loss per evaluation group (``M`` may differ from ``K``).
        grads: ``[K, P]`` per-source gradients restricted to a parameter subset (for FLAD
            the output layer, see :attr:`Policy.grad_params`).
        target_grad: ``[P]`` the target (specialised / few-shot) set's gradient, same subset.
        counts: ``[K]`` units (samples, or tokens in token mode) fed per source since the
            last feedback.
        observed: ``[K]`` booleans, which sources this feedback has values for. When absent,
            ``counts > 0`` decides if counts are given, else every source counts as observed;
            ``NaN`` entries always mean "not observed".
    """

    step: int
    tokens: int = 0
    train_loss: np.ndarray | None = None
    ref_loss: np.ndarray | None = None
    excess_loss: np.ndarray | None = None
    eval_loss: np.ndarray | None = None
    grads: np.ndarray | None = None
    target_grad: np.ndarray | None = None
    counts: np.ndarray | None = None
    observed: np.ndarray | None = None

    def checked(self, num_sources: int, policy: str = "policy") -> Feedback:
        """A copy with float64 arrays, after checking every shape; ``ConfigError`` otherwise."""
        where = f"policy {policy!r}: feedback"
        step = self.step
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ConfigError(f"{where}.step: expected an integer >= 0, got {step!r}")
        tokens = self.tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int | np.integer) or tokens < 0:
            raise ConfigError(f"{where}.tokens: expected an integer >= 0, got {tokens!r}")
        out: dict[str, Any] = {"step": int(step), "tokens": int(tokens)}
        for name in _PER_SOURCE:
            out[name] = _array(getattr(self, name), f"{where}.{name}", (num_sources,))
        if out["counts"] is not None:
            c = out["counts"]
            if not np.isfinite(c).all() or (c < 0).any():
                raise ConfigError(f"{where}.counts: expected finite counts >= 0, got {c.tolist()}")
        out["eval_loss"] = _array(self.eval_loss, f"{where}.eval_loss", (-1,))
        grads = _array(self.grads, f"{where}.grads", (num_sources, -1))
        target = _array(self.target_grad, f"{where}.target_grad", (-1,))
        if grads is not None and target is not None and grads.shape[1] != target.shape[0]:
            raise ConfigError(f"{where}: grads have {grads.shape[1]} parameters per source but "
                              f"target_grad has {target.shape[0]}; both must cover the same subset")
        out["grads"], out["target_grad"] = grads, target
        if self.observed is None:
            out["observed"] = None
        else:
            obs = np.asarray(self.observed)
            if obs.dtype != np.bool_ or obs.shape != (num_sources,):
                raise ConfigError(f"{where}.observed: expected {num_sources} booleans (one per "
                                  f"source), got {self.observed!r}")
            out["observed"] = obs.copy()
        return Feedback(**out)

    def mask(self, num_sources: int) -> np.ndarray:
        """Sources this feedback counts as observed, before looking at ``NaN`` values."""
        if self.observed is not None:
            return np.asarray(self.observed, dtype=bool).copy()
        if self.counts is not None:
            return np.asarray(self.counts) > 0
        return np.ones(num_sources, dtype=bool)


def _array(value: Any, where: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected numbers, got {type(value).__name__}") from None
    ok = arr.ndim == len(shape) and all(s in (-1, n) for s, n in zip(shape, arr.shape, strict=True))
    if not ok or arr.size == 0:
        want = " x ".join("P" if s == -1 else str(s) for s in shape)
        if shape == (-1,):
            want = "a non-empty flat list"
        raise ConfigError(f"{where}: expected shape {want}, got {arr.shape}")
    if np.isinf(arr).any():
        raise ConfigError(f"{where}: values must be finite (use NaN for a missing source)")
    return arr


def apply_floor(raw: np.ndarray, min_weight: float) -> np.ndarray:
    """``(1 − K·f)·w' + f``: on the simplex and at least ``f`` when ``w'`` is on the simplex."""
    k = raw.shape[0]
    if min_weight == 0:
        return raw.copy()
    return (1.0 - k * min_weight) * raw + min_weight


# ---- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySettings:
    """Settings every policy has.

    Attributes:
        min_weight: the floor ``f``; weights become ``(1 − K·f)·w' + f`` (module docstring).
        every: optimizer steps between updates (the loop's cadence, see :meth:`Policy.due`).
    """

    min_weight: float = 0.0
    every: int = 1

    def check(self) -> None:
        """Raise ``ConfigError`` (message starting with the field name) for a bad value."""
        real("min_weight", self.min_weight, lo=0.0)
        integer("every", self.every, lo=1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _simplex(name: str, value: tuple[float, ...] | None, k: int) -> np.ndarray:
    """Initial weights: uniform when not given, else validated and normalised."""
    if value is None:
        return np.full(k, 1.0 / k)
    arr = np.array(value, dtype=np.float64)
    if arr.shape != (k,):
        raise ConfigError(f"{name}: expected {k} weights (one per source), got {arr.size}")
    if (arr < 0).any() or not np.isfinite(arr).all() or arr.sum() <= 0:
        raise ConfigError(f"{name}: weights must be finite, >= 0 and not all 0, got {arr.tolist()}")
    return arr / arr.sum()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


# ---- the policy -------------------------------------------------------------------------------


class Policy:
    """Base class of the online policies; see the module docstring for the contract.

    Subclasses set :attr:`name`, :attr:`Settings` (a frozen dataclass deriving from
    :class:`PolicySettings`, whose defaults are the authors'), and implement ``_setup``,
    ``_update``, ``_raw_weights``, ``_state`` and ``_load_state``.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[PolicySettings]] = PolicySettings
    #: The parameter subset the gradients should cover (a hint for the loop's helper), or
    #: ``None`` for "whatever the loop chooses".
    grad_params: ClassVar[str | None] = None

    def __init__(self, num_sources: int, **settings: Any) -> None:
        if isinstance(num_sources, bool) or not isinstance(num_sources, int | np.integer) \
                or num_sources < 1:
            raise ConfigError(f"policy {self.name!r}: num_sources must be an integer >= 1, "
                              f"got {num_sources!r}")
        self.num_sources = int(num_sources)
        self.settings = self._build_settings(settings)
        f = self.settings.min_weight
        if self.num_sources * f >= 1:
            raise ConfigError(f"policy {self.name!r}: min_weight {f} is too large for "
                              f"{self.num_sources} sources (K·min_weight must be < 1)")
        self.last_step: int | None = None
        self.updates = 0
        self._setup()

    # ---- public surface --------------------------------------------------------------------
    @property
    def every(self) -> int:
        return self.settings.every

    @property
    def min_weight(self) -> float:
        return self.settings.min_weight

    @property
    def needs(self) -> frozenset[str]:
        """The :class:`Feedback` fields ``observe`` requires (values of :class:`Signal`)."""
        return frozenset()

    def due(self, step: int) -> bool:
        """Whether the loop should build feedback and call ``observe`` after ``step`` steps.

        True on every multiple of ``every`` from ``every`` on: no update from an untrained
        model, and the first update comes after one full round, as in the released codes."""
        return step >= self.every and step % self.every == 0

    def observe(self, feedback: Feedback) -> None:
        """Apply one update from ``feedback`` (which must hold every field in ``needs``)."""
        if not isinstance(feedback, Feedback):
            raise ConfigError(f"policy {self.name!r}: observe() expects a Feedback, got "
                              f"{type(feedback).__name__}")
        fb = feedback.checked(self.num_sources, self.name)
        missing = [f for f in sorted(self.needs) if getattr(fb, f) is None]
        if missing:
            raise ConfigError(
                f"policy {self.name!r}: the feedback for step {fb.step} has no {missing[0]!r}, "
                f"which this policy needs (it needs: {', '.join(sorted(self.needs))})")
        if self.last_step is not None and fb.step <= self.last_step:
            raise ConfigError(f"policy {self.name!r}: feedback step {fb.step} is not after the "
                              f"last observed step {self.last_step}; steps must increase")
        self._update(fb)
        self.last_step = fb.step

    def weights(self) -> np.ndarray:
        """Sampling weights ``[K]``: on the simplex, each at least ``min_weight``."""
        return apply_floor(self._raw_weights(), self.min_weight)

    def settings_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (enums as their names)."""
        return {f.name: _jsonable(getattr(self.settings, f.name)) for f in fields(self.settings)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default settings (the authors' values) as plain JSON values."""
        s = cls.Settings()
        return {f.name: _jsonable(getattr(s, f.name)) for f in fields(s)}

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state; loading it into a policy built with the same settings continues
        exactly. Arrays are lists of floats (``json`` writes floats that read back exactly)."""
        return {
            "format": STATE_FORMAT,
            "policy": self.name,
            "num_sources": self.num_sources,
            "settings": self.settings_dict(),
            "last_step": self.last_step,
            "updates": self.updates,
            "state": self._state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        where = f"policy {self.name!r} state"
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise StateError(f"{where}: not a mixbatch policy state (format {got!r}, expected "
                             f"{STATE_FORMAT!r})")
        if state.get("policy") != self.name:
            raise StateError(f"{where}: saved by policy {state.get('policy')!r}; build that "
                             "policy to resume it")
        if state.get("num_sources") != self.num_sources:
            raise StateError(f"{where}: saved for {state.get('num_sources')} sources, this "
                             f"policy has {self.num_sources}")
        saved, now = state.get("settings"), self.settings_dict()
        if json.dumps(saved, sort_keys=True) != json.dumps(now, sort_keys=True):
            changed = sorted(k for k in set(now) | set(saved or {})
                             if (saved or {}).get(k) != now.get(k))
            raise StateError(f"{where}: settings changed since it was saved ({', '.join(changed)});"
                             " resume with the saved settings, or start the policy afresh")
        try:
            last = state["last_step"]
            self.last_step = None if last is None else int(last)
            self.updates = int(state["updates"])
            self._setup()
            self._load_state(state["state"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise StateError(f"{where}: malformed ({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_sources={self.num_sources}, {self.settings})"

    # ---- for subclasses --------------------------------------------------------------------
    def _build_settings(self, given: Mapping[str, Any]) -> PolicySettings:
        cls = self.Settings
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"policy {self.name!r}: unknown setting {unknown[0]!r} (settings: "
                              f"{', '.join(known)})")
        try:
            obj = cls(**given)
            obj.check()
            if getattr(obj, "initial", None) is not None:
                _simplex("initial", obj.initial, self.num_sources)
            self._check_settings(obj)
        except ConfigError as e:
            raise ConfigError(f"policy {self.name!r}: {e}") from None
        return obj

    def _check_settings(self, settings: PolicySettings) -> None:
        """Checks that need ``num_sources`` (raise ``ConfigError('field: ...')``)."""

    def _setup(self) -> None:
        """(Re)initialise the state from the settings."""
        raise NotImplementedError

    def _update(self, fb: Feedback) -> None:
        raise NotImplementedError

    def _raw_weights(self) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _vec(self, state: Mapping[str, Any], key: str, length: int | None = None) -> np.ndarray:
        arr = np.array(state[key], dtype=np.float64)
        n = self.num_sources if length is None else length
        if arr.shape != (n,):
            raise ValueError(f"{key} has shape {arr.shape}, expected ({n},)")
        return arr
