"""Turn a :class:`StepPlan` into token arrays, reading only the planned spans.

Output (NumPy; the torch adapter wraps it in tensors), for ``R`` rows of ``L`` positions:

- ``input_ids`` (R, L) int64: tokens, ``eod_id`` after each finished document, ``pad_id`` after;
- ``labels`` (R, L) int64: ``input_ids`` with -100 at padding and at the first position of every
  segment, the convention of Hugging Face models that shift labels inside the loss
  (``DataCollatorWithFlattening``): no position is trained to predict across a document boundary;
- ``position_ids`` (R, L): 0, 1, ... restarting at every segment (0 on padding);
- ``source_ids`` / ``doc_ids`` (R, L): the source index and the document's index in its store,
  -1 on padding;
- ``cu_seqlens`` int32 (n+1,) and ``max_seqlen``: boundaries of every segment over the flattened
  R·L positions, for varlen attention; each row's padding run is one more sequence, so the last
  entry is R·L;
- with 2-D bucketing (``plan.second`` set) also ``second_lengths`` (R,) int64, each row's
  second length (0 for an empty row), and ``max_second_len``: what the caller pads its second
  sequences (e.g. targets read by ``doc_ids``) to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixbatch.shape.base import StepPlan
from mixbatch.store import TokenStore

IGNORE_INDEX = -100


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for every pair, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total, dtype=np.int64) - offsets)


def materialize(plan: StepPlan, stores: Sequence[TokenStore], eod_id: int,
                pad_id: int) -> dict[str, np.ndarray | int]:
    R, L = plan.rows, plan.seq_len
    flat = np.full(R * L, pad_id, dtype=np.int64)
    src_ids = np.full(R * L, -1, dtype=np.int64)
    doc_ids = np.full(R * L, -1, dtype=np.int64)
    pos_ids = np.zeros(R * L, dtype=np.int64)
    seg_start = plan.row.astype(np.int64) * L + plan.col
    n_tok = plan.end - plan.start
    width = n_tok + plan.eod
    for s in np.unique(plan.source):
        m = plan.source == s
        store = stores[int(s)]
        src_index = _ranges(np.asarray(store.starts[plan.doc[m]]) + plan.start[m], n_tok[m])
        flat[_ranges(seg_start[m], n_tok[m])] = store.tokens[src_index]
    flat[(seg_start + n_tok)[plan.eod]] = eod_id
    covered = _ranges(seg_start, width)
    src_ids[covered] = np.repeat(plan.source, width)
    doc_ids[covered] = np.repeat(plan.doc, width)
    pos_ids[covered] = covered - np.repeat(seg_start, width)
    labels = flat.copy()
    labels[src_ids < 0] = IGNORE_INDEX
    labels[seg_start[width > 0]] = IGNORE_INDEX
    # varlen boundaries: every segment, plus each row's padding run
    pad_start = np.arange(R, dtype=np.int64) * L + (L - plan.pad)
    bounds = np.concatenate([seg_start[width > 0], pad_start[plan.pad > 0], [R * L]])
    bounds = np.unique(np.concatenate([[0], bounds]))
    lens = np.diff(bounds)
    extra: dict[str, np.ndarray | int] = {}
    if plan.second is not None:
        per_row = np.bincount(plan.row, weights=plan.second, minlength=R).astype(np.int64)
        extra = {"second_lengths": per_row, "max_second_len": int(per_row.max()) if R else 0}
    return {
        **extra,
        "input_ids": flat.reshape(R, L),
        "labels": labels.reshape(R, L),
        "position_ids": pos_ids.reshape(R, L),
        "source_ids": src_ids.reshape(R, L),
        "doc_ids": doc_ids.reshape(R, L),
        "cu_seqlens": bounds.astype(np.int32),
        "max_seqlen": int(lens.max()) if len(lens) else 0,
    }
