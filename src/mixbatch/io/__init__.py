"""Readers of raw text data: JSON Lines (plain, gzip, zstd), Parquet, Arrow IPC and text.

A source's path patterns become files (:func:`expand_paths`), files become read units that
worker processes share (:func:`plan_units`), and a unit becomes batches of document texts
(:func:`iter_texts`), or of texts with their records' second lengths (:func:`iter_records`,
:class:`SecondValues`). Bad records raise or are counted in a :class:`SkipCounter`.
"""

from mixbatch.io.files import ReadUnit, expand_paths, infer_format, plan_units
from mixbatch.io.formats import Format, OnError, Split
from mixbatch.io.readers import iter_records, iter_texts
from mixbatch.io.second import SecondValues
from mixbatch.io.skips import SkipCounter

__all__ = [
    "Format",
    "OnError",
    "ReadUnit",
    "SecondValues",
    "SkipCounter",
    "Split",
    "expand_paths",
    "infer_format",
    "iter_records",
    "iter_texts",
    "plan_units",
]
