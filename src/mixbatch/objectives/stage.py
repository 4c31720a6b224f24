"""Objectives in the loader: every row of the global stream gets an objective, exactly.

A *sample* is one row of a step (``packing: pad`` makes it one document; ``concat`` a
``seq_len`` cut of the token line, as T5 corrupts packed text). When the loader plans a global
step of ``R`` rows, :meth:`ObjectiveStage.assign` gives every row its objective with
:class:`~mixbatch.objectives.mixer.ObjectiveMixer` (the planner's interleaving rule: after
``n`` rows each objective has had ``w_i·n`` of them to within one); the sample number of row
``r`` is the number of rows before the step plus ``r``, and its spans are drawn from
``(seed, sample number)``. Each rank and worker reads only its rows and transforms only them,
so the batch of a row is the same at any world size or worker count, and the mixer's state
(the rule's counters and the position) is part of the loader's state: a resumed run continues
exactly.

:meth:`ObjectiveStage.apply` turns this rank's rows into the layout's batch ("UL2: Unifying
Language Learning Paradigms", Section 3), every row at once
(:func:`~mixbatch.objectives.batched.corrupt_rows`; the per-row construction it replaced is
:mod:`mixbatch.objectives.reference`, the tests' oracle). With ``objectives.distill`` the two
objectives are "Distilling Step-by-Step!"'s tasks (:mod:`mixbatch.objectives.distill`): row
``r`` (one record: ``packing: pad``) becomes ``[task prefix] input`` (the row's tokens) and the
record's answer or rationale (from the table read at start, by the row's document):

* ``prefix_lm``: ``input_ids`` ``[B, W]`` = ``[mode] inputs targets`` then padding,
  ``prefix_len`` ``[B]`` (the length of ``[mode] inputs``: attention is bidirectional over it),
  ``labels`` (Hugging Face convention: the token where it is predicted, ``-100`` over the
  prefix and the padding), ``position_ids`` (0.. over the example, 0 on padding),
  ``source_ids`` (the row's main source over the example, -1 on padding);
* ``encoder_decoder``: ``input_ids`` / ``attention_mask`` ``[B, Wi]`` (encoder),
  ``decoder_input_ids`` ``[B, Wt]`` (the targets shifted right after a start token, the pad id as
  in T5) and ``labels`` ``[B, Wt]`` (the targets, -100 on padding), ``source_ids`` ``[B, Wi]``.

Both carry ``objective_ids`` ``[B]`` (index into :attr:`ObjectiveStage.names`). The widths ``W``
(``Wi``, ``Wt``) are the longest any objective of the mix makes from ``seq_len`` tokens, so a
config has one batch shape. A row with fewer than 2 tokens (an empty row of a token budget) has
nothing to corrupt: it stays padding with no loss and is counted in ``short_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbatch.errors import ConfigError, StateError
from mixbatch.objectives.batched import (
    Examples,
    corrupt_rows,
    gather_pieces,
    join_pieces,
    piece_columns,
)
from mixbatch.objectives.config import Layout, ObjectivesConfig, token_ids
from mixbatch.objectives.denoisers import Denoiser, Paradigm
from mixbatch.objectives.distill import DistillTable, Task, distill_table
from mixbatch.objectives.mixer import ExactMix, ObjectiveMixer
from mixbatch.shape.materialize import IGNORE_INDEX

__all__ = ["Assigned", "ObjectiveStage", "example_lengths", "main_source", "objective_stage"]


@dataclass(frozen=True)
class Assigned:
    """The objectives of one global step's rows: row ``r`` is sample ``first + r``."""

    first: int
    ids: np.ndarray
    names: tuple[str, ...]

    def name(self, row: int) -> str:
        return self.names[int(self.ids[row])]


