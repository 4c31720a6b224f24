"""The checkpoint of an online run: one ``torch.save`` dict, written atomically.

Keys: ``format``, ``step`` (steps done), ``run`` (the settings its continuation must share),
:meth:`mixbatch.proxy.Trainer.state_dict`'s, ``policy`` (None for a static mixture),
``overhead`` (tokens spent on reference and probe runs), ``fed_at_feedback`` (tokens fed per
source when the policy last observed). It loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixbatch.atomic import atomic_path
from mixbatch.errors import StateError

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "check_same_run", "load_checkpoint",
           "load_torch", "save_torch"]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "mixbatch.online.checkpoint/2"
_KEYS = ("step", "run", "loader", "policy", "model", "optimizer", "trained_tokens", "history",
         "overhead", "fed_at_feedback")


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`mixbatch.atomic.atomic_path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | Path, error: type[Exception], where: str, bad: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file raises
    ``error`` naming ``where`` and, when unreadable, ``bad`` (what the file is not)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{where}: file not found") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise error(f"{where}: {bad} ({e})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    ck = load_torch(path, StateError, str(path), "corrupt checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise StateError(f"{path}: not an online-run checkpoint (format {got!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    missing = [k for k in _KEYS if k not in ck]
    if missing:
        raise StateError(f"{path}: malformed checkpoint (no {missing[0]!r})")
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
