"""The files of an online run folder, written as the run goes (rank 0; the audit log per rank).

==================== =========================================================================
file                 contents
==================== =========================================================================
``weights.csv``      one row per step: ``step``, ``weight_<source>`` (the target weights the
                     planner used for that step), ``tokens_<source>`` (real tokens it fed)
``losses.csv``       one row per step: ``step``, ``tokens`` (training tokens after the step),
                     ``train_loss`` and ``train_<source>`` (token-mean loss of the step's batch),
                     ``val_<source>`` and ``val_mean`` (validation loss after the step's update,
                     empty when not evaluated at that step), ``noise_scale`` (B_simple in
                     tokens, when measured: ``proxy.noise_beta`` on two or more ranks)
``updates.csv``      one row per policy update: ``step`` (steps done), ``weight_<source>``
``audit.jsonl``      the rows fed (:class:`mixbatch.audit.AuditWriter`); ``audit.rank<R>.jsonl``
                     per rank when the run is distributed
``summary.json``     settings, final losses, the evaluation history (written at the end)
``checkpoint.pt``    model, optimiser, loader and policy state (:mod:`mixbatch.online.checkpoint`)
==================== =========================================================================

Floats are written with ``repr``, so they read back exactly. Rows are written whole (line
buffered: one ``write`` per line); every file is flushed and ``fsync``-ed before each
checkpoint. A resumed run first cuts every file back to the rows before its checkpoint's step,
then appends: the folder ends up as an uninterrupted run's. A last line without its newline
(the process was killed while writing it) is dropped, never kept: it is counted in
:attr:`RunFiles.torn` (and in the summary's ``torn_lines``), and :func:`read_csv` leaves it
out with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from mixbatch.atomic import write_json, write_text
from mixbatch.audit import AuditWriter
from mixbatch.audit.log import cut_log

if TYPE_CHECKING:
    from mixbatch.proxy.trainer import Step

__all__ = [
    "AUDIT_FILE",
    "LOSSES_FILE",
    "SUMMARY_FILE",
    "UPDATES_FILE",
    "WEIGHTS_FILE",
    "RunFiles",
    "read_csv",
]

WEIGHTS_FILE = "weights.csv"
LOSSES_FILE = "losses.csv"
UPDATES_FILE = "updates.csv"
AUDIT_FILE = "audit.jsonl"
SUMMARY_FILE = "summary.json"


def _num(x: float | int) -> str:
    if isinstance(x, int | np.integer):
        return str(int(x))
    return repr(float(x))


def _whole_lines(path: Path) -> tuple[list[str], int]:
    """The lines of ``path`` that end in a newline, and how many torn lines were dropped (a
    last line without its newline: the run was killed while writing it). A torn line is
    never kept, so the next row written cannot be glued onto it."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    torn = 1 if lines and not lines[-1].endswith("\n") else 0
    return lines[: len(lines) - torn], torn


