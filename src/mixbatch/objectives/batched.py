"""Every row of a step through its denoiser at once: the span layouts and the examples as flat
NumPy arrays over the rows (the same examples as :func:`~mixbatch.objectives.denoisers.corrupt`
row by row).

Per row the work is what :func:`~mixbatch.objectives.denoisers.corrupt` does ("UL2: Unifying
Language Learning Paradigms", Section 3; T5's ``random_spans_noise_mask``): ``noise =
min(max(round(n·r), 1), n − 1)`` corrupted tokens of a row of ``n``, in ``spans =
min(max(1, round(noise / μ)), noise, n − noise, sentinels)`` spans; the noise and the kept
tokens are each cut into ``spans`` pieces at ``spans − 1`` distinct cut points drawn from the
row's generator (``(seed, "objective", sample)``), the pieces alternate, kept first; S keeps the
first ``n − noise`` tokens. Only the draws stay per row (each row has its own generator, so a
row's example does not depend on the other rows); the cut points are sorted, turned into piece
lengths, the noise masks laid out, the spans replaced by sentinels and the inputs and targets
gathered for all rows together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.objectives.denoisers import Denoiser, Paradigm
from mixbatch.objectives.seeding import row_generators
from mixbatch.plan.permutation import derive_key

__all__ = ["Examples", "corrupt_rows", "gather_pieces", "join_pieces", "piece_columns"]


@dataclass(frozen=True)
class Examples:
    """The examples of ``R`` rows, flat: row ``i``'s inputs (its mode token first) are the
    ``in_len[i]`` values of ``inputs`` after the rows before it, its targets likewise."""

    inputs: np.ndarray  # the inputs of every row, one after the other
    in_len: np.ndarray  # (R,)
    targets: np.ndarray
    tg_len: np.ndarray  # (R,)


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.cumsum(lengths) - lengths


def piece_columns(lengths: np.ndarray) -> np.ndarray:
    """For flat pieces of ``lengths``, each element's index inside its piece."""
    return np.arange(int(lengths.sum())) - np.repeat(_starts(lengths), lengths)


