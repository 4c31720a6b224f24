"""The trainer's progress as a :class:`~mixbatch.proxy.trainer.Hooks`: every step of
:meth:`Trainer.run <mixbatch.proxy.trainer.Trainer.run>` updates a
:class:`~mixbatch.progress.StepProgress` line (steps, tokens, loss, tokens/s, ETA, and the
validation loss after an evaluation)."""

from __future__ import annotations

from typing import Any

import torch

from mixbatch.progress import StepProgress
from mixbatch.proxy.trainer import Hooks, Step

__all__ = ["ProgressHooks"]


class ProgressHooks(Hooks):
    """Feeds ``line``: the first step read sets where this call starts (a resumed run's ETA
    and rates count from there), each update adds the real tokens the step fed (all ranks) and
    hands over the step's loss as a tensor (``line`` reads it only when it draws)."""

    def __init__(self, line: StepProgress) -> None:
        self.line = line
        self.tokens = 0
        self.started = False
        self._loss: torch.Tensor | None = None

    def before_forward(self, step: Step) -> None:
        if not self.started:
            self.line.begin(step.index)
            self.started = True

    def before_backward(self, step: Step) -> None:
        if step.out is not None and step.out.losses is not None:
            self._loss = step.out.loss.detach()

    def after_update(self, step: Step, record: dict[str, Any] | None) -> None:
        self.tokens += int(step.fed.sum())
        self.line.update(step.done, self.tokens, self._loss,
                         None if record is None else float(record["val_loss_mean"]))
