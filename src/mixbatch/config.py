"""The YAML configuration: schema, validation and one-line errors.

Every field is checked by pydantic; a problem becomes a :class:`ConfigError` whose message names
the file and the field (``config.yaml: sources.web.format: ...``) and the command exits with 2.
Relative paths are resolved against the folder of the config file. YAML is read with
``yaml.safe_load``: no tags, no code.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mixbatch.atomic import json_digest
from mixbatch.config_batch import (  # noqa: F401 (re-exported: `from mixbatch.config import X`)
    _TAGS,
    BATCH_CLASSES,
    DEFAULT_BATCH_SIZE,
    BatchConfig,
    BatchSize,
    BatchStage,
    BfdBatch,
    BucketsBatch,
    BudgetStage,
    ConcatBatch,
    Curriculum,
    Packing,
    PadBatch,
    PadBucketsBatch,
    TokenBudget,
    _BatchCommon,
    _FixedRows,
    _StageBound,
    _Strict,
    _TokenBudget,
    wrong_mode,
)
from mixbatch.dedup import DedupConfig
from mixbatch.errors import ConfigError
from mixbatch.io import Format, OnError, Split
from mixbatch.mixup.spec import MixupSpec
from mixbatch.objectives.config import ObjectivesConfig, check_objectives_config
from mixbatch.series.config import SOURCE_TAGS, check_series_config, source_entry


class Unit(str, Enum):
    TOKENS = "tokens"
    SAMPLES = "samples"


class OnExhausted(str, Enum):
    RENORMALIZE = "renormalize"
    STOP = "stop"


class TokenFormat(str, Enum):
    """Token data that is read as it is, without tokenising."""

    MEGATRON = "megatron"
    TOKENS = "tokens"


class SourceConfig(_Strict):
    """One data source: raw text files (tokenised by ``prepare``) or existing token data."""

    path: str | list[str]
    format: Format | TokenFormat | None = None
    text_field: str = "text"
    # a second length per document for 2-D bucketing (`packing: pad_buckets` with
    # `batch.second_buckets`), e.g. a target's length: the record field holding an integer >= 0,
    # a string (its token count) or a list (its length); stored as second_lengths.npy
    second_field: str | None = None
    split: Split = Split.FILE
    on_error: OnError = OnError.FAIL
    max_epochs: float | None = Field(default=None, gt=0)
    # follow symbolic links that lead out of the source's folder (default: skip them, counted)
    follow_symlinks: bool = False
    # only for `format: tokens` (flat .npy/.bin token arrays split at an end-of-document token)
    dtype: Literal["uint16", "uint32", "int32", "int64"] | None = None
    eod_id: int | None = Field(default=None, ge=0)

    @property
    def patterns(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @field_validator("path")
    @classmethod
    def _url_schemes(cls, v: str | list[str]) -> str | list[str]:
        _check_url_paths([v] if isinstance(v, str) else v)
        return v

    @property
    def is_token_data(self) -> bool:
        return isinstance(self.format, TokenFormat)

    @model_validator(mode="after")
    def _token_fields(self) -> SourceConfig:
        if self.format == TokenFormat.TOKENS and self.eod_id is None:
            raise ValueError("format 'tokens' needs `eod_id`: the token that ends each document")
        if self.second_field is not None and (self.is_token_data or self.format == Format.TEXT):
            raise ValueError(f"`second_field` needs records with fields (jsonl, parquet, arrow); "
                             f"format {self.format.value!r} has none")
        return self


#: one ``sources:`` entry: a text source, or a series source (``kind: series``)
SourceEntry = source_entry(SourceConfig)


class StageConfig(_StageBound):
    weights: dict[str, float]


class MixtureConfig(_Strict):
    unit: Unit = Unit.TOKENS
    weights: dict[str, float] | None = None
    temperature: float | None = Field(default=None, ge=0)
    schedule: list[StageConfig] | None = None
    interpolation: Literal["constant", "linear"] = "constant"
    on_exhausted: OnExhausted = OnExhausted.RENORMALIZE
    shuffle: bool = True
    policy: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MixtureConfig:
        given = [n for n in ("weights", "temperature", "schedule") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of weights, temperature, schedule (got {given})")
        return self


class CacheConfig(_Strict):
    """The local cache of token stores on object storage (``store: s3://...``)."""

    dir: str | None = None  # default: $MIXBATCH_CACHE_DIR or ~/.cache/mixbatch
    max_bytes: int | str = "50GB"  # cap of the cache folder (least recently used go first)
    memory_bytes: int | str = "64MiB"  # blocks kept in each process's memory
    prefetch_threads: int = Field(default=4, ge=1)
    whole: bool = False  # download tokens.bin whole on open instead of by ranges
    block_bytes: int | str = "1MiB"  # verified range of the stores prepare writes to a URL
    verify_cached: bool = False  # hash cached blocks again when first read by a process

    @field_validator("max_bytes", "memory_bytes", "block_bytes")
    @classmethod
    def _size(cls, v: int | str) -> int:
        from mixbatch.io.cache import parse_size

        try:
            return parse_size(v, "size")
        except ConfigError:
            raise ValueError("expected a size such as 20GB or 512MiB") from None


def _block_bytes(value: int | str) -> int:
    from mixbatch.io.cache import parse_size

    n = parse_size(value, "cache.block_bytes")
    if n < 8 or n % 8:
        raise ConfigError(f"cache.block_bytes: {n} is not a positive multiple of 8 bytes")
    return n


def _check_url_paths(paths: list[str]) -> None:
    """A URL's scheme must be one fsspec reads (its backend is checked when it is used)."""
    from mixbatch.io.fs import check_scheme

    for p in paths:
        if isinstance(p, str) and "://" in p and not p.startswith("file://"):
            try:
                check_scheme(p)
            except ConfigError as e:
                raise ValueError(str(e)) from None


class Config(_Strict):
    seed: int = 0
    tokenizer: str = "byte"
    eod_token: str | None = None
    store: str = "./store"
    # documents of each source held out for validation (a fraction, at least 1 when > 0)
    holdout: float = Field(default=0.0, ge=0, lt=1)
    holdout_max: int = Field(default=256, ge=1)
    sources: dict[str, SourceEntry]
    # drop exact / near duplicates at prepare time (mixbatch.dedup); none when absent
    dedup: DedupConfig | None = None
    mixture: MixtureConfig = MixtureConfig()
    batch: BatchConfig = ConcatBatch()
    # sample mixing inside each batch (MixUp, CutMix, ...), applied by mixbatch.mixup.BatchMixer
    mixup: MixupSpec | None = None
    # objectives per sample (UL2's denoisers), assigned by the loader (mixbatch.objectives)
    objectives: ObjectivesConfig | None = None
    # local cache of a store on object storage (`store: s3://...`)
    cache: CacheConfig | None = None
    # folder of the config file; relative paths are resolved against it
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        _check_url_paths([v])
        return v

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, v: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        if not v:
            raise ValueError("declare at least one source")
        for name in v:
            if not name or "/" in name or "\0" in name or name.startswith("."):
                raise ValueError(f"source name {name!r} must be a plain folder name")
            if len(name.encode("utf-8")) > 255:
                raise ValueError(f"source name {name[:40]!r}... is {len(name.encode())} bytes "
                                 "long; a folder name holds at most 255")
        return v

    @model_validator(mode="after")
    def _policy(self) -> Config:
        if self.mixture.policy is not None:
            # the schema of `mixture.policy` (settings and training-loop keys), pure Python
            from mixbatch.mixture.policies.spec import parse_policy

            parse_policy(dict(self.mixture.policy), list(self.sources))
        return self

    @model_validator(mode="after")
    def _series(self) -> Config:
        check_series_config(self)  # series sources: one kind per config, text-only settings
        check_objectives_config(self)  # objectives: the settings they cannot go with
        return self

    @model_validator(mode="after")
    def _step_fits(self) -> Config:
        from mixbatch.limits import check_step_memory

        # one step's bytes against the limit, before anything exists (the largest step of a
        # schedule; the loader checks again at its world size)
        b = self.batch
        update = ({"token_budget": b.largest_budget} if isinstance(b, _TokenBudget)
                  else {"batch_size": b.step_positions // b.seq_len})
        check_step_memory(self.model_copy(update={"batch": b.model_copy(update=update)}))
        return self

    @model_validator(mode="after")
    def _known_sources(self) -> Config:
        known = set(self.sources)
        named: list[tuple[str, dict[str, float]]] = []
        if self.mixture.weights is not None:
            named.append(("mixture.weights", self.mixture.weights))
        for k, stage in enumerate(self.mixture.schedule or []):
            named.append((f"mixture.schedule.{k}.weights", stage.weights))
        for where, weights in named:
            for name in weights:
                if name not in known:
                    raise ValueError(
                        f"{where}: weight for undeclared source {name!r} "
                        f"(declared: {', '.join(sorted(known))})"
                    )
        return self

    def holdout_docs(self, n_docs: int) -> int:
        """How many of a source's ``n_docs`` documents are held out for validation."""
        if self.holdout <= 0 or n_docs < 2:
            return 0
        return int(min(max(1, round(self.holdout * n_docs)), self.holdout_max, n_docs - 1))

    # ---- derived paths -------------------------------------------------------------------
    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def store_dir(self) -> Path:
        """The store folder; for a URL a :class:`~mixbatch.io.fs.RemotePath` that carries the
        ``cache`` settings (``cfg.store_dir / name`` keeps them)."""
        from mixbatch.io.fs import RemotePath, is_url

        if is_url(self.store):
            return RemotePath(self.store, self.cache_settings())  # type: ignore[return-value]
        return self.resolve(self.store)

    def cache_settings(self) -> Any:
        """The :class:`~mixbatch.io.cache.CacheSettings` of the ``cache`` section."""
        from mixbatch.io.cache import CacheSettings, default_cache_dir, parse_size

        c = self.cache or CacheConfig()
        return CacheSettings(dir=self.resolve(c.dir) if c.dir else default_cache_dir(),
                             max_bytes=parse_size(c.max_bytes, "cache.max_bytes"),
                             memory_bytes=parse_size(c.memory_bytes, "cache.memory_bytes"),
                             prefetch_threads=c.prefetch_threads, whole=c.whole,
                             block_bytes=_block_bytes(c.block_bytes),
                             verify_cached=c.verify_cached)

    @property
    def tokenizer_path(self) -> Path | None:
        return None if self.tokenizer == "byte" else self.resolve(self.tokenizer)

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the named top-level sections (all if none)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        return json_digest(data)


#: a union member's tag in an error's location (``str-enum[Format]``, ``function-after[...]``):
#: pydantic's, not a key the user wrote
_TAG = re.compile(r"[a-z][a-z-]*\[.*\]|function-.*")


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _TAG.fullmatch(p)))


def _merge_enums(errors: list[Any]) -> list[Any]:
    """The enum members of one union (``format``: a text format or a token format) as one
    error listing every accepted value."""
    out: list[Any] = []
    seen: dict[str, Any] = {}
    for e in errors:
        key = _loc(e["loc"])
        if e["type"] == "enum" and key in seen:
            first = seen[key]
            first["ctx"]["expected"] += ", " + e["ctx"]["expected"]
            *head, last = first["ctx"]["expected"].replace(" or ", ", ").split(", ")
            first["msg"] = f"Input should be {', '.join(head)} or {last}"
            continue
        if e["type"] == "enum":
            seen[key] = e = {**e, "ctx": dict(e.get("ctx") or {})}
        out.append(e)
    return out


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: ``origin: field.path: message (got VALUE)``."""
    lines = []
    for e in _merge_enums(err.errors(include_url=False)):
        parts = tuple(p for p in e["loc"] if p not in (*_TAGS, *SOURCE_TAGS))
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        at = parts.index("batch") if "batch" in parts else -1
        if at >= 0 and len(parts) > at + 1 and parts[at + 1] in {p.value for p in Packing}:
            mode = parts[at + 1]  # the union's tag: not a key the user wrote
            parts = parts[:at + 1] + parts[at + 2:]
            if e["type"] == "extra_forbidden" and len(parts) == at + 2:
                msg = wrong_mode(str(parts[-1]), mode)
        elif e["type"] == "packing":  # no such packing mode: point at the key
            parts = (*parts, "packing")
            value = value.get("packing") if isinstance(value, dict) else value
        loc = _loc(parts)
        if e["type"] == "extra_forbidden" and not msg.startswith("not a setting"):
            msg = "unknown key"
        got = ""
        if loc and e["type"] not in ("extra_forbidden", "missing") and "input" in e:
            text = repr(value)
            got = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
        lines.append(f"{origin}: {loc + ': ' if loc else ''}{msg}{got}")
    return "\n".join(dict.fromkeys(lines))


def config_from_dict(data: Any, origin: str = "<config>", base_dir: Path | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the config must be a mapping of keys, got {type(data).__name__}")
    if "base_dir" in data:
        raise ConfigError(f"{origin}: base_dir: unknown key")
    try:
        cfg = Config.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    return config_from_dict(data, str(path), path.resolve().parent)
