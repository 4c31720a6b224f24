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

Beside this module: the weights ahead (:mod:`mixbatch.plan.weight_path`), the saved state and its
checks (:mod:`mixbatch.plan.interleave_state`), and the measure of a sequence's prefix deviation
(:mod:`mixbatch.plan.deviation`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.mixture.weights import normalize_weights
from mixbatch.plan import edf, reference
from mixbatch.plan.deviation import max_prefix_deviation
from mixbatch.plan.interleave_state import dump_state, load_state
from mixbatch.plan.reference import tijdeman_delta
from mixbatch.plan.weight_path import WeightPath

__all__ = ["Interleaver", "Unit", "WeightPath", "max_prefix_deviation", "tijdeman_delta"]


class Unit(enum.Enum):
    """What the planner counts: samples (one per decision) or tokens (documents' lengths)."""

    SAMPLES = "samples"
    TOKENS = "tokens"


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
        return dump_state(self._unit.value, self._counts, self._documents, self._base,
                          self._weights, self._segment_units)

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; refuse a malformed or foreign one."""
        (self._counts, self._documents, self._base, self._weights,
         self._segment_units) = load_state(state, self._unit.value, self.num_sources)
