"""Time-series sources: numeric columns into float32 window stores, mixed exactly."""

from mixbatch.series.mix import SeriesMixer
from mixbatch.series.read import read_series
from mixbatch.series.windows import SeriesStore, prepare_series

__all__ = ["SeriesMixer", "SeriesStore", "prepare_series", "read_series"]
