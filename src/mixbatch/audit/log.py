"""The audit log: one JSON object per sequence row that a rank was fed.

``{"step": int, "rank": int, "row": int, "segments": [[source, doc, start, end], ...],
"eod": [0 or 1, ...], "pad": int}``

With ``objectives:`` a row also has ``"objective": name`` (the denoiser it was turned into).
``row`` is the row's index in the rank's micro-batch, ``doc`` the document's index in its source
store and ``[start, end)`` the span of its tokens placed in the row. ``eod[k]`` is 1 where
segment ``k`` ends its document: the row holds the end-of-document token right after the span.
So every row's width is exact: ``Σ (end - start) + Σ eod + pad`` is the row's length
(``seq_len``, or the bucket's width). Logs of format 1 (before ``eod``) lack the key; their
readers treat it as unknown. Everything a report or a check needs can be rebuilt from this file
offline.

Segments and training targets: a segment's first position is never a target (its label is
ignored; nothing before it in the row is of its document). So an end token never opens a
segment alone (concat, bfd): where a row boundary falls right before a document's end token,
the next segment is ``[n - 1, n)`` with ``eod`` 1, the document's last token again (it was the
previous segment's last; here it is only the end token's context) and the end token. That
token is counted in both segments (it is fed twice, trained once). A segment with
``start == end`` and ``eod`` 1 is an empty document. In concat a one-token document never
starts in a row's last position (its end token would open the next row): such a row ends in
one position of padding.

Three more kinds of line, skipped by :func:`read_audit_log` (which yields row records only;
:func:`iter_log` yields all four). The header and step records are written by ``mixbatch
stream --emit``; replay records by a training run that replays hard batches
(:class:`mixbatch.training.replay_log.AuditHooks`):

- a header, the file's first line: ``{"audit_log": 2, "sources": [...], "documents": [...],
  "store_documents": [...], "identity": ..., "unit": ..., "packing": ..., "seq_len": ...,
  "d_model": ..., "world_size": ..., "rank": ...}`` (:func:`log_header`; ``documents``: those
  the run draws from, held-out ones excluded): what the report needs to know about the run
  without its config, and a digest of the data-defining config sections to tell a log from
  another config;
- one step record per step and rank after its rows: ``{"step", "rank", "weights": [...],
  "truncated", "seq_len", "global_rows", "global_tokens", "global_pad", "cost", "global_cost"}``
  (the target weights the planner used, the global step's totals, and this rank's compute cost
  against the whole step's, cost(s) = s + s²/(6·d_model) per piece);
- one replay record per rank where a training step trained a kept batch again
  (:mod:`mixbatch.training.replay`): ``{"step": s, "rank": r, "replay_of": j,
  "train_step": k}``: training step ``k`` retrained the rows logged under step ``j``; no rows
  are written for it. ``step`` is the stream's step that comes next (the replay sits between
  the rows of steps ``s - 1`` and ``s``); :func:`mixbatch.audit.trace.read_trace` counts the
  mixture with and without replays from these.

A series stream's log (:mod:`mixbatch.series.stream`) has its own header (``"audit_log":
"series/2"``) and rows ``{"step", "rank", "row", "source", "window", "series"}``, which
:func:`iter_log` yields as ``"window"`` records (:mod:`mixbatch.audit.trace_series` reads them).

Next to it, ``<name>.summary.json`` (:func:`summary_path`) holds the run's summary as the
``stream`` command reports it: the mixture per source, padding, truncation, pieces per document,
tokens per step, rank cost imbalance, skipped documents. The loader's counters are part of its
state, so after a resume the summary covers the whole run, not only the resumed part; its
``scope`` says which figures cover what (speed and ``tokens_fed_this_rank``: this call only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
    eod = plan.eod.astype(np.int64).tolist()
    out = []
    for r in range(plan.rows):
        a, b = int(bounds[r]), int(bounds[r + 1])
        segs = [[src[k], doc[k], start[k], end[k]] for k in range(a, b)]
        out.append({"step": step, "rank": rank, "row": r, "segments": segs,
                    "eod": eod[a:b], "pad": int(plan.pad[r])})
    return out


def summary_path(path: str | Path) -> Path:
    """Where the summary of the audit log at ``path`` goes: ``audit.jsonl`` →
    ``audit.summary.json``."""
    return Path(path).with_suffix(".summary.json")


#: version of the header line; bump when a field changes meaning (2: rows carry ``eod``)
LOG_VERSION = 2
#: the config sections that define which rows a run feeds (weights may change on resume)
IDENTITY_SECTIONS = ("seed", "sources", "batch", "holdout", "holdout_max")


def config_identity(cfg: Any) -> str:
    """Digest of the config sections that decide what a run feeds; a log written under another
    config has another identity."""
    return str(cfg.fingerprint(*IDENTITY_SECTIONS))


def log_header(loader: Any) -> dict[str, Any]:
    """The header line of a stream's audit log (see the module docstring)."""
    cfg = loader.cfg
    return {"audit_log": LOG_VERSION, "sources": list(loader.names),
            "documents": [int(o.n_docs) for o in loader.feed.orders],
            "store_documents": [int(o.n_store) for o in loader.feed.orders],
            "identity": config_identity(cfg), "unit": cfg.mixture.unit.value,
            "packing": cfg.batch.packing.value, "seq_len": cfg.batch.seq_len,
            "d_model": cfg.batch.d_model, "world_size": loader.world_size, "rank": loader.rank,
            "seed": cfg.seed}


