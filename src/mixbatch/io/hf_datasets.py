"""Hugging Face ``datasets`` objects and dataset names as sources (Python API).

:func:`dataset_source` turns a ``datasets.Dataset``, ``IterableDataset``, ``DatasetDict`` (with
``split``) or a dataset name/path (loaded with ``datasets.load_dataset``/``load_from_disk``)
into the ``sources:`` entry of a config, so the usual ``prepare`` reads it:

- a ``Dataset`` backed by Arrow files, unfiltered and unreordered (what ``load_dataset``,
  ``load_from_disk`` and ``save_to_disk`` give), is read **in place** from those files;
- any other dataset (in memory, after ``select``/``shuffle``/``filter`` with an indices mapping,
  or an ``IterableDataset``, which streams) is written once, batch by batch in bounded memory,
  to Parquet files under ``folder`` (the ``text_field`` column, and ``second_field`` if given),
  committed by rename; a ``Dataset`` is keyed by its fingerprint, so the same dataset is
  written once, while an ``IterableDataset`` has no fingerprint and is written again each call.

``datasets`` is needed only for this module (``pip install datasets``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from mixbatch.errors import ConfigError, DataError
from mixbatch.io.cache import default_cache_dir

ROWS_PER_FILE = 1 << 20


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("Hugging Face dataset sources need the 'datasets' package: "
                          "pip install datasets") from None
    return datasets


def load(name: str, split: str | None = None, streaming: bool = False, **kwargs: Any) -> Any:
    """A dataset by name or path: a ``save_to_disk`` folder (``load_from_disk``), else
    ``datasets.load_dataset(name, split=split, streaming=streaming, **kwargs)``."""
    ds_mod = _datasets()
    folder = Path(name).expanduser()
    if folder.is_dir() and ((folder / "state.json").is_file()
                            or (folder / "dataset_dict.json").is_file()):
        ds = ds_mod.load_from_disk(str(folder))
    else:
        try:
            ds = ds_mod.load_dataset(name, split=split, streaming=streaming, **kwargs)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"dataset {name!r}: {' '.join(str(e).split())[:300]}") from None
    return ds


def dataset_source(data: Any, *, column: str = "text", split: str | None = None,
                   second_field: str | None = None, folder: str | os.PathLike[str] | None = None,
                   load_kwargs: dict[str, Any] | None = None, **source: Any) -> dict[str, Any]:
    """The ``sources:`` entry that reads ``data`` (see the module docstring).

    ``column`` is the text column; ``load_kwargs`` go to ``datasets.load_dataset`` when
    ``data`` is a name; extra keyword arguments (``max_epochs``, ``on_error``...) go into the
    entry as they are.
    """
    ds_mod = _datasets()
    if isinstance(data, str | os.PathLike):
        data = load(str(data), split=split, **(load_kwargs or {}))
    if isinstance(data, ds_mod.DatasetDict | ds_mod.IterableDatasetDict):
        if split is None:
            raise ConfigError(f"a DatasetDict needs `split` (one of {', '.join(data)})")
        if split not in data:
            raise ConfigError(f"split {split!r} is not in the dataset (splits: {', '.join(data)})")
        data = data[split]
    columns = [column] + ([second_field] if second_field and second_field != column else [])
    names = getattr(data, "column_names", None)
    if names is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigError(f"dataset has no column {missing[0]!r} (columns: {', '.join(names)})")
    entry: dict[str, Any] = {"text_field": column, **source}
    if second_field is not None:
        entry["second_field"] = second_field
    if isinstance(data, ds_mod.Dataset):
        files = [f["filename"] for f in data.cache_files]
        if files and data._indices is None:
            return {"path": files, "format": "arrow", **entry}
        key = f"{data._fingerprint}-{'-'.join(columns)}"
    elif isinstance(data, ds_mod.IterableDataset):
        key = None
    else:
        raise ConfigError(f"expected a datasets.Dataset, IterableDataset, DatasetDict or a dataset "
                          f"name, got {type(data).__name__}")
    out = _write_parquet(data, columns, key, folder)
    return {"path": str(out), "format": "parquet", **entry}


def _write_parquet(data: Any, columns: list[str], key: str | None,
                   folder: str | os.PathLike[str] | None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = Path(folder) if folder is not None else default_cache_dir() / "datasets"
    name = key or hashlib.blake2b(os.urandom(16), digest_size=8).hexdigest()
    out = base / name
    if key is not None and (out / "_COMPLETE").is_file():
        return out
    tmp = base / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = None
    part, rows = 0, 0
    try:
        for batch in data.select_columns(columns).iter(batch_size=8192):
            table = pa.table({c: batch[c] for c in columns})
            if writer is None:
                writer = pq.ParquetWriter(tmp / f"part-{part:05d}.parquet", table.schema)
            writer.write_table(table)
            rows += len(table)
            if rows >= ROWS_PER_FILE:
                writer.close()
                writer, part, rows = None, part + 1, 0
        if writer is not None:
            writer.close()
            writer = None
        if not any(tmp.glob("*.parquet")):
            raise DataError("dataset source: the dataset has no rows")
        (tmp / "_COMPLETE").write_text("")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out
