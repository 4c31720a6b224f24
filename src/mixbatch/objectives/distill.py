"""Answer and rationale targets as two objectives ("Distilling Step-by-Step! Outperforming Larger
Language Models with Less Training Data and Smaller Model Sizes").

The paper trains one model on two tasks built from each ``(input, answer, rationale)`` record,
told apart by a task prefix on the input, with ``L = L_label + λ·L_rationale``. Here the two
tasks are two objectives; mixing them per sample with weights ``1 : λ``
(:func:`rationale_weights`, for :class:`~mixbatch.objectives.mixer.ObjectiveMixer` or a source
mixture) gives that loss in expectation, up to the factor ``1 + λ``.
"""

from __future__ import annotations

import enum

from mixbatch.checks import real
from mixbatch.errors import DataError

__all__ = ["Task", "rationale_example", "rationale_weights"]


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


def rationale_example(record: dict[str, str], task: Task, where: str = "record") -> tuple[str, str]:
    """``(input, target)`` of ``task`` for a record with ``input``, ``answer``, ``rationale``."""
    for key in ("input", "answer", "rationale"):
        value = record.get(key)
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    target = record["answer"] if task is Task.LABEL else record["rationale"]
    return Task(task).prefix + record["input"], target
