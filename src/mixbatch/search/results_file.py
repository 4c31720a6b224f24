"""The results file of a running search: one line per finished proxy run (RegMix §3.1).

::

    index, <source>..., val/<source>..., val/mean, tokens, seconds

(weights as in the design; ``val/<source>`` the token-mean held-out loss of each source;
``val/mean`` the mean over every scored token, which is the mean over sources when each scores
``eval_tokens``; ``tokens`` the tokens trained on; ``seconds`` the run's wall time). Loss
columns contain ``/``, so :func:`~mixbatch.search.results.read_results_csv` reads the file as it
grows and ``mixbatch search fit RESULTS.csv --target val/<source>`` fits on it.

**Resumable.** A line is appended with one ``write`` call as its run finishes (any order), so a
kill leaves whole lines, at worst one cut short, which the next start drops. A restart reads
the finished indices and runs only the others; a results file written for other sources, whose
rows carry other weights than the design, or whose runs used other proxy settings (recorded
beside it in ``<RESULTS>.run.json``), is refused rather than mixed. An exclusive lock keeps
two runners off one file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixbatch.atomic import write_json
from mixbatch.errors import ConfigError
from mixbatch.search.results import DesignRow

__all__ = ["LOSS_PREFIX", "MEAN_COLUMN", "ResultsFile", "RowResult", "check_settings",
           "result_columns", "run_settings"]

LOSS_PREFIX = "val/"
MEAN_COLUMN = "val/mean"
_WEIGHT_TOLERANCE = 1e-9  # a finished row must carry the design row's weights to this
# proxy settings that do not change what a run measures (beyond float rounding)
_RUNTIME_FIELDS = ("threads", "device", "bf16", "eval_every", "eval_batch_rows")


def result_columns(names: Sequence[str]) -> list[str]:
    """The results CSV header for sources ``names``."""
    return ["index", *names, *(LOSS_PREFIX + n for n in names), MEAN_COLUMN, "tokens", "seconds"]


@dataclass(frozen=True)
class RowResult:
    """What one design row's proxy measured."""

    index: int
    weights: dict[str, float]
    val_loss: dict[str, float]
    val_mean: float
    tokens: int
    seconds: float

    def values(self, names: Sequence[str]) -> list[Any]:
        return [self.index, *(self.weights[n] for n in names),
                *(self.val_loss[n] for n in names), self.val_mean, self.tokens, self.seconds]


def _line(values: Sequence[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [repr(v) if isinstance(v, float) and math.isfinite(v) else
         ("nan" if isinstance(v, float) else v) for v in values])
    return buf.getvalue().encode("utf-8")


class ResultsFile:
    """Append-only results CSV: header once, then one ``write`` per finished row."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path = path
        self.names = list(names)
        self.columns = result_columns(names)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._lock()
            self.repaired = self._drop_partial_tail()
            if os.fstat(self.fd).st_size == 0:
                self._write(_line(self.columns))
        except BaseException:
            os.close(self.fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"{self.path}: another process is writing this results file "
                              "(a second `search run` on it?); wait for it or give another "
                              "--out") from None

    def _drop_partial_tail(self) -> bool:
        """Cut a last line left without its newline by a kill; True if one was cut."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return False
        os.lseek(self.fd, max(0, size - 1), os.SEEK_SET)
        if os.read(self.fd, 1) == b"\n":
            return False
        with open(self.path, "rb") as f:
            data = f.read()
        os.ftruncate(self.fd, data.rfind(b"\n") + 1)
        return True

    def finished(self, design: Mapping[int, DesignRow]) -> dict[int, RowResult]:
        """Rows already in the file, checked against this run's columns and design."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return {}
        header = [h.strip() for h in rows[0]]
        if header != self.columns:
            raise ConfigError(
                f"{self.path}: its columns ({', '.join(header[:8])}"
                f"{', ...' if len(header) > 8 else ''}) are not this run's "
                f"({', '.join(self.columns[:8])}{', ...' if len(self.columns) > 8 else ''}): it "
                "holds another search; give another --out, or delete it to start over")
        done: dict[int, RowResult] = {}
        k = len(self.names)
        for line_no, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            where = f"{self.path}:{line_no}"
            if len(row) != len(header):
                raise ConfigError(f"{where}: {len(row)} fields, the header has {len(header)}")
            try:
                idx = int(row[0])
                nums = [float(x) for x in row[1:]]
            except ValueError:
                raise ConfigError(f"{where}: not a results row: {','.join(row)[:80]!r}") from None
            if idx in done:
                raise ConfigError(f"{where}: design row {idx} appears twice in the results")
            if idx not in design:
                raise ConfigError(f"{where}: row index {idx} is not in the design: the results "
                                  "file belongs to another design (give another --out)")
            weights = dict(zip(self.names, nums[:k], strict=True))
            want = design[idx].weights
            if any(abs(weights[n] - want[n]) > _WEIGHT_TOLERANCE for n in self.names):
                raise ConfigError(f"{where}: row index {idx} has other weights than design row "
                                  f"{idx}: the results file belongs to another design (give "
                                  "another --out)")
            done[idx] = RowResult(idx, weights, dict(zip(self.names, nums[k:2 * k], strict=True)),
                                  nums[2 * k], int(nums[2 * k + 1]), nums[2 * k + 2])
        return done

    def _write(self, data: bytes) -> None:
        n = os.write(self.fd, data)  # O_APPEND: one write lands whole at the end
        if n != len(data):  # pragma: no cover - regular files do not write short
            raise OSError(f"{self.path}: short write ({n} of {len(data)} bytes)")

    def append(self, result: RowResult) -> None:
        self._write(_line(result.values(self.names)))

    def close(self) -> None:
        os.close(self.fd)


def run_settings(cfg: Any, proxy: Any) -> dict[str, Any]:
    """What a results row depends on besides its weights: the proxy's settings and the parts
    of the config that change the data or the scores. Written to ``<RESULTS>.run.json``."""
    p = proxy.model_dump(mode="json")
    return {
        "proxy": {k: v for k, v in p.items() if k not in _RUNTIME_FIELDS},
        "config": {"seed": cfg.seed, "tokenizer": cfg.tokenizer, "holdout": cfg.holdout,
                   "holdout_max": cfg.holdout_max, "unit": cfg.mixture.unit.value,
                   "batch": cfg.batch.model_dump(mode="json")},
    }


def _settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def check_settings(out: Path, settings: dict[str, Any], has_rows: bool) -> None:
    """Refuse to add runs made with other settings to a results file; record ours otherwise.

    A file without rows takes the new settings whatever was recorded before."""
    path = _settings_path(out)
    if has_rows and path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the settings of the earlier runs ({e}); "
                              "delete it to accept them as they are") from None
        diff = [f"{part}.{k}: {old.get(part, {}).get(k)!r} then, {v!r} now"
                for part in ("proxy", "config") for k, v in settings[part].items()
                if old.get(part, {}).get(k) != v]
        if diff:
            raise ConfigError(f"{out}: its runs were made with other settings "
                              f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); give "
                              "another --out, or delete it and its .run.json to start over")
        return
    write_json(path, settings)
