"""The audit log: one JSON object per sequence row that a rank was fed.

``{"step": int, "rank": int, "row": int, "segments": [[source, doc, start, end], ...], "pad": int}``

``row`` is the row's index in the rank's micro-batch, ``doc`` the document's index in its source
store and ``[start, end)`` the span of its tokens placed in the row (end-of-document tokens are
not counted; a segment that holds only an end token has ``start == end``). Everything a report or
a check needs can be rebuilt from this file offline.

Next to it, ``<name>.summary.json`` (:func:`summary_path`) holds the run's summary as the
``stream`` command reports it: the mixture per source, padding, truncation, pieces per document,
tokens per step, rank cost imbalance, skipped documents. The loader's counters are part of its
state, so after a resume the summary covers the whole run, not only the resumed part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from mixbatch.errors import DataError
from mixbatch.shape.base import StepPlan


def rows_of(plan: StepPlan, names: Sequence[str], step: int, rank: int) -> list[dict[str, Any]]:
    """The log records of every row of ``plan`` (rows numbered as in the plan)."""
    bounds = np.searchsorted(plan.row, np.arange(plan.rows + 1))
    src = [names[int(s)] for s in plan.source]
    doc, start, end = plan.doc.tolist(), plan.start.tolist(), plan.end.tolist()
    out = []
    for r in range(plan.rows):
        a, b = int(bounds[r]), int(bounds[r + 1])
        segs = [[src[k], doc[k], start[k], end[k]] for k in range(a, b)]
        out.append({"step": step, "rank": rank, "row": r, "segments": segs,
                    "pad": int(plan.pad[r])})
    return out


def summary_path(path: str | Path) -> Path:
    """Where the summary of the audit log at ``path`` goes: ``audit.jsonl`` →
    ``audit.summary.json``."""
    return Path(path).with_suffix(".summary.json")


class AuditWriter:
    """Appends the rows of each step to a JSONL file (flushed every step)."""

    def __init__(self, path: str | Path, names: Sequence[str], append: bool = False) -> None:
        self.path = Path(path)
        self.names = list(names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, plan: StepPlan, step: int, rank: int) -> None:
        for rec in rows_of(plan, self.names, step, rank):
            self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write (replace) the run's summary next to the log; returns its path."""
        from mixbatch.store import write_json_atomic

        out = summary_path(self.path)
        write_json_atomic(out, summary)
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of an audit log, checked; a bad line raises :class:`DataError` naming it."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not {"step", "rank", "row", "segments", "pad"} <= set(rec):
                raise DataError(f"{path}:{i}: not an audit record (needs step, rank, row, "
                                "segments, pad)")
            yield rec
