"""The checkpoint of an online run: one ``torch.save`` dict, written atomically.

Keys (constant, ``format`` first): ``format``, ``step`` (optimizer steps done), ``run`` (what the
run must share with its continuation: proxy settings, policy, its settings, loop options,
target), :meth:`mixbatch.proxy.Trainer.state_dict`'s ``model``, ``optimizer``, ``loader``
(:meth:`MixedLoader.state_dict`, which carries the policy's current weights as its override)
and ``trained_tokens`` (per source, all ranks), ``policy`` (:meth:`Policy.state_dict`, or None
for a static mixture), ``history`` (the validation records so far), ``overhead`` (tokens spent
on reference and probe runs), ``fed_at_feedback`` (tokens fed per source when the policy last
observed, for the next feedback's ``counts``). It loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixbatch.atomic import atomic_path
from mixbatch.errors import StateError

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "check_same_run", "load_checkpoint", "save_torch"]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "mixbatch.online.checkpoint/2"
_KEYS = ("step", "run", "loader", "policy", "model", "optimizer", "trained_tokens", "history",
         "overhead", "fed_at_feedback")


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`mixbatch.atomic.atomic_path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateError(f"{p}: checkpoint not found") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise StateError(f"{p}: corrupt checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise StateError(f"{p}: not an online-run checkpoint (format {got!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    missing = [k for k in _KEYS if k not in ck]
    if missing:
        raise StateError(f"{p}: malformed checkpoint (no {missing[0]!r})")
    return ck


def check_same_run(saved: dict[str, Any], now: dict[str, Any], path: str | Path) -> None:
    """Refuse to continue a checkpoint under other settings, naming what changed."""
    changed = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            changed.append(key)
    if changed:
        raise StateError(f"{path}: the checkpoint was written with other settings "
                         f"({', '.join(changed)} changed); resume with the same config and "
                         "options, or start a new run folder")
