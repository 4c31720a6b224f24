"""What the object-storage tests share: a free port, the corpus texts, and batch comparison."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Wait until a server listens on ``port`` (or its process died: RuntimeError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.array(["the", "a", "of", "data", "mix", "batch", "token", "store", "remote",
                      "cache", "block", "range"])
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 300)))) for _ in range(n)]


#: the corpus every remote test uploads: relative path -> texts
CORPUS = {"web/a.jsonl": (1, 120), "web/b.jsonl": (2, 80), "code/c.jsonl": (3, 90)}


def cfg(tmp, inputs: str | None, store: str | None, **over) -> dict:
    """The config every remote test runs: sources under ``inputs`` (a URL; local files when
    ``None``), the store at ``store`` (a URL; a local folder when ``None``)."""
    root = inputs or str(tmp / "data")
    data = {
        "seed": 3, "tokenizer": "byte", "store": store or str(tmp / "store_local"),
        "sources": {"web": {"path": f"{root}/web/*.jsonl"},
                    "code": {"path": f"{root}/code/c.jsonl", "max_epochs": 3}},
        "mixture": {"unit": "tokens", "weights": {"web": 0.6, "code": 0.4}},
        "batch": {"seq_len": 128, "batch_size": 4, "packing": "bfd"},
        "cache": {"dir": str(tmp / "cache"), "block_bytes": "4KiB", "memory_bytes": "16KiB"},
    }
    data.update(over)
    return data


def batches(loader, n: int) -> list[dict]:
    out = []
    for step in loader.steps(n):
        b = loader.batch_of(step)
        out.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in b.items()})
    return out


def same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), k
