"""Numeric series from CSV or Parquet columns: one series per column, or per column and group.

A column that is not numeric, or a series with missing values (null or NaN), stops with a
one-line :class:`~mixbatch.errors.DataError` naming the file and column (``on_error: fail``), or
is counted in a :class:`~mixbatch.io.skips.SkipCounter` and left out (``on_error: skip``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixbatch.errors import ConfigError, DataError
from mixbatch.io.formats import OnError
from mixbatch.io.skips import SkipCounter

__all__ = ["read_series"]


def _table(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix in (".csv", ".gz"):
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    raise ConfigError(f"{path}: expected a .csv or .parquet file of series")


def read_series(path: str | Path, columns: list[str] | None = None, group_by: str | None = None,
                on_error: OnError | str = OnError.FAIL, skips: SkipCounter | None = None
                ) -> dict[str, np.ndarray]:
    """``{name: float64 values}``: ``column``, or ``column[group]`` with ``group_by``."""
    path = Path(path)
    on_error = OnError(on_error)
    skips = skips if skips is not None else SkipCounter()
    table = _table(path)
    names = table.column_names
    if group_by is not None and group_by not in names:
        raise ConfigError(f"{path}: group_by column {group_by!r} not found (columns: "
                          f"{', '.join(names)})")
    wanted = columns if columns is not None else [c for c in names if c != group_by]
    for c in wanted:
        if c not in names:
            raise ConfigError(f"{path}: column {c!r} not found (columns: {', '.join(names)})")
    if group_by is not None:
        groups = np.asarray(table.column(group_by).to_pandas().astype(str))
        order = np.argsort(groups, kind="stable")
        keys, first = np.unique(groups[order], return_index=True)
        pieces = np.split(order, first[1:])
    else:
        keys, pieces = np.array([""]), [np.arange(table.num_rows)]
    out: dict[str, np.ndarray] = {}
    for c in wanted:
        col = table.column(c)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            _bad(on_error, skips, "not_numeric", f"{path}: column {c!r} is not numeric "
                 f"({col.type})", len(keys))
            continue
        nulls = pc.is_null(col, nan_is_null=True).to_numpy(zero_copy_only=False)
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        for key, rows in zip(keys, pieces, strict=True):
            name = c if group_by is None else f"{c}[{key}]"
            if nulls[rows].any():
                _bad(on_error, skips, "missing_values", f"{path}: series {name!r} has "
                     f"{int(nulls[rows].sum())} missing values (null or NaN)", 1)
                continue
            out[name] = values[rows]
    return out


def _bad(on_error: OnError, skips: SkipCounter, reason: str, message: str, n: int) -> None:
    if on_error is OnError.FAIL:
        raise DataError(f"{message}; on_error: skip counts and skips it")
    skips.add(reason, n, message)
