"""Files that are whole or absent, and digests of JSON-able values: the one place for both.

Every file mixbatch writes for later reading (a store's ``meta.json`` and arrays, a loader
state, a run's checkpoint and CSV files, a search's results) goes through :func:`atomic_path`:
the bytes go to a temporary name in the same folder, are flushed and ``fsync``-ed, and are
renamed over the target (``os.replace`` is atomic on POSIX). A reader sees the old file or the
new one, never a torn one; a failed write leaves the old file and removes the temporary one.

:func:`json_digest` is the one digest of a configuration-like value (settings, fingerprints):
blake2b over canonical JSON (sorted keys, no spaces), ``size`` bytes, as hex.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_path", "finite_or_none", "json_digest", "save_npy", "temp_name", "write_bytes",
           "write_json", "write_text"]


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path``, unique per process and thread, hidden by its dot."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync and tmp.exists():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=True) + "\n")


def save_npy(path: str | Path, arr: np.ndarray) -> None:
    """``np.save`` (never pickled) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) made ``None``, through dicts, lists and
    tuples (tuples become lists): what strict JSON can hold."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def json_digest(obj: Any, size: int = 8) -> str:
    """Hex blake2b of ``obj`` as canonical JSON; values JSON cannot hold are written as text."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(blob, digest_size=size).hexdigest()
