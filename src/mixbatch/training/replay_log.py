"""The audit log of a training run that replays hard batches (:mod:`mixbatch.training.replay`).

A fresh step's rows are logged as the stream's step (as ``mixbatch stream`` logs them); a
replayed batch is logged as one replay record naming the step it repeats, never as rows again
(:mod:`mixbatch.audit.log`), so the log still holds the stream once and the mixture can be
counted both ways (:meth:`mixbatch.audit.trace.RunTrace.replay_mixture`).

:class:`AuditHooks` does this through the trainer's hooks; :func:`audit_trained` is the same for
a caller that has its own hooks (it logs one trained step).
"""

from __future__ import annotations

from typing import Any

from mixbatch.audit.log import AuditWriter
from mixbatch.proxy.trainer import Hooks, Step

__all__ = ["AuditHooks", "audit_trained"]


def audit_trained(writer: AuditWriter, step: Step, next_step: int, rank: int) -> None:
    """Log training step ``step``: its rows when fresh, a replay record when it retrains a kept
    batch (``next_step``: the stream's next step, the loader's ``step`` now)."""
    planned = step.planned
    if step.replayed:
        writer.write_replay(next_step, rank, planned.index, step.index)
    else:
        writer.write(planned.plan.select_rows(planned.rows), planned.index, rank, planned)


class AuditHooks(Hooks):
    """Writes every trained step to ``writer`` before its forward (see the module docstring).

    Args:
        writer: the audit log (its header, if any, written by the caller).
        loader: the trainer's loader (its ``step`` is the stream's next step).
        rank: this process's rank.
    """

    def __init__(self, writer: AuditWriter, loader: Any, rank: int = 0) -> None:
        self.writer, self.loader, self.rank = writer, loader, rank

    def before_forward(self, step: Step) -> None:
        audit_trained(self.writer, step, int(self.loader.step), self.rank)
