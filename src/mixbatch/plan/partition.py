"""Split a global batch across ranks (and a rank's rows across workers), source by source.

DESIGN invariant 4: the global batch has the planned composition, and every rank's share of
every source is within one row of ``count / world_size``; ranks never overlap and together
hold every row.

Method: order the rows stably by source, then deal them out round-robin. A source's rows are
consecutive in that order, so any ``m`` consecutive positions dealt over ``p`` parts give each
part ``floor(m / p)`` or ``ceil(m / p)`` of them; and the dealing continues across sources, so
part sizes also differ by at most one (all equal when ``p`` divides the number of rows). Each
part's indices are returned in increasing row order, so the planner's order survives inside a
rank. The result depends only on the source ids and ``p``: it is the same on every rank and
after a resume, and the global batch does not depend on the world size. (Megatron-LM's
contiguous slicing of a periodic blend can give a rank only one source; this cannot.)
"""

from __future__ import annotations

import numpy as np

from mixbatch.errors import ConfigError

__all__ = ["deal_by_source", "partition_batch", "split_among_workers"]


def _sources(sources: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(sources)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"{field}: expected a 1-D array of integer source ids")
    if arr.size and arr.min() < 0:
        raise ConfigError(f"{field}: source ids must be >= 0, got {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _parts(parts: int, field: str) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int | np.integer) or parts < 1:
        raise ConfigError(f"{field}: must be an integer >= 1, got {parts!r}")
    return int(parts)


def deal_by_source(sources: np.ndarray, parts: int) -> list[np.ndarray]:
    """Row indices of each of ``parts`` parts (see module doc); sizes differ by at most one."""
    src = _sources(sources, "sources")
    p = _parts(parts, "parts")
    order = np.argsort(src, kind="stable")
    owner = np.empty(src.size, dtype=np.int64)
    owner[order] = np.arange(src.size) % p
    by_owner = np.argsort(owner, kind="stable")  # rows of part 0, then part 1, ... ascending
    bounds = np.searchsorted(owner[by_owner], np.arange(p + 1))
    return [by_owner[bounds[r] : bounds[r + 1]] for r in range(p)]


def partition_batch(sources: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Each rank's row indices into a global batch whose row ``j`` comes from ``sources[j]``.

    The batch size must be a multiple of ``world_size`` (every rank gets the same number of
    rows); otherwise :class:`ConfigError`.
    """
    src = _sources(sources, "sources")
    world = _parts(world_size, "world_size")
    if src.size % world:
        raise ConfigError(
            f"world_size: the global batch of {src.size} rows does not split evenly over "
            f"{world} ranks; use a batch size that is a multiple of the world size"
        )
    return deal_by_source(src, world)


def split_among_workers(sources: np.ndarray, num_workers: int) -> list[np.ndarray]:
    """Split a rank's rows among dataloader workers, source by source.

    ``sources`` are the source ids of the rank's rows; returns indices into them per worker.
    Worker sizes differ by at most one, and so does each worker's count of every source.
    """
    src = _sources(sources, "sources")
    return deal_by_source(src, _parts(num_workers, "num_workers"))
