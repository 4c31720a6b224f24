r"""The exact interleaving rule: which source supplies the next sample (or document).

Notation. ``K`` sources, weights ``w_i(m) >= 0`` with ``sum_i w_i(m) = 1`` at decision ``m``.
The *target* after ``n`` units is ``W_i(n) = sum_{m <= n} w_i(m)``, and ``c_i(n)`` is what
source ``i`` has contributed. DESIGN invariant 1 asks for ``|c_i(n) - W_i(n)|`` to stay within
one unit for every prefix ``n``.

Sample mode (one unit = one sample): Tijdeman's rule
----------------------------------------------------
R. Tijdeman, "The chairman assignment problem", Discrete Mathematics 32 (1980) 323-330, shows
that with ``k`` sources of positive weight there is a sequence with

.. math:: |c_i(n) - W_i(n)| \le 1 - \frac{1}{2k-2} \quad \text{for all } i, n

(``k >= 2``; 0 for ``k = 1``), and constructs it as an earliest-deadline-first schedule.
With ``delta = 1/(2k-2)``, the ``j``-th unit of source ``i`` is a job that is

* *released* at the first decision ``m`` with ``W_i(m) >= j - 1 + delta`` (taking it earlier
  would put ``i`` more than ``1 - delta`` ahead), and
* *due* when ``W_i`` reaches ``j - delta`` (taking it later would put ``i`` more than
  ``1 - delta`` behind). Its real-valued deadline is the ``t`` solving ``W_i(t) = j - delta``,
  for constant weights ``t = (j - delta - W_i(0)) / w_i``.

Decision ``m`` goes to the source whose next job is released and has the earliest deadline:

.. math:: i^*(m) = \arg\min_{i:\; W_i(m) - c_i \ge \delta} \frac{c_i + 1 - \delta - W_i(0)}{w_i}

ties to the lowest source index. Compared with Megatron-LM's ``argmax_i(w_i max(n,1) - c_i)``
(largest deficit, no release test, error up to about 2) the release test is what keeps a
source from running ahead. The order is *not* a merge of the deadlines alone: a job may not
run before its release, and that constraint binds often (a plain sort by deadline is a divisor
method, and by Balinski and Young no divisor method stays within quota). So ``choose`` computes
every job's release and deadline in closed form, vectorised, and runs the EDF merge as one heap
push and one heap pop per decision on precomputed integer ranks. That NumPy + heap form is the
*reference* (:mod:`mixbatch.plan.reference`); the planner runs the same rule compiled
(:mod:`mixbatch.plan.edf`, one O(K) pass per decision), and the tests check the two decision
for decision.

Token mode (one unit = one token, documents are indivisible)
------------------------------------------------------------
A document of length ``l`` whose first token is token ``s`` of its source is *released* at
the token clock ``T`` where ``W_i(T) >= s`` (the source is not ahead) and *due* at the clock
where ``W_i`` reaches ``s + l`` (its end). The next document goes to the released source whose
next document is due first (ties: lowest index); the clock then advances by its length. This
is non-preemptive EDF on jobs of utilisation exactly 1, so a document finishes at most one
(blocking) document length ``L_B`` after its deadline, which gives, for every token prefix,

.. math:: -(1 - w_i) l_i \le W_i(T) - c_i(T) \le (1 - w_i) l_i + w_i L_B \le L_{max}

where ``l_i`` is the length of source ``i``'s document being waited on or just emitted and
``L_max`` the longest document: within one document. (The loader's feed hands the rule
*pieces* of at most ``seq_len`` tokens of each document, so there the bound is one piece.)
(Lower side: a document is only taken when released. Upper side: ``W_i`` at the start of a
document is at most ``W_i`` at its deadline plus ``w_i L_B`` minus ``w_i l``.) The deviation
is extremal at document boundaries, so checking those checks every token prefix.

Weight changes
--------------
The target is integrated, never reset: a call with new weights starts a new *segment* whose
base is the target reached so far, and the rule continues from the current deficits. No jump,
no restart. The target is stored as ``base + w * segment_units`` rather than as a running sum,
so that the result is bitwise the same however a caller splits its calls into chunks.

The bounds above are proved for constant weights (within one segment). Across a change they
can be exceeded on the behind side, and no rule that does not know the future can prevent it:
a state within the bound for the old weights need not be feasible for the new ones (two
sources each owed 0.8 that both jump to weight 0.5 cannot both be served at the next
decision), and an adversary that gives weight ``1/k`` to each of ``k`` sources and then drops
the chosen one after every decision leaves the last source owed ``H_k - 1`` units (``H_k`` the
harmonic number), more than 1 for ``k >= 4``. Measured (tests, ``benchmarks/``): linear ramps
and warm-up / annealing schedules stay within ``1 - delta``; abrupt random stage changes every
few batches reached 1.30 (K <= 8). The ahead side, ``c_i - W_i <= 1 - delta`` (``<= l`` in
token mode), holds for every weight sequence in which no weight drops to 0: a unit is only
taken once released, and some source is always released because the deviations sum to 0.

Exhausted and zero-weight sources
---------------------------------
``available`` is a boolean mask; weights are renormalised over the available sources
(:func:`mixbatch.mixture.weights.normalize_weights`), which is what ``on_exhausted:
renormalize`` means. ``stop`` is the caller's decision. A source of weight 0 is never chosen.
When a source's weight becomes 0 (a stage without it, or exhaustion) its deviation, under one
unit, could never be worked off and the others would carry it for ever; so it is settled: the
source's target is set to its count and the difference is spread over the other sources'
targets in proportion to their new weights (the targets still sum to the units counted).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.weights import normalize_weights
from mixbatch.plan import edf, reference
from mixbatch.plan.reference import tijdeman_delta
from mixbatch.plan.state_checks import count, number, shown

__all__ = ["Interleaver", "Unit", "WeightPath", "max_prefix_deviation", "tijdeman_delta"]

_STATE_VERSION = 1


class Unit(enum.Enum):
    """What the planner counts: samples (one per decision) or tokens (documents' lengths)."""

    SAMPLES = "samples"
    TOKENS = "tokens"


# ---------------------------------------------------------------------------------- planner


@dataclass(frozen=True)
class WeightPath:
    """Weights known in advance, in the planner's clock (units since the stream began:
    decisions, or tokens): ``weights[s]`` apply from clock ``starts[s]`` (``starts[0] == 0``)
    until the next start. A schedule's stages, for the rule to read ahead."""

    starts: np.ndarray  # int64 (S,), 0 then increasing
    weights: np.ndarray  # float64 (S, K)

    def __post_init__(self) -> None:
        b = np.asarray(self.starts, dtype=np.int64).reshape(-1)
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != b.size or b.size == 0:
            raise ConfigError("path: one weight vector per stage, at least one stage")
        if b[0] != 0 or np.any(np.diff(b) <= 0):
            raise ConfigError("path: stages must start at 0 and increase strictly")
        object.__setattr__(self, "starts", b)
        object.__setattr__(self, "weights", w)

    def at(self, clock: int) -> np.ndarray:
        """The weights in force at ``clock``."""
        return self.weights[int(np.searchsorted(self.starts, clock, side="right")) - 1]

    def integral(self, clocks: np.ndarray, available=None) -> np.ndarray:
        """``∫_0^u w(t) dt`` at each clock ``u`` (rows renormalised over ``available``)."""
        rows = self.weights
        if available is not None:
            rows = np.where(np.asarray(available, dtype=bool), rows, 0.0)
            total = rows.sum(axis=1, keepdims=True)
            rows = np.divide(rows, total, out=np.zeros_like(rows), where=total > 0)
        length = np.diff(self.starts).astype(np.float64)
        at_start = np.concatenate([np.zeros((1, rows.shape[1])),
                                   np.cumsum(rows[:-1] * length[:, None], axis=0)])
        clocks = np.asarray(clocks, dtype=np.int64)
        s = np.searchsorted(self.starts, clocks, side="right") - 1
        return at_start[s] + rows[s] * (clocks - self.starts[s]).astype(np.float64)[:, None]


class Interleaver:
    """The planner's mixing state and rule: O(K) numbers, exact resume, vectorised choices.

    >>> plan = Interleaver(3)
    >>> plan.choose(8, [0.5, 0.25, 0.25]).tolist()
    [0, 1, 2, 0, 0, 1, 2, 0]

    State (all O(K), see :meth:`state_dict`): per source the units contributed (``counts``:
    samples, or tokens in token mode) and documents taken (``documents``); the target reached
    when the current weights were set (``base``), the current weights and the units since.
    """

    def __init__(self, num_sources: int, unit: Unit | str = Unit.SAMPLES, *,
                 compiled: bool = True) -> None:
        if isinstance(num_sources, bool) or not isinstance(num_sources, int) or num_sources < 1:
            raise ConfigError(f"num_sources: must be an integer >= 1, got {num_sources!r}")
        try:
            self._unit = Unit(unit)
        except ValueError:
            choices = ", ".join(repr(u.value) for u in Unit)
            raise ConfigError(f"unit: got {unit!r}, expected one of {choices}") from None
        k = num_sources
        self.compiled = compiled  # False: the NumPy + heap reference (same decisions, slower)
        self._counts = np.zeros(k, dtype=np.int64)
        self._documents = np.zeros(k, dtype=np.int64)
        self._base = np.zeros(k, dtype=np.float64)
        self._weights: np.ndarray | None = None
        self._segment_units = 0
        self._last_normalized: tuple[Any, np.ndarray] | None = None

    # -- read-only views
    @property
    def num_sources(self) -> int:
        return self._counts.size

    @property
    def unit(self) -> Unit:
        return self._unit

    @property
    def counts(self) -> np.ndarray:
        """Units contributed by each source so far (samples, or tokens)."""
        return self._counts.copy()

    @property
    def documents(self) -> np.ndarray:
        """Documents (samples) taken from each source so far."""
        return self._documents.copy()

    @property
    def total(self) -> int:
        return int(self._counts.sum())

    @property
    def weights(self) -> np.ndarray | None:
        """The current (normalised) weights, or None before the first ones are set."""
        return None if self._weights is None else self._weights.copy()

    @property
    def target(self) -> np.ndarray:
        """The integrated target ``W_i`` at the current position (float64)."""
        if self._weights is None:
            return self._base.copy()
        return self._base + self._weights * np.float64(self._segment_units)

    @property
    def deviation(self) -> np.ndarray:
        """``c_i - W_i``: positive when a source is ahead of its target."""
        return self._counts - self.target

    # -- weights
    def set_weights(
        self,
        weights: Sequence[float] | np.ndarray,
        available: Sequence[bool] | np.ndarray | None = None,
    ) -> None:
        """Use new weights from the next decision on (normalised over ``available``).

        Unchanged weights continue the current segment; new ones start a segment at the target
        reached so far. Nothing is reset.
        """
        w = self._normalized(weights, available)
        if w.size != self.num_sources:
            raise ConfigError(
                f"weights: expected {self.num_sources} weights (one per source), got {w.size}"
            )
        if self._weights is not None and np.array_equal(w, self._weights):
            return
        base = self.target
        dropped = w == 0
        if dropped.any():
            # A source that gets weight 0 can never repay (or work off) its deviation, so the
            # others would have to absorb it for ever. Hand it over instead: its target becomes
            # its count, and the others' targets move by their share of the difference.
            owed = math.fsum((base[dropped] - self._counts[dropped]).tolist())
            base[dropped] = self._counts[dropped]
            base[~dropped] += w[~dropped] * owed
        self._base = base
        self._weights = w
        self._segment_units = 0

    def _normalized(self, weights, available) -> np.ndarray:
        """:func:`normalize_weights`, remembered for the last float64 array (and boolean mask)
        given: a feed passes the same weights for every chunk of decisions."""
        if not (isinstance(weights, np.ndarray) and weights.dtype == np.float64
                and (available is None or (isinstance(available, np.ndarray)
                                           and available.dtype == np.bool_))):
            return normalize_weights(weights, available)
        key = (weights.shape, weights.tobytes(),
               None if available is None else (available.shape, available.tobytes()))
        if self._last_normalized is not None and self._last_normalized[0] == key:
            return self._last_normalized[1]
        w = normalize_weights(weights, available)
        self._last_normalized = (key, w)
        return w

    def _ready(self, weights, available, path: WeightPath | None = None) -> np.ndarray:
        if weights is not None:
            if path is not None and self._weights is not None:
                # on a path the caller's weights are the stage's, normalised its own way: the
                # last bits may differ from the path's row the rule switched to by itself
                w = self._normalized(weights, available)
                if w.shape == self._weights.shape and np.allclose(w, self._weights, rtol=0,
                                                                  atol=1e-12):
                    return self._weights
            self.set_weights(weights, available)
        elif available is not None:
            raise ConfigError("available: pass it together with weights")
        if self._weights is None:
            raise StateError("weights: none set yet; pass weights or call set_weights() first")
        return self._weights

    # -- decisions
    def _path(self, path: WeightPath | None, available) -> tuple[np.ndarray, np.ndarray] | None:
        """The path's changes still ahead (after the current clock), weights normalised."""
        if path is None:
            return None
        ahead = path.starts > self.total
        if not ahead.any():
            return np.empty(0, np.int64), np.empty((0, self.num_sources))
        pw = np.stack([normalize_weights(row, available) for row in path.weights[ahead]])
        return path.starts[ahead], pw

    @staticmethod
    def _live(w: np.ndarray, path: WeightPath | None, available=None) -> np.ndarray:
        """Sources in the rule: weight now, or (available and) weight somewhere on the path."""
        if path is None:
            return w > 0
        later = (path.weights > 0).any(axis=0)
        if available is not None:
            later &= np.asarray(available, dtype=bool)
        return (w > 0) | later

    def _advance(self, units: int, ahead: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Count ``units`` more units; crossing a change on the path starts its segment at the
        target reached there (no hand-over: the rule saw the change coming)."""
        if ahead is None or not ahead[0].size:
            self._segment_units += units
            return
        assert self._weights is not None
        end = self.total  # counts are already updated
        c0 = end - units - self._segment_units
        base, w, start = self._base, self._weights, c0
        for b, row in zip(ahead[0].tolist(), ahead[1], strict=True):
            if b > end:
                break
            base = base + w * np.float64(b - start)
            w, start = row, b
        self._base, self._weights, self._segment_units = base, w, end - start

    def choose(
        self,
        n: int,
        weights: Sequence[float] | np.ndarray | None = None,
        available: Sequence[bool] | np.ndarray | None = None,
        path: WeightPath | None = None,
    ) -> np.ndarray:
        """The sources of the next ``n`` samples (int64 array).

        ``weights`` (default: the current ones) are normalised over ``available``. Equal to
        ``n`` single decisions of the rule, and to any split of ``n`` into smaller calls.
        ``path``: the weights ahead (:class:`WeightPath`); the rule then anticipates those
        changes and stays within its bound across them. Without it the weights are constant
        over the call.
        """
        if self._unit is not Unit.SAMPLES:
            raise StateError("unit: choose() is for sample mode; use choose_tokens()")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"n: must be an integer >= 0, got {n!r}")
        w = self._ready(weights, available, path)
        ahead = self._path(path, available)
        if ahead is not None:
            # every source the path ever gives weight stays in the rule (and counts in delta),
            # so that nothing depends on where calls begin
            live = self._live(w, path, available)
            c0 = self.total - self._segment_units
            out = edf.choose_samples_path(self._base, w, self._counts, np.int64(self.total),
                                          np.int64(c0), np.int64(n),
                                          tijdeman_delta(int(live.sum())), live, *ahead)
            taken = np.bincount(out, minlength=self.num_sources)
            self._counts += taken
            self._documents += taken
            self._advance(int(n), ahead)
            return out
        if self.compiled:
            positive = int(np.count_nonzero(w > 0))
            out = edf.choose_samples(self._base, w, self._counts, np.int64(self._segment_units),
                                     np.int64(n), tijdeman_delta(positive))
        else:
            out = reference.choose_samples(self._base, w, self._counts, self._segment_units, int(n))
        taken = np.bincount(out, minlength=self.num_sources)
        self._counts += taken
        self._documents += taken
        self._segment_units += int(n)
        return out

    def choose_tokens(
        self,
        weights: Sequence[float] | np.ndarray | None,
        upcoming: Sequence[np.ndarray],
        max_docs: int,
        available: Sequence[bool] | np.ndarray | None = None,
        final: Sequence[bool] | np.ndarray | None = None,
        path: WeightPath | None = None,
    ) -> np.ndarray:
        """The sources of up to ``max_docs`` next documents, in order (int64 array).

        ``path``: the weights ahead, as for :meth:`choose` (token clock); sources that get
        weight later on the path must list their lengths too.

        ``final[i]`` (optional) says ``upcoming[i]`` is everything source ``i`` has left (it
        reaches its cap): the rule then never waits for a further document of it.

        ``upcoming[i]`` holds the lengths (tokens, >= 1) of source ``i``'s next documents in
        the order it will deliver them (known in advance from its permutation). The ``j``-th
        occurrence of ``i`` in the result is ``upcoming[i][j]``. The result is shorter than
        ``max_docs`` when a source with positive weight becomes due and none of its listed
        lengths are left: call again with more lengths. Sources of weight 0 may list none.
        """
        if self._unit is not Unit.TOKENS:
            raise StateError("unit: choose_tokens() is for token mode; use choose()")
        if isinstance(max_docs, bool) or not isinstance(max_docs, int | np.integer) or max_docs < 0:
            raise ConfigError(f"max_docs: must be an integer >= 0, got {max_docs!r}")
        w = self._ready(weights, available, path)
        if len(upcoming) != self.num_sources:
            raise ConfigError(
                f"upcoming: expected {self.num_sources} arrays (one per source), "
                f"got {len(upcoming)}"
            )
        for i, x in enumerate(upcoming):
            arr = np.asarray(x)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ConfigError(f"upcoming[{i}]: expected a 1-D array of integer lengths")
            if arr.size and arr.min() < 1:
                raise ConfigError(f"upcoming[{i}]: document lengths must be >= 1, got {arr.min()}")
        ahead = self._path(path, available)
        if self.compiled or ahead is not None:
            live = self._live(w, path, available)
            lens = [np.asarray(x, dtype=np.int64) if live[i] else np.empty(0, np.int64)
                    for i, x in enumerate(upcoming)]
            offsets = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum([x.size for x in lens], out=offsets[1:])
            fin = (np.zeros(len(lens), dtype=np.bool_) if final is None
                   else np.asarray(final, dtype=np.bool_))
            # constant weights are a path with no change ahead
            pb, pw = ahead if ahead is not None else (np.empty(0, np.int64),
                                                      np.empty((0, self.num_sources)))
            c0 = self.total - self._segment_units
            out, lengths = edf.choose_tokens(
                self._base, w, self._counts, np.int64(self.total), np.int64(c0),
                np.concatenate(lens), offsets, fin, np.int64(max_docs), live, pb, pw)
        else:
            out, lengths = reference.choose_tokens(
                self._base, w, self._counts, self._segment_units, upcoming, int(max_docs), final
            )
        k = self.num_sources
        self._counts += np.bincount(out, weights=lengths, minlength=k).astype(np.int64)
        self._documents += np.bincount(out, minlength=k)
        self._advance(int(lengths.sum()), ahead)
        return out

    # -- state
    def state_dict(self) -> dict:
        """A JSON-serialisable copy of the state; floats round-trip exactly through JSON."""
        return {
            "version": _STATE_VERSION,
            "unit": self._unit.value,
            "num_sources": self.num_sources,
            "counts": self._counts.tolist(),
            "documents": self._documents.tolist(),
            "base": self._base.tolist(),
            "weights": None if self._weights is None else self._weights.tolist(),
            "segment_units": self._segment_units,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; refuse a malformed or foreign one."""
        if not isinstance(state, dict):
            raise StateError(f"interleave state: expected a dict, got {type(state).__name__}")
        needed = ("version", "unit", "num_sources", "counts", "documents", "base", "weights",
                  "segment_units")
        for key in needed:
            if key not in state:
                raise StateError(f"interleave state.{key}: missing")
        if state["version"] != _STATE_VERSION:
            raise StateError(
                f"interleave state.version: {shown(state['version'])} is not supported "
                f"(expected {_STATE_VERSION})"
            )
        if state["unit"] != self._unit.value:
            raise StateError(
                f"interleave state.unit: saved in {shown(state['unit'])} mode, "
                f"this planner counts {self._unit.value!r}"
            )
        k = self.num_sources
        if state["num_sources"] != k:
            raise StateError(
                f"interleave state.num_sources: saved with {shown(state['num_sources'])} "
                f"sources, this planner has {k}"
            )
        counts = _int_vector(state["counts"], k, "counts")
        documents = _int_vector(state["documents"], k, "documents")
        # a target may be below 0: a source dropped to weight 0 hands over its lead (set_weights)
        base = _float_vector(state["base"], k, "base", negative=True)
        weights = state["weights"]
        if weights is not None:
            weights = _float_vector(weights, k, "weights")
            if not (weights > 0).any() or abs(math.fsum(weights.tolist()) - 1.0) > 1e-9:
                raise StateError("interleave state.weights: must sum to 1")
        units = count("interleave state.segment_units", state["segment_units"])
        if weights is None and units != 0:
            raise StateError("interleave state.segment_units: must be 0 when no weights are set")
        if self._unit is Unit.SAMPLES and not np.array_equal(counts, documents):
            raise StateError("interleave state.documents: must equal counts in sample mode")
        if self._unit is Unit.TOKENS and (documents > counts).any():
            raise StateError("interleave state.documents: more documents than tokens")
        total = sum(counts.tolist())  # Python integers: no wrap-around
        target = base if weights is None else base + weights * np.float64(units)
        if abs(math.fsum(target.tolist()) - total) > 1e-6 * max(1.0, total):
            raise StateError(
                f"interleave state.base: the target sums to {math.fsum(target.tolist())}, "
                f"but {total} units were counted"
            )
        self._counts = counts
        self._documents = documents
        self._base = base
        self._weights = weights
        self._segment_units = units


def _vector(value, k: int, name: str) -> list:
    if not isinstance(value, list | tuple) or len(value) != k:
        got = f"{len(value)} values" if isinstance(value, list | tuple) else shown(value)
        raise StateError(f"interleave state.{name}: expected a list of {k} values, got {got}")
    return list(value)


def _int_vector(value, k: int, name: str) -> np.ndarray:
    return np.array([count(f"interleave state.{name}[{i}]", v)
                     for i, v in enumerate(_vector(value, k, name))], dtype=np.int64)


def _float_vector(value, k: int, name: str, negative: bool = False) -> np.ndarray:
    lo = None if negative else 0.0
    return np.array([number(f"interleave state.{name}[{i}]", v, lo=lo)
                     for i, v in enumerate(_vector(value, k, name))], dtype=np.float64)


# ------------------------------------------------------------------------------- measuring


def max_prefix_deviation(
    sources: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    lengths: np.ndarray | None = None,
) -> float:
    """``max_{n,i} |c_i(n) - w_i n|`` over every prefix of a sequence, for constant weights.

    ``sources`` are the chosen sources in order; ``lengths`` (token mode) the length of each
    chosen document, the unit then being tokens. Vectorised: the extremes of
    ``c_i - w_i n`` lie just before and just after each of source ``i``'s units (or
    documents), and at the end, so only those points are evaluated.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(sources, dtype=np.int64)
    ln = np.ones(s.size, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    if s.size == 0:
        return 0.0
    clock_end = np.cumsum(ln).astype(np.float64)  # clock after each document
    clock_start = clock_end - ln
    order = np.argsort(s, kind="stable")
    order_src = s[order]
    per_src_end = np.cumsum(ln[order])
    group_first = np.searchsorted(order_src, order_src, side="left")
    offset = np.concatenate([[0], per_src_end])[group_first]
    c_after = (per_src_end - offset).astype(np.float64)  # source's units after its document
    c_before = c_after - ln[order]
    ahead = c_after - w[order_src] * clock_end[order]
    behind = w[order_src] * clock_start[order] - c_before
    n = clock_end[-1]
    final = np.abs(np.bincount(s, weights=ln, minlength=w.size) - w * n)
    return float(max(ahead.max(), behind.max(), final.max(), 0.0))
