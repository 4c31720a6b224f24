"""Several :class:`~mixbatch.proxy.trainer.Hooks` as one: a run's own hooks (an online policy's)
and what a caller adds (a progress line), called in the order given at each point of a step."""

from __future__ import annotations

from typing import Any

from mixbatch.proxy.trainer import Hooks, Step

__all__ = ["ChainedHooks", "chain_hooks"]


class ChainedHooks(Hooks):
    """Calls each of ``hooks`` in turn at every point of a step."""

    def __init__(self, *hooks: Hooks) -> None:
        self.hooks = hooks

    def before_forward(self, step: Step) -> None:
        for h in self.hooks:
            h.before_forward(step)

    def before_backward(self, step: Step) -> None:
        for h in self.hooks:
            h.before_backward(step)

    def after_update(self, step: Step, record: dict[str, Any] | None) -> None:
        for h in self.hooks:
            h.after_update(step, record)


def chain_hooks(*hooks: Hooks | None) -> Hooks:
    """The hooks given (``None`` left out) as one: the only one itself, several chained."""
    given = [h for h in hooks if h is not None]
    if len(given) == 1:
        return given[0]
    return ChainedHooks(*given)