def _pieces(totals: np.ndarray, parts: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Row ``g``'s ``totals[g]`` cut into ``parts[g]`` pieces at its ``parts[g] − 1`` cut
    points (``cuts``, row after row, in any order within a row): the piece lengths, flat."""
    G = totals.size
    group = np.repeat(np.arange(G), parts - 1)
    cuts = cuts[np.lexsort((cuts, group))]
    bounds = np.empty(int(parts.sum()) + G, dtype=np.int64)
    first = _starts(parts + 1)
    inner = np.ones(bounds.size, dtype=bool)
    inner[first] = inner[first + parts] = False
    bounds[first], bounds[first + parts] = 0, totals
    bounds[inner] = cuts
    later = np.ones(bounds.size, dtype=bool)
    later[first] = False
    at = np.flatnonzero(later)
    return bounds[at] - bounds[at - 1]


def corrupt_rows(tokens: np.ndarray, lengths: np.ndarray, objective: np.ndarray,
                 samples: np.ndarray, denoisers: Sequence[Denoiser], mode_ids: dict[str, int],
                 sentinels: np.ndarray, seed: int) -> Examples:
    """Rows of ``lengths`` tokens (``tokens``: one after the other, every length >= 2), row
    ``i`` through ``denoisers[objective[i]]`` as sample number ``samples[i]``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = np.asarray(lengths, dtype=np.int64)
    objective = np.asarray(objective, dtype=np.int64)
    if (n < 2).any():
        raise ConfigError(f"objectives: a row of {int(n.min())} tokens cannot be corrupted "
                          "(needs 2 or more)")
    rate = np.array([d.rate for d in denoisers], dtype=np.float64)[objective]
    mean_span = np.array([d.mean_span for d in denoisers], dtype=np.float64)[objective]
    is_span = np.array([d.paradigm is not Paradigm.S for d in denoisers], dtype=bool)[objective]
    modes = np.array([mode_ids[d.paradigm.value] for d in denoisers], dtype=np.int64)[objective]
    if is_span.any() and sentinels.size == 0:
        raise ConfigError("objectives: span corruption needs sentinel ids")
    noise = np.minimum(np.maximum(np.rint(n * rate).astype(np.int64), 1), n - 1)
    spans = np.minimum.reduce([np.maximum(1, np.rint(noise / mean_span).astype(np.int64)),
                               noise, n - noise, np.full_like(n, sentinels.size)])
    spans = np.where(is_span, spans, 0)  # S rows: one suffix, no sentinels

    # the draws, per row: its own generator, the noise cuts first (corrupt's order)
    span_rows = np.flatnonzero(is_span)
    drawn = [(np.empty(0, np.int64), np.empty(0, np.int64))]
    rows = np.flatnonzero(spans > 1)
    keys = [derive_key(seed, "objective", s) for s in samples[rows].tolist()]
    for g, rng in zip(rows.tolist(), row_generators(keys), strict=True):
        k = int(spans[g]) - 1  # default_rng(key)'s draws, from a reseeded generator
        drawn.append((rng.choice(int(noise[g]) - 1, k, replace=False),
                      rng.choice(int(n[g] - noise[g]) - 1, k, replace=False)))
    parts = spans[span_rows]
    noise_len = _pieces(noise[span_rows], parts, np.concatenate([d[0] for d in drawn]) + 1)
    keep_len = _pieces(n[span_rows] - noise[span_rows], parts,
                       np.concatenate([d[1] for d in drawn]) + 1)

    # the noise mask of every token: span rows alternate kept and noise pieces, S rows
    # corrupt their suffix
    col = piece_columns(n)
    span_tok = np.repeat(is_span, n)
    mask = np.repeat(~is_span, n) & (col >= np.repeat(n - noise, n))
    mask[span_tok] = np.repeat(np.tile([False, True], int(parts.sum())),
                               np.stack([keep_len, noise_len], axis=1).ravel())
    # each noise run becomes its sentinel in the inputs, each kept run its sentinel in the
    # targets (the k-th run of a row gets sentinels[k])
    after = np.concatenate([[False], mask[:-1]]) & (col > 0)
    start = span_tok & mask & ~after
    kept_start = span_tok & ~mask & ((col == 0) | after)
    before = np.repeat(_starts(spans), n)
    sent = sentinels.astype(np.int64) if sentinels.size else np.zeros(1, np.int64)
    run = np.clip(np.cumsum(start) - 1 - before, 0, None)
    kept_run = np.clip(np.cumsum(kept_start) - 1 - before, 0, None)
    in_sel = ~mask | start
    tg_sel = mask | kept_start
    inputs = np.where(start, sent[np.minimum(run, sent.size - 1)], tokens)[in_sel]
    targets = np.where(kept_start, sent[np.minimum(kept_run, sent.size - 1)], tokens)[tg_sel]
    in_len = n - noise + spans  # >= 1: S keeps a prefix, span rows a kept piece
    return Examples(np.insert(inputs, _starts(in_len), modes), in_len + 1, targets,
                    noise + spans)


def join_pieces(first: np.ndarray, first_len: np.ndarray, second: np.ndarray,
                second_len: np.ndarray) -> np.ndarray:
    """Row after row, the row's piece of ``first`` then its piece of ``second`` (both flat,
    row after row, with those lengths)."""
    total = first_len + second_len
    out = np.empty(int(total.sum()), dtype=np.result_type(first, second))
    at = np.repeat(_starts(total), first_len) + piece_columns(first_len)
    out[at] = first
    out[np.repeat(_starts(total) + first_len, second_len) + piece_columns(second_len)] = second
    return out


def gather_pieces(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``flat[starts[i]:][:lengths[i]]`` for every ``i``, one after the other."""
    return flat[np.repeat(starts, lengths) + piece_columns(lengths)]
