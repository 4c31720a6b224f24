"""How much memory one step takes, checked before anything is allocated.

A step of ``P`` positions (``batch_size × seq_len`` rows of tokens in the fixed-shape modes,
``token_budget`` tokens in the bucketed ones) costs

    step bytes = P × (token bytes + 5 × 8)

the compact ``input_ids`` (at most 4 bytes a token) and the five int64 per-position fields a
batch expands to (``input_ids``, ``labels``, ``position_ids``, ``source_ids``, ``doc_ids``).
The positions planned together cost ``window positions × (token bytes + 8)`` on top (tokens read
at once and one int64 plan entry per position at most): ``64 × batch_size × seq_len`` for
``concat`` (its block of steps), ``pack_window × seq_len`` for ``bfd``, ``window_tokens``
(default ``256 × token_budget``) for ``buckets`` and ``pad_buckets``.

:func:`check_step_memory` refuses a config whose step needs more than the limit, with one line
that names the settings and the bytes: ``batch.max_step_bytes`` when set, else the environment
variable ``MIXBATCH_MAX_STEP_BYTES``, else a quarter of the machine's physical memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mixbatch.errors import ConfigError

__all__ = ["ENV", "StepMemory", "check_step_memory", "default_limit", "step_memory"]

ENV = "MIXBATCH_MAX_STEP_BYTES"
TOKEN_BYTES = 4  # the widest token dtype a store holds (uint32)
FIELD_BYTES = 5 * 8  # input_ids, labels, position_ids, source_ids, doc_ids as int64
PLAN_BYTES = 8  # one int64 plan entry per planned position, at most
# kept here so that config validation imports nothing heavy; a test checks they match
BLOCK_STEPS = 64  # steps planned at once by concat while the weights stay the same
#: the default window of ``buckets`` and ``pad_buckets``, in token budgets (the larger, the fewer
#: part-filled steps; see bench_shaping); shape/window.py reads it from here
WINDOW_BUDGETS = 256
_FALLBACK_MEMORY = 8 << 30  # when the machine does not say how much memory it has


@dataclass(frozen=True)
class StepMemory:
    """Positions and bytes of one step and of its planning window; ``settings`` names what
    sets them (for messages)."""

    step_positions: int
    window_positions: int
    settings: str

    @property
    def step_bytes(self) -> int:
        return self.step_positions * (TOKEN_BYTES + FIELD_BYTES)

    @property
    def window_bytes(self) -> int:
        return self.window_positions * (TOKEN_BYTES + PLAN_BYTES)

    @property
    def total(self) -> int:
        return self.step_bytes + self.window_bytes


def step_memory(batch: Any) -> StepMemory:
    """Positions of a step and of its window for a ``batch`` config section."""
    packing = str(getattr(batch.packing, "value", batch.packing))
    seq_len = int(batch.seq_len)
    if packing in ("buckets", "pad_buckets"):
        step = int(batch.token_budget)
        window = getattr(batch, "window_tokens", None)
        window = int(window) if window is not None else WINDOW_BUDGETS * step
        return StepMemory(step, window, "batch.token_budget / batch.window_tokens")
    step = seq_len * int(batch.batch_size)
    if packing == "bfd":
        return StepMemory(step, int(batch.pack_window) * seq_len,
                          "batch.seq_len × batch.batch_size (× batch.pack_window)")
    window = BLOCK_STEPS * step if packing == "concat" else 0
    return StepMemory(step, window, "batch.seq_len × batch.batch_size")


def physical_memory() -> int:
    """Bytes of physical memory of this machine (8 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return _FALLBACK_MEMORY


def default_limit() -> tuple[int, str]:
    """The limit without ``batch.max_step_bytes``, and where it comes from."""
    raw = os.environ.get(ENV)
    if raw:
        from mixbatch.io.cache import parse_size

        return parse_size(raw.strip(), ENV), ENV
    return physical_memory() // 4, "a quarter of physical memory"


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def check_step_memory(cfg: Any) -> StepMemory:
    """Refuse (:class:`ConfigError`) a config whose step would need more memory than the limit;
    return the estimate otherwise. Reads ``cfg.batch`` and its optional ``max_step_bytes``."""
    batch = cfg.batch
    need = step_memory(batch)
    limit: Any = getattr(batch, "max_step_bytes", None)
    if limit is not None:
        from mixbatch.io.cache import parse_size

        limit, origin = parse_size(limit, "batch.max_step_bytes"), "batch.max_step_bytes"
    else:
        limit, origin = default_limit()
    if need.total > limit:
        raise ConfigError(
            f"{need.settings}: one step needs {_size(need.total)} ({need.step_positions:,} "
            f"positions × {TOKEN_BYTES + FIELD_BYTES} bytes, plus {need.window_positions:,} "
            f"planned together × {TOKEN_BYTES + PLAN_BYTES} bytes), over the limit of "
            f"{_size(limit)} ({origin}); lower them, or raise batch.max_step_bytes or {ENV}")
    return need