def _cut(path: Path, keep: Callable[[str], bool], head: int) -> int:
    """Rewrite ``path`` (atomically) with its first ``head`` lines and the whole lines after them
    that ``keep`` accepts; returns the torn lines dropped."""
    if not path.exists():
        return 0
    lines, torn = _whole_lines(path)
    write_text(path, "".join(lines[:head] + [ln for ln in lines[head:]
                                             if ln.strip() and keep(ln)]))
    return torn


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one of the run's CSV files; a torn last row is left out (with a
    warning naming the file)."""
    path = Path(path)
    lines, torn = _whole_lines(path)
    if torn:
        warnings.warn(f"{path}: left out a torn last line (the run was killed while writing it)",
                      stacklevel=2)
    if not lines:
        return [], []
    return lines[0].rstrip("\n").split(","), [ln.rstrip("\n").split(",") for ln in lines[1:]
                                               if ln.strip()]


class RunFiles:
    """Writers of a run folder; with ``run_dir=None`` nothing is written.

    Args:
        run_dir: the folder (created).
        names: source names, in order.
        rank, world_size: this process's place; only rank 0 writes the CSV files.
        resume_step: the step a resumed run continues from (files are cut back to it), or None
            for a fresh run (files are started anew).
        audit: write the audit log.
        noise: ``losses.csv`` has a ``noise_scale`` column.
        stream_step: the loader's step at ``resume_step`` (more training steps than stream
            steps when hard batches are replayed; default: the same).
        header: the audit log's header line (:func:`mixbatch.audit.log.log_header` and the
            objectives' names and weights), written to a new or empty log only.
    """

    def __init__(self, run_dir: Path | None, names: Sequence[str], rank: int = 0,
                 world_size: int = 1, resume_step: int | None = None, audit: bool = True,
                 noise: bool = False, stream_step: int | None = None,
                 header: dict[str, Any] | None = None) -> None:
        log_header = header
        self.dir = run_dir
        self.names = list(names)
        self.rank, self.noise = rank, noise
        self._csv: dict[str, IO[str]] = {}
        self._audit: AuditWriter | None = None
        self.torn: dict[str, int] = {}  # file: torn last lines dropped when resuming
        if run_dir is None:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        headers = {
            WEIGHTS_FILE: ["step", *(f"weight_{n}" for n in names), *(f"tokens_{n}" for n in names)],
            LOSSES_FILE: ["step", "tokens", "train_loss", *(f"train_{n}" for n in names),
                          *(f"val_{n}" for n in names), "val_mean", *(["noise_scale"] * noise)],
            UPDATES_FILE: ["step", *(f"weight_{n}" for n in names)],
        }
        if rank == 0:
            for name, header in headers.items():
                path = run_dir / name
                if resume_step is not None and path.exists():
                    # an update's row carries the steps done, so the checkpoint's own is kept
                    before = resume_step + (name == UPDATES_FILE)
                    self._note(name, _cut(path, lambda ln, b=before: int(ln.split(",", 1)[0]) < b,
                                          1))
                    self._csv[name] = open(path, "a", 1, encoding="utf-8")  # noqa: SIM115
                else:
                    self._csv[name] = open(path, "w", 1, encoding="utf-8")  # noqa: SIM115
                    self._csv[name].write(",".join(header) + "\n")
        if audit:
            path = run_dir / (AUDIT_FILE if world_size == 1 else f"audit.rank{rank}.jsonl")
            if resume_step is not None:  # back to the checkpoint's step, a torn tail dropped
                cut = cut_log(path, resume_step if stream_step is None else stream_step,
                              before_train_step=resume_step)
                self._note(path.name, 1 if cut.torn_bytes else 0)
            self._audit = AuditWriter(path, names, append=resume_step is not None,
                                      header=log_header)

    def _note(self, name: str, torn: int) -> None:
        if torn:
            self.torn[name] = torn

    def _row(self, name: str, values: Sequence[Any]) -> None:
        f = self._csv.get(name)
        if f is not None:
            f.write(",".join("" if v is None else _num(v) for v in values) + "\n")

    def step(self, step: int, weights: np.ndarray, fed: np.ndarray, tokens: int,
             train_mean: float, train: np.ndarray, record: dict[str, Any] | None,
             noise: float | None = None) -> None:
        """The rows of one step in ``weights.csv`` and ``losses.csv`` (``record``: the
        validation after it, if any; ``noise``: written when the file has its column)."""
        self._row(WEIGHTS_FILE, [step, *weights.tolist(), *(int(x) for x in fed)])
        vals: list[Any] = [None] * (len(self.names) + 1)
        if record is not None:
            vals = [record["val_loss"][n] for n in self.names] + [record["val_loss_mean"]]
        self._row(LOSSES_FILE, [step, int(tokens), train_mean, *train.tolist(), *vals,
                                *([noise] * self.noise)])

    def update(self, step: int, weights: np.ndarray) -> None:
        self._row(UPDATES_FILE, [step, *weights.tolist()])

    def audit(self, step: Step, next_step: int, rank: int) -> None:
        """Log trained step ``step``: its rows, or a replay record when it retrains a kept batch
        (``next_step``: the stream's next step)."""
        if self._audit is not None:
            from mixbatch.training.replay_log import audit_trained  # loads torch: not for report

            audit_trained(self._audit, step, next_step, rank)

    def flush(self) -> None:
        """Flush and fsync every file (before a checkpoint: the files then hold every row up to
        its step, whole)."""
        for f in self._csv.values():
            f.flush()
            os.fsync(f.fileno())
        if self._audit is not None:
            self._audit.sync()

    def summary(self, data: dict[str, Any]) -> None:
        if self.dir is not None and self.rank == 0:
            write_json(self.dir / SUMMARY_FILE, data)

    def close(self) -> None:
        for f in self._csv.values():
            f.close()
        self._csv = {}
        if self._audit is not None:
            self._audit.close()
            self._audit = None