def piece_cost(tokens: np.ndarray, d_model: int) -> np.ndarray:
    """Compute cost of document pieces of ``tokens`` tokens: s + s²/(6·d_model) (as the rank
    balancer counts it)."""
    s = np.asarray(tokens, dtype=np.float64)
    return s + s * s / (6.0 * d_model)


def step_record(step: Any, rank: int, d_model: int) -> dict[str, Any]:
    """The step record of a loader :class:`~mixbatch.loader.loader.Step` for ``rank``."""
    plan: StepPlan = step.plan
    n_tok = plan.end - plan.start
    cost = piece_cost(plan.width, d_model)  # positions, end tokens included, as the balancer
    mine = np.isin(plan.row, np.asarray(step.rows))
    return {"step": int(step.index), "rank": int(rank),
            "weights": [float(x) for x in np.asarray(step.weights, dtype=np.float64)],
            "truncated": int(plan.truncated), "seq_len": int(plan.seq_len),
            "global_rows": int(plan.rows), "global_tokens": int(n_tok.sum()),
            "global_pad": int(plan.pad.sum()), "cost": float(cost[mine].sum()),
            "global_cost": float(cost.sum())}


def _objectives(rows: list[dict[str, Any]], step: Any) -> list[dict[str, Any]]:
    """``rows`` (this rank's rows of the loader ``step``) with each row's objective."""
    if getattr(step, "objective", None) is not None:
        for record, r in zip(rows, step.rows.tolist(), strict=True):
            record["objective"] = step.objective.name(r)
    return rows