def example_lengths(d: Denoiser, n: np.ndarray, max_spans: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of ``inputs`` (mode token included) and ``targets`` that
    :func:`~mixbatch.objectives.denoisers.corrupt` makes from documents of ``n >= 2`` tokens."""
    n = np.asarray(n, dtype=np.int64)
    noise = np.minimum(np.maximum(np.rint(n * d.rate).astype(np.int64), 1), n - 1)
    if d.paradigm is Paradigm.S:
        return 1 + n - noise, noise
    spans = np.maximum(1, np.rint(noise / d.mean_span).astype(np.int64))
    spans = np.minimum.reduce([spans, noise, n - noise, np.full_like(n, max_spans)])
    return 1 + n - noise + spans, noise + spans


class ObjectiveStage:
    """Objectives of the loader's rows and their batches; see the module docstring."""

    def __init__(self, spec: ObjectivesConfig, seed: int, vocab_size: int, pad_id: int,
                 seq_len: int, n_sources: int, distill: DistillTable | None = None) -> None:
        modes, sentinels, self.vocab_size = token_ids(vocab_size, spec.sentinels)
        self.layout = Layout(spec.layout)
        self.pad_id = int(pad_id)
        self.n_sources = n_sources
        self.empty_id = modes[Paradigm.S.value]  # [S2S]: an encoder-decoder's empty input
        self.short_rows = 0  # this process's rows of < 2 tokens (left as padding)
        seed = seed if spec.seed is None else spec.seed
        self.distill = distill
        self.mixer: ExactMix
        if spec.distill is not None:
            if distill is None:
                raise ConfigError("objectives.distill: the stage needs the records' table "
                                  "(objective_stage reads it)")
            self.mixer = ExactMix([t.value for t in Task], spec.distill.weights(), seed)
            prefix = max(p.size for p in distill.prefixes)
            target = max(int(n.max(initial=1)) for n in distill.target_lens)
            self.enc_width, self.dec_width = prefix + seq_len, target
            self.width = self.enc_width + target
            return
        self.mixer = ObjectiveMixer(spec.build(), spec.weight_vector(), seed, modes, sentinels)
        n = np.arange(2, max(seq_len, 2) + 1)
        lens = [example_lengths(d, n, sentinels.size) for d in self.mixer.denoisers]
        self.width = int(max((i + t).max() for i, t in lens))  # prefix_lm row
        self.enc_width = int(max(i.max() for i, _ in lens))
        self.dec_width = int(max(t.max() for _, t in lens))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.mixer.names)

    def model_shape(self, replay: bool = False) -> tuple[int, int]:
        """``(vocab_size, row width)`` of the proxy on these batches: the prefix-LM row, or
        for ``encoder_decoder`` the longer of the encoder's row and the decoder's
        ``[start] targets`` (``replay``: the proxy replays hard batches, which are token
        rows, not examples: refused)."""
        if replay:
            raise ConfigError("proxy.replay_rate: replays planned token rows, which "
                              "`objectives:` turns into examples; set replay_rate: 0")
        if self.layout is Layout.PREFIX_LM:
            return self.vocab_size, self.width
        return self.vocab_size, max(self.enc_width, self.dec_width + 1)

    def assign(self, rows: int) -> Assigned:
        """The objectives of the next global step's ``rows`` rows (advances the state)."""
        first = self.mixer.position
        return Assigned(first, self.mixer.assign(rows), self.names)

    def apply(self, batch: dict[str, Any], assigned: Assigned,
              rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """The layout's batch of ``rows`` (global row numbers of the step, in ``batch`` order)
        from the loader's fields ``input_ids`` and ``source_ids``: every row at once
        (:func:`~mixbatch.objectives.batched.corrupt_rows`)."""
        ids, src = np.asarray(batch["input_ids"]), np.asarray(batch["source_ids"])
        rows = np.asarray(rows, dtype=np.int64)
        real = src >= 0
        main = main_source(src, self.n_sources)
        objective = assigned.ids[rows].astype(np.int64)
        count = real.sum(axis=1)
        live = np.flatnonzero(count >= (1 if self.distill is not None else 2))
        self.short_rows += int(rows.size - live.size)
        mixer = self.mixer
        if self.distill is not None:
            first = np.argmax(real[live], axis=1)  # a row is one record (`packing: pad`)
            ex = self._distill(ids[live][real[live]], count[live], objective[live],
                               np.asarray(batch["doc_ids"])[live, first])
        else:
            assert isinstance(mixer, ObjectiveMixer)
            ex = corrupt_rows(ids[live][real[live]], count[live], objective[live],
                              assigned.first + rows[live], mixer.denoisers, mixer.mode_ids,
                              mixer.sentinels, mixer.seed)
        out = (self._prefix_lm(rows.size, live, ex, main) if self.layout is Layout.PREFIX_LM
               else self._encoder_decoder(rows.size, live, ex, main))
        out["objective_ids"] = objective
        if "step" in batch:
            out["step"] = batch["step"]
        return out

    def _distill(self, tokens: np.ndarray, count: np.ndarray, task: np.ndarray,
                 docs: np.ndarray) -> Examples:
        """Row ``i`` (record ``docs[i]``'s input) through task ``task[i]``: inputs
        ``[task prefix] input``, targets the record's answer or rationale ("Distilling
        Step-by-Step!")."""
        table = self.distill
        assert table is not None
        prefixes = np.concatenate(table.prefixes)
        p_len = np.array([p.size for p in table.prefixes], dtype=np.int64)[task]
        p_start = np.array([0, table.prefixes[0].size], dtype=np.int64)[task]
        inputs = join_pieces(gather_pieces(prefixes, p_start, p_len), p_len,
                             tokens.astype(np.int64), count)
        answers = table.targets[0].size
        t_len = np.where(task == 0, table.target_lens[0][docs], table.target_lens[1][docs])
        t_start = np.where(task == 0, table.target_starts[0][docs],
                           answers + table.target_starts[1][docs])
        targets = gather_pieces(np.concatenate(table.targets), t_start, t_len)
        return Examples(inputs, p_len + count, targets, t_len)

    def _prefix_lm(self, B: int, live: np.ndarray, ex: Examples, main: np.ndarray
                   ) -> dict[str, Any]:
        W = self.width
        input_ids = np.full((B, W), self.pad_id, dtype=np.int64)
        labels = np.full((B, W), IGNORE_INDEX, dtype=np.int64)
        prefix = np.zeros(B, dtype=np.int64)
        length = np.zeros(B, dtype=np.int64)
        prefix[live] = ex.in_len  # [mode] inputs
        length[live] = prefix[live] + ex.tg_len
        input_ids[np.repeat(live, ex.in_len), piece_columns(ex.in_len)] = ex.inputs
        at = (np.repeat(live, ex.tg_len),
              np.repeat(prefix[live], ex.tg_len) + piece_columns(ex.tg_len))
        input_ids[at] = labels[at] = ex.targets
        col = np.arange(W)[None, :]
        inside = col < length[:, None]
        return {"input_ids": input_ids, "labels": labels,
                "position_ids": np.where(inside, col, 0),
                "prefix_len": prefix, "source_ids": np.where(inside, main[:, None], -1)}

    def _encoder_decoder(self, B: int, live: np.ndarray, ex: Examples, main: np.ndarray
                         ) -> dict[str, Any]:
        Wi, Wt = self.enc_width, self.dec_width
        input_ids = np.full((B, Wi), self.pad_id, dtype=np.int64)
        decoder = np.full((B, Wt), self.pad_id, dtype=np.int64)
        labels = np.full((B, Wt), IGNORE_INDEX, dtype=np.int64)
        enc_len = np.zeros(B, dtype=np.int64)
        enc_len[live] = ex.in_len
        input_ids[np.repeat(live, ex.in_len), piece_columns(ex.in_len)] = ex.inputs
        row, col = np.repeat(live, ex.tg_len), piece_columns(ex.tg_len)
        labels[row, col] = ex.targets
        shifted = col + 1 < np.repeat(ex.tg_len, ex.tg_len)  # decoder[:, 0]: the start (pad) id
        decoder[row[shifted], col[shifted] + 1] = ex.targets[shifted]
        inside = np.arange(Wi)[None, :] < enc_len[:, None]
        return {"input_ids": input_ids, "attention_mask": inside.astype(np.int64),
                "source_ids": np.where(inside, main[:, None], -1),
                "decoder_input_ids": decoder, "labels": labels}

    def state_dict(self) -> dict[str, Any]:
        return {"mixer": self.mixer.state_dict(), "layout": self.layout.value}

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict) or "mixer" not in state:
            raise StateError("loader state.objectives: missing; the state was saved without "
                             "`objectives:` (or is not a loader state)")
        if state.get("layout") != self.layout.value:
            raise StateError(f"loader state.objectives.layout: saved {state.get('layout')!r}, "
                             f"configured {self.layout.value!r}")
        try:
            self.mixer.load_state_dict(state["mixer"])
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"loader state.objectives: malformed ({type(e).__name__}: {e})"
                             ) from None


