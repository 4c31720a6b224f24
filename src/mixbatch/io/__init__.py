"""Readers of raw text data: JSON Lines (plain, gzip, zstd), Parquet, Arrow IPC and text.

A source's path patterns become files (:func:`expand_paths`), files become read units that
worker processes share (:func:`plan_units`), and a unit becomes batches of document texts
(:func:`iter_texts`), or of texts with their records' second lengths (:func:`iter_records`,
:class:`SecondValues`). Bad records raise or are counted in a :class:`SkipCounter`.

Paths may be URLs of object storage (:mod:`mixbatch.io.fs`, :class:`RemotePath`); token stores
on object storage are read through a verified local cache (:mod:`mixbatch.store_remote`,
:class:`CacheSettings`); ``datasets`` objects become sources with :func:`dataset_source`.
"""

from mixbatch.io.cache import CacheSettings
from mixbatch.io.files import ReadUnit, expand_paths, infer_format, plan_units
from mixbatch.io.formats import Format, OnError, Split
from mixbatch.io.fs import RemotePath
from mixbatch.io.hf_datasets import dataset_source
from mixbatch.io.readers import iter_records, iter_texts
from mixbatch.io.retry import RemoteError, RetryPolicy
from mixbatch.io.second import SecondValues
from mixbatch.io.skips import SkipCounter

__all__ = [
    "CacheSettings",
    "Format",
    "OnError",
    "ReadUnit",
    "RemoteError",
    "RemotePath",
    "RetryPolicy",
    "SecondValues",
    "SkipCounter",
    "Split",
    "dataset_source",
    "expand_paths",
    "infer_format",
    "iter_records",
    "iter_texts",
    "plan_units",
]
