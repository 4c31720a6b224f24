"""Small compiled helpers the shapers share: a stable counting sort, and keyed orders of
groups (:func:`mixbatch.plan.permutation.keyed_order`, group by group)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["by_key", "keyed_groups"]


@numba.njit(cache=True, nogil=True)
def by_key(key: np.ndarray, bound: int) -> np.ndarray:  # pragma: no cover (compiled)
    """``np.argsort(key, kind="stable")`` for integers in ``[0, bound)`` (a counting sort)."""
    count = np.zeros(bound + 1, dtype=np.int64)
    for x in key:
        count[x + 1] += 1
    for v in range(bound):
        count[v + 1] += count[v]
    out = np.empty(key.shape[0], dtype=np.int64)
    for i in range(key.shape[0]):
        out[count[key[i]]] = i
        count[key[i]] += 1
    return out



@numba.njit(cache=True, nogil=True)
def keyed_groups(first: np.ndarray, count: np.ndarray) -> np.ndarray:  # pragma: no cover
    """Per group ``g`` of ``count[g]`` items laid out back to back, the keyed order of its
    items (offsets within the group): the stable argsort of the SplitMix64 finaliser of
    ``i + first[g]``."""
    out = np.empty(count.sum(), dtype=np.int64)
    at = 0
    for g in range(count.shape[0]):
        m = count[g]
        z = np.empty(m, dtype=np.uint64)
        for i in range(m):
            x = np.uint64(i) + first[g]
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z[i] = x ^ (x >> np.uint64(31))
        out[at:at + m] = np.argsort(z, kind="mergesort")
        at += m
    return out