def main_source(src: np.ndarray, k: int) -> np.ndarray:
    """The source with most tokens in each row (-1 for an empty row)."""
    B = src.shape[0]
    real = src >= 0
    flat = (np.arange(B)[:, None] * (k + 1) + np.where(real, src, k)).ravel()
    counts = np.bincount(flat, minlength=B * (k + 1)).reshape(B, k + 1)[:, :k]
    return np.where(real.any(axis=1), counts.argmax(axis=1), -1)


def objective_stage(cfg: Any, vocab_size: int, pad_id: int) -> ObjectiveStage | None:
    """The stage of ``cfg.objectives`` (None without that section)."""
    spec = getattr(cfg, "objectives", None)
    if spec is None:
        return None
    table = None
    if spec.distill is not None:
        from mixbatch.store import open_store

        name = spec.distill.source or next(iter(cfg.sources))
        table = distill_table(cfg, spec.distill.model_copy(update={"source": name}),
                              open_store(cfg.store_dir / name))
    return ObjectiveStage(spec, cfg.seed, vocab_size, pad_id, cfg.batch.seq_len,
                          len(cfg.sources), table)


def check_objective_state(stage: ObjectiveStage | None, state: dict[str, Any]) -> None:
    """Load ``state["objectives"]`` into ``stage``; a state with objectives but a config
    without them (or the reverse) is a :class:`StateError`."""
    saved = state.get("objectives")
    if stage is None:
        if saved is not None:
            raise StateError("loader state.objectives: the state mixes objectives, this config "
                             "has no `objectives:` section")
        return
    stage.load_state_dict(saved)
