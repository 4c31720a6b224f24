"""Answer and rationale targets as two objectives ("Distilling Step-by-Step! Outperforming Larger
Language Models with Less Training Data and Smaller Model Sizes").

The paper trains one model on two tasks built from each ``(input, answer, rationale)`` record,
told apart by a task prefix on the input (``[label]``, ``[rationale]``), with the loss
``L = L_label + λ·L_rationale`` (Section 3.2, eq. 3). Here the two tasks are two objectives
mixed per sample with the planner's exact weights ``(1, λ) / (1 + λ)``
(:func:`rationale_weights`): every sample is one record through one task, so the expected loss
of a step is ``L`` up to the factor ``1 + λ``.

In a config, ``objectives: {distill: {rationale_weight: λ, ...}}`` (:class:`DistillConfig`)
takes one source of JSONL records: the source is prepared as usual with its ``text_field`` the
records' input field, and :func:`distill_table` reads the records again, checks their three
fields (one error naming the file, line and field) and tokenises the answers and rationales,
aligned with the store's documents (checked against the store's tokens). The loader's stage
(:mod:`mixbatch.objectives.stage`) then turns each row (one record: ``packing: pad``) into
``[task prefix] input`` (the row as the loader feeds it, with its end-of-document token) and
the task's target followed by the end-of-document token (where to stop).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mixbatch.checks import real
from mixbatch.errors import ConfigError, DataError, StoreError

__all__ = ["DistillConfig", "DistillTable", "Task", "distill_table", "rationale_example",
           "rationale_weights"]


class Task(enum.StrEnum):
    """The two tasks and their input prefixes (the paper's ``[label]`` and ``[rationale]``)."""

    LABEL = "label"
    RATIONALE = "rationale"

    @property
    def prefix(self) -> str:
        return f"[{self.value}] "


def rationale_weights(lam: float) -> tuple[float, float]:
    """``(1, λ) / (1 + λ)``: the label and rationale tasks' sampling weights."""
    lam = real("rationale_weight", lam, lo=0.0)
    return 1.0 / (1.0 + lam), lam / (1.0 + lam)


def rationale_example(record: dict[str, str], task: Task, where: str = "record",
                      fields: tuple[str, str, str] = ("input", "answer", "rationale")
                      ) -> tuple[str, str]:
    """``(input, target)`` of ``task`` for a record with the ``fields`` input, answer and
    rationale (each a non-empty string, else one :class:`DataError` naming ``where``)."""
    for key in fields:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: field {key!r} must be a non-empty string, got "
                            f"{str(value)[:40]!r}")
    target = record[fields[1]] if Task(task) is Task.LABEL else record[fields[2]]
    return Task(task).prefix + record[fields[0]], target


class DistillConfig(BaseModel):
    """``objectives.distill``: the records' source and fields, and the rationale weight λ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rationale_weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    source: str | None = None  # default: the config's only source
    input_field: str = Field(default="input", min_length=1)
    answer_field: str = Field(default="answer", min_length=1)
    rationale_field: str = Field(default="rationale", min_length=1)

    @property
    def fields(self) -> tuple[str, str, str]:
        return self.input_field, self.answer_field, self.rationale_field

    def weights(self) -> np.ndarray:
        return np.asarray(rationale_weights(self.rationale_weight))


@dataclass(frozen=True)
class DistillTable:
    """Per document of the source: the tokens of each task's target (CSR: ``targets[t]``
    flat, ``target_starts[t]``, ``target_lens[t]``), and each task's prefix tokens."""

    prefixes: tuple[np.ndarray, np.ndarray]
    targets: tuple[np.ndarray, np.ndarray]
    target_starts: tuple[np.ndarray, np.ndarray]
    target_lens: tuple[np.ndarray, np.ndarray]


def _records(path: Path, fields: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: invalid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue  # blank lines are not records (as `prepare` reads them)
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{where}: malformed JSON ({e})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in fields:
                value = record.get(key)
                if not isinstance(value, str) or not value:
                    raise DataError(f"{where}: objectives.distill: field {key!r} must be a "
                                    f"non-empty string, got {str(value)[:40]!r}")
            out.append(tuple(record[k] for k in fields))
    return out  # type: ignore[return-value]


def distill_table(cfg: Any, spec: DistillConfig, store: Any) -> DistillTable:
    """Read, check and tokenise the records of ``spec.source`` (its JSONL files in the order
    ``prepare`` reads them), aligned with ``store``'s documents."""
    from mixbatch.io import expand_paths
    from mixbatch.objectives.batched import join_pieces
    from mixbatch.tokenizer import load_tokenizer

    name = spec.source
    src = cfg.sources[name]
    tok = load_tokenizer(cfg.tokenizer, cfg.base_dir, cfg.eod_token)
    records: list[tuple[str, str, str]] = []
    for path in expand_paths(src.patterns, cfg.base_dir, src.format):
        if not isinstance(path, Path) or path.suffix not in (".jsonl", ".json"):
            raise ConfigError(f"objectives.distill: reads local JSONL records; source {name!r} "
                              f"has {path}")
        records.extend(_records(path, spec.fields))
    inputs, in_lens = tok.encode_batch([r[0] for r in records])
    if len(records) != len(store) or not np.array_equal(in_lens, store.lengths) or \
            not np.array_equal(np.asarray(inputs, np.int64),
                               store.gather(np.arange(len(store)))[0].astype(np.int64)):
        raise StoreError(f"objectives.distill: the store of source {name!r} does not hold its "
                         f"records' {spec.input_field!r} fields in order ({len(store)} "
                         f"documents, {len(records)} records): prepare it with text_field: "
                         f"{spec.input_field}, on_error: fail and no dedup")
    targets, starts, lens = [], [], []
    for k in (1, 2):  # each target ends with the end-of-document token (where to stop)
        flat, n = tok.encode_batch([r[k] for r in records])
        n = np.asarray(n, dtype=np.int64)
        ones = np.ones_like(n)
        targets.append(join_pieces(np.asarray(flat, dtype=np.int64), n,
                                   np.full(n.size, tok.eod_id, dtype=np.int64), ones))
        lens.append(n + ones)
        starts.append(np.cumsum(lens[-1]) - lens[-1])
    prefixes = tuple(np.asarray(tok.encode_batch([t.prefix])[0], dtype=np.int64) for t in Task)
    return DistillTable(prefixes, tuple(targets), tuple(starts), tuple(lens))  # type: ignore[arg-type]

