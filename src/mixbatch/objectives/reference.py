"""The per-row construction of a step's examples, kept as the oracle of the vectorised stage.

:meth:`~mixbatch.objectives.stage.ObjectiveStage.apply` builds every row's example at once
(:mod:`mixbatch.objectives.batched`); this module builds them one row at a time with
:func:`~mixbatch.objectives.denoisers.corrupt` and lays them out one row at a time, as the stage
did before. Tests assert that both give the same batches; ``bench_denoisers --speed`` times
both. Nothing else calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixbatch.objectives.config import Layout
from mixbatch.objectives.stage import main_source
from mixbatch.shape.materialize import IGNORE_INDEX

__all__ = ["reference_apply"]


def reference_apply(stage: Any, batch: dict[str, Any], assigned: Any,
                    rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """What ``stage.apply(batch, assigned, rows)`` gives, one row at a time."""
    ids, src = np.asarray(batch["input_ids"]), np.asarray(batch["source_ids"])
    rows = np.asarray(rows, dtype=np.int64)
    real = src >= 0
    main = main_source(src, stage.n_sources)
    objective = assigned.ids[rows].astype(np.int64)
    examples = []
    for i, r in enumerate(rows.tolist()):
        tokens = ids[i][real[i]]
        if tokens.size < 2:
            examples.append(None)
            continue
        examples.append(stage.mixer.transform(assigned.first + r, int(objective[i]),
                                              tokens.astype(np.int64)))
    out = (_prefix_lm(stage, examples, main) if stage.layout is Layout.PREFIX_LM
           else _encoder_decoder(stage, examples, main))
    out["objective_ids"] = objective
    if "step" in batch:
        out["step"] = batch["step"]
    return out


def _prefix_lm(stage: Any, examples: list[Any], main: np.ndarray) -> dict[str, Any]:
    B, W = len(examples), stage.width
    input_ids = np.full((B, W), stage.pad_id, dtype=np.int64)
    labels = np.full((B, W), IGNORE_INDEX, dtype=np.int64)
    position = np.zeros((B, W), dtype=np.int64)
    source = np.full((B, W), -1, dtype=np.int64)
    prefix = np.zeros(B, dtype=np.int64)
    for i, ex in enumerate(examples):
        if ex is None:
            continue
        seq, p = ex.tokens, ex.prefix_len
        T = seq.size
        input_ids[i, :T] = seq
        labels[i, p:T] = seq[p:]
        position[i, :T] = np.arange(T)
        source[i, :T] = main[i]
        prefix[i] = p
    return {"input_ids": input_ids, "labels": labels, "position_ids": position,
            "prefix_len": prefix, "source_ids": source}


def _encoder_decoder(stage: Any, examples: list[Any], main: np.ndarray) -> dict[str, Any]:
    B, Wi, Wt = len(examples), stage.enc_width, stage.dec_width
    input_ids = np.full((B, Wi), stage.pad_id, dtype=np.int64)
    attention = np.zeros((B, Wi), dtype=np.int64)
    source = np.full((B, Wi), -1, dtype=np.int64)
    decoder = np.full((B, Wt), stage.pad_id, dtype=np.int64)
    labels = np.full((B, Wt), IGNORE_INDEX, dtype=np.int64)
    for i, ex in enumerate(examples):
        if ex is None:
            continue
        a, t = ex.inputs.size, ex.targets.size
        input_ids[i, :a] = ex.inputs
        attention[i, :a] = 1
        source[i, :a] = main[i]
        labels[i, :t] = ex.targets
        decoder[i, 1:t] = ex.targets[:-1]
    return {"input_ids": input_ids, "attention_mask": attention, "source_ids": source,
            "decoder_input_ids": decoder, "labels": labels}