class AuditWriter:
    """Appends the rows of each step to a JSONL file.

    With ``header`` (see :func:`log_header`) a new or empty file starts with that header line;
    :meth:`write_step` also writes each step's record. Each step goes out in one ``write`` of
    whole lines and is flushed; :meth:`sync` also ``fsync``-s, which a run does before it saves
    a state, so that the log on disk always reaches the saved step (a kill can leave more rows
    than the state, never fewer: :func:`cut_log` cuts them on resume).
    """

    def __init__(self, path: str | Path, names: Sequence[str], append: bool = False,
                 header: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.names = list(names)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self._f: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.d_model = int(header["d_model"]) if header else 4096
        if header is not None and fresh:
            self._put([header])

    def _put(self, records: list[dict[str, Any]]) -> None:
        self._f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._f.flush()

    def write(self, plan: StepPlan, step: int, rank: int, planned: Any = None) -> None:
        """The rows of ``plan`` (with ``planned``, the loader step they are the rank's rows of:
        each row's objective too, under ``objectives:``)."""
        self._put(_objectives(rows_of(plan, self.names, step, rank), planned))

    def write_replay(self, step: int, rank: int, replay_of: int, train_step: int) -> None:
        """A replay record (module docstring): training step ``train_step`` retrained the rows
        of step ``replay_of``; ``step`` is the stream's next step."""
        if not 0 <= replay_of < step:
            raise ValueError(f"replay_of: a replay repeats an earlier step (< {step}), got "
                             f"{replay_of}")
        self._put([{"step": int(step), "rank": int(rank), "replay_of": int(replay_of),
                    "train_step": int(train_step)}])

    def write_step(self, step: Any, rank: int) -> None:
        """The rows of ``rank`` in a loader step, then the step's record."""
        rows = _objectives(rows_of(step.plan.select_rows(step.rows), self.names, step.index,
                                   rank), step)
        self._put([*rows, step_record(step, rank, self.d_model)])

    def sync(self) -> None:
        """Flush and ``fsync`` the log: what was written survives a crash of the machine."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write (replace) the run's summary next to the log; returns its path."""
        from mixbatch.atomic import write_json

        out = summary_path(self.path)
        write_json(out, summary)
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class LogCut:
    """What :func:`cut_log` removed: whole records of steps at or after the cut, and the bytes
    of a torn last line (a kill in the middle of a write)."""

    kept: int
    records: int
    torn_bytes: int

    def __str__(self) -> str:
        parts = [f"{self.records} record(s) of steps after the saved state"] if self.records else []
        if self.torn_bytes:
            parts.append(f"a torn last line ({self.torn_bytes} bytes)")
        return " and ".join(parts) or "nothing"


def cut_log(path: str | Path, before_step: int, before_train_step: int | None = None) -> LogCut:
    """Cut the audit log at ``path`` back to the records of steps ``< before_step`` (the header
    stays), dropping a torn last line too; in place, by one ``truncate``. A missing file is
    nothing to cut. A resumed run calls this with its state's step before it appends, so the
    log and the state agree whatever point a kill interrupted.

    A run that replays batches trains more steps than the stream fed: it passes its training
    step too (``before_train_step``), and replay records are then cut by their
    ``train_step`` (two replays between the same stream steps may fall either side of a
    checkpoint)."""
    path = Path(path)
    try:
        f = open(path, "r+b")  # noqa: SIM115
    except FileNotFoundError:
        return LogCut(0, 0, 0)
    except OSError as e:
        raise DataError(f"{path}: cannot open the audit log to cut it back to step "
                        f"{before_step} ({e.strerror or e}); check its permissions") from None
    with f:
        keep_end = 0
        kept = records = torn = 0
        pos = 0
        for i, line in enumerate(f, 1):
            start, pos = pos, pos + len(line)
            if not line.endswith(b"\n"):
                torn = len(line)  # the last line, cut off by a kill
                break
            if records:
                records += 1  # after the cut point everything goes (steps only grow)
                continue
            if not line.strip():
                keep_end = pos
                continue
            try:
                rec = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}:{i}: not JSON ({e}); cannot resume this log") from None
            if isinstance(rec, dict) and "audit_log" in rec:
                keep_end = pos
                continue
            step = rec.get("step") if isinstance(rec, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                raise DataError(f"{path}:{i}: not an audit record (no integer step)")
            late = step >= before_step
            if before_train_step is not None and "replay_of" in rec:
                late = int(rec.get("train_step", step)) >= before_train_step
            if late:
                records = 1
                keep_end = start
                continue
            kept += 1
            keep_end = pos
        if records or torn:
            f.truncate(keep_end)
            f.flush()
            os.fsync(f.fileno())
    return LogCut(kept, records, torn)


ROW_KEYS = frozenset({"step", "rank", "row", "segments", "pad"})
#: a row of a series stream's log (:mod:`mixbatch.series.stream`): one window
WINDOW_KEYS = frozenset({"step", "rank", "row", "source", "window"})
STEP_KEYS = frozenset({"step", "rank", "weights"})
REPLAY_KEYS = frozenset({"step", "rank", "replay_of", "train_step"})


@dataclass
class TornTail:
    """Counts the torn last lines that :func:`iter_log` dropped (0 or 1 per log read)."""

    lines: int = 0
    bytes: int = 0


def iter_log(path: str | Path, torn: TornTail | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(kind, record)`` for every line of an audit log, ``kind`` one of ``"header"``,
    ``"row"``, ``"step"``, ``"replay"``, or ``"window"`` (a series stream's row: source, window,
    series); a bad line raises :class:`DataError` naming it. A cut last line (a kill in the
    middle of a write) says the log is truncated, or, with ``torn``, is dropped and counted
    there: never read as a record, never glued to another."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot read audit log ({e.strerror or e})") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n") and torn is not None:
                    torn.lines += 1
                    torn.bytes += len(line.encode("utf-8"))
                    return
                if not line.endswith("\n"):
                    raise DataError(f"{path}:{i}: truncated audit log (the last line is cut "
                                    "off; was the run killed while writing?)") from None
                raise DataError(f"{path}:{i}: not JSON ({e.msg})") from None
            if isinstance(rec, dict) and "audit_log" in rec:
                if i != 1:
                    raise DataError(f"{path}:{i}: a header line inside the log (two logs "
                                    "concatenated?)")
                yield "header", rec
            elif isinstance(rec, dict) and set(rec) >= ROW_KEYS:
                yield "row", rec
            elif isinstance(rec, dict) and set(rec) >= WINDOW_KEYS:
                yield "window", rec
            elif isinstance(rec, dict) and set(rec) >= STEP_KEYS:
                yield "step", rec
            elif isinstance(rec, dict) and set(rec) >= REPLAY_KEYS:
                yield "replay", rec
            else:
                raise DataError(f"{path}:{i}: not an audit record (needs step, rank, row, "
                                "segments, pad; or a series row's source, window)")


def read_audit_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """Row records of an audit log, checked; a bad line raises :class:`DataError` naming it."""
    for kind, rec in iter_log(path):
        if kind == "row":
            yield rec
