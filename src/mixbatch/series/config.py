"""Series sources in the config: ``sources: {NAME: {kind: series, ...}}``.

::

    sources:
      air:
        kind: series
        path: data/air.csv          # .csv or .parquet; a glob or a list of them
        columns: [passengers]       # default: every column but group_by
        group_by: null              # one series per column and value of this column
        on_error: skip              # a column not numeric / a series with NaNs: skip, counted
        context: 64
        horizon: 16
        stride: 1

``mixbatch prepare`` turns each into a float32 window store with per-series normalisation
statistics (:func:`mixbatch.series.prepare_series`); ``stream`` and
:class:`mixbatch.series.loader.SeriesDataLoader` mix them with the mixture's weights
(``mixture.weights`` or ``temperature``, in windows), exactly. A config holds series sources
or text sources, never both (one clear line); every series source has the same
``context`` and ``horizon``; schedules, policies, objectives, dedup and token-budget packings
are text-only and refused with a line naming the setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from mixbatch.io import OnError

__all__ = ["SOURCE_TAGS", "SeriesSourceConfig", "check_series_config", "is_series_config",
           "reject_series", "source_entry"]

#: the union tags of a source entry (dropped from error locations)
SOURCE_TAGS = ("text-source", "series-source")
#: settings and properties of text sources that commands reading text ask a source for
TEXT_ONLY = frozenset({"format", "text_field", "second_field", "split", "max_epochs",
                       "follow_symlinks", "dtype", "eod_id", "is_token_data"})


class SeriesSourceConfig(BaseModel):
    """One series source: numeric columns of CSV or Parquet files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["series"]
    path: str | list[str]
    columns: list[str] | None = None
    group_by: str | None = None
    on_error: OnError = OnError.FAIL
    context: int = Field(ge=1)
    horizon: int = Field(ge=1)
    stride: int = Field(default=1, ge=1)

    @property
    def patterns(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    def __getattr__(self, item: str) -> Any:
        if item in TEXT_ONLY:  # a command that reads text sources: one line, not a traceback
            from mixbatch.errors import ConfigError

            raise ConfigError(f"sources: a series source has no {item!r}; this command reads "
                              "text sources (series: `mixbatch prepare`, `mixbatch stream`, "
                              "SeriesLoader, SeriesDataLoader)")
        return super().__getattr__(item)  # type: ignore[misc]


def _kind(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    if kind is None:
        return "text-source"
    return "series-source" if kind == "series" else None


def source_entry(text_source: type[BaseModel]) -> Any:
    """The type of one ``sources:`` entry: ``text_source``, or a series source (``kind:
    series``)."""
    return Annotated[
        Annotated[text_source, Tag("text-source")]
        | Annotated[SeriesSourceConfig, Tag("series-source")],
        Discriminator(_kind, custom_error_type="kind",
                      custom_error_message="kind: expected 'series' (text sources have no kind)")]


def is_series_config(cfg: Any) -> bool:
    """Whether ``cfg``'s sources are series sources (a valid config has one kind only)."""
    return any(isinstance(s, SeriesSourceConfig) for s in cfg.sources.values())


def check_series_config(cfg: Any) -> None:
    """The settings a config of series sources may not have; ``ValueError`` (pydantic's) with
    the first problem."""
    series = [n for n, s in cfg.sources.items() if isinstance(s, SeriesSourceConfig)]
    if not series:
        return
    text = [n for n in cfg.sources if n not in series]
    if text:
        raise ValueError(f"sources: series sources ({', '.join(series)}) and text sources "
                         f"({', '.join(text)}) cannot be mixed in one config; use two configs")
    shapes = {n: (cfg.sources[n].context, cfg.sources[n].horizon) for n in series}
    if len(set(shapes.values())) > 1:
        raise ValueError("sources: series sources need one (context, horizon), got "
                         + ", ".join(f"{n}: {c}" for n, c in shapes.items()))
    m = cfg.mixture
    for name, value in (("mixture.schedule", m.schedule), ("mixture.policy", m.policy),
                        ("objectives", getattr(cfg, "objectives", None)),
                        ("dedup", cfg.dedup), ("mixup", cfg.mixup)):
        if value is not None:
            raise ValueError(f"{name}: not available for series sources (text sources only)")
    if cfg.holdout > 0:
        raise ValueError("holdout: holds documents out of text sources; series sources "
                         "have none (give held-out series as a config of their own)")
    if cfg.batch.variable_rows:
        raise ValueError(f"batch.packing: {cfg.batch.packing.value!r} packs tokens; series "
                         "sources take `batch_size` windows a step (packing concat or pad)")


def reject_series(cfg: Any, what: str) -> None:
    """A :class:`~mixbatch.errors.ConfigError` when ``cfg`` has series sources: ``what`` (e.g.
    "the token loader") reads text sources only."""
    if is_series_config(cfg):
        from mixbatch.errors import ConfigError

        raise ConfigError(f"sources: {', '.join(cfg.sources)} are series sources; {what} reads "
                          "text sources (series: mixbatch.series.loader.SeriesLoader, "
                          "SeriesDataLoader, `mixbatch stream`)")
