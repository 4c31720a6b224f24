"""The order in which one source's documents are read: a keyed permutation per epoch.

Position ``p`` of source ``name`` (``p`` counts every document drawn so far, across epochs) is
document ``permute(p mod N, N, key(seed, name, p div N))``: a new order every epoch, random
access, O(1) memory, no stored index. ``shuffle=False`` reads documents in store order.
``max_epochs`` caps the positions at ``floor(max_epochs · N)``.

Held-out documents: with ``holdout = h > 0`` a fixed keyed permutation ``S`` (key
``(seed, name, "holdout")``) splits the store once: documents ``S(0..N-h-1)`` are trained on,
``S(N-h..N-1)`` are held out for validation (:meth:`SourceOrder.heldout`). Training positions
then permute ``[0, N - h)`` per epoch and map through ``S``. The split depends only on the seed,
the source name and ``h``, never on the run's progress.
"""

from __future__ import annotations

import math

import numpy as np

from mixbatch.plan.permutation import derive_key, permute


class SourceOrder:
    BLOCK = 4096  # positions computed at once and kept (derived data, not part of the state)

    def __init__(self, name: str, n_docs: int, seed: int, shuffle: bool = True,
                 max_epochs: float | None = None, holdout: int = 0) -> None:
        self.name = name
        self.n_store = n_docs
        self.holdout = min(max(holdout, 0), max(n_docs - 1, 0))
        self.n_docs = n_docs - self.holdout  # documents trained on
        n_docs = self.n_docs
        self.seed = seed
        self.shuffle = shuffle
        self.cap: int | None = None if max_epochs is None else math.floor(max_epochs * n_docs)
        if n_docs == 0:
            self.cap = 0
        # derived, not state: document ids of positions [_lo, _lo + len(_docs)), computed in blocks
        self._lo = 0
        self._docs = np.empty(0, dtype=np.int64)

    def available(self, consumed: int) -> int | None:
        """Documents left before the cap (None: unlimited)."""
        return None if self.cap is None else max(self.cap - consumed, 0)

    def _split(self, idx: np.ndarray) -> np.ndarray:
        if not self.holdout:
            return idx
        return permute(idx, self.n_store, derive_key(self.seed, self.name, "holdout"))

    def heldout(self) -> np.ndarray:
        """The held-out documents (store indices), in a fixed order."""
        return self._split(np.arange(self.n_docs, self.n_store, dtype=np.int64))

    def docs_at(self, positions: np.ndarray) -> np.ndarray:
        """Document index at each stream position (vectorised over positions and epochs)."""
        positions = np.asarray(positions, dtype=np.int64)
        n = self.n_docs
        idx = positions % n
        if not self.shuffle or n <= 1:
            return self._split(idx)
        epochs = positions // n
        out = np.empty_like(idx)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = permute(idx[m], n, derive_key(self.seed, self.name, int(e)))
        return self._split(out)

    def upcoming(self, consumed: int, m: int) -> np.ndarray:
        """Document indices of the next ``m`` positions (fewer at the cap)."""
        left = self.available(consumed)
        if left is not None:
            m = min(m, left)
        lo, hi = self._lo, self._lo + len(self._docs)
        if not (lo <= consumed and consumed + m <= hi):
            block = max(m, self.BLOCK)
            if left is not None:
                block = min(block, left)
            self._lo = consumed
            self._docs = self.docs_at(np.arange(consumed, consumed + block, dtype=np.int64))
        a = consumed - self._lo
        return self._docs[a: a + m]
