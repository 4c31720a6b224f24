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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from mixbatch.atomic import json_digest
from mixbatch.dedup import DedupConfig
from mixbatch.errors import ConfigError
from mixbatch.io import Format, OnError, Split
from mixbatch.mixup.spec import MixupSpec
from mixbatch.objectives.config import ObjectivesConfig, check_objectives_config
from mixbatch.series.config import SOURCE_TAGS, check_series_config, source_entry


class Unit(str, Enum):
    TOKENS = "tokens"
    SAMPLES = "samples"


class Packing(str, Enum):
    CONCAT = "concat"
    PAD = "pad"
    BFD = "bfd"
    BUCKETS = "buckets"
    PAD_BUCKETS = "pad_buckets"


class OnExhausted(str, Enum):
    RENORMALIZE = "renormalize"
    STOP = "stop"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


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


class _StageBound(_Strict):
    """Where a stage ends: ``until_step`` or ``until_tokens`` (neither: the open last stage)."""

    until_step: int | None = Field(default=None, ge=1)
    until_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_bound(self) -> _StageBound:
        if self.until_step is not None and self.until_tokens is not None:
            raise ValueError("give `until_step` or `until_tokens`, not both")
        return self


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


class Curriculum(str, Enum):
    UNIFORM = "uniform"
    NATURAL = "natural"
    GROW_P2 = "grow_p2"
    GROW_LINEAR = "grow_linear"


class _BatchCommon(_Strict):
    """Settings of every packing mode. Each mode is its own class below, so a setting given to a
    mode that does not use it is an error (``batch.pack_window: not a setting of packing
    'concat'``), never silently ignored."""

    seq_len: int = Field(default=1024, ge=2)
    # rank balance: cost(s) = s + s^2 / (6 * d_model) per document piece of length s
    balance: bool = True
    d_model: int = Field(default=4096, ge=1)
    # refuse a configuration whose one step would need more bytes than this (default: from
    # $MIXBATCH_MAX_STEP_BYTES, else a share of this machine's memory; see mixbatch.limits)
    max_step_bytes: int | str | None = None

    @field_validator("max_step_bytes")
    @classmethod
    def _step_bytes(cls, v: int | str | None) -> int | None:
        if v is None:
            return None
        from mixbatch.io.cache import parse_size

        try:
            n = parse_size(v, "size")
        except ConfigError:
            raise ValueError("expected a size such as 8GiB or 512MB") from None
        if n < 1:
            raise ValueError("must be at least 1 byte")
        return n

    @property
    def variable_rows(self) -> bool:
        """Whether steps have a varying number of rows (a multiple of ``row_multiple``)."""
        return False

    @property
    def two_d(self) -> bool:
        """Whether documents are bucketed on a second length too (pad_buckets only)."""
        return False

    @property
    def unit_multiple(self) -> int:
        """Document pieces are planned in multiples of this many tokens (buckets: ``min_len``)."""
        return 1

    @property
    def step_positions(self) -> int:
        """Positions of one global step: ``batch_size · seq_len``, or the token budget."""
        raise NotImplementedError


class BatchStage(_StageBound):
    """One stage of a ``batch_size`` schedule (the rule of the mixture's stages)."""

    batch_size: int = Field(ge=1)


DEFAULT_BATCH_SIZE = 8

#: a global batch size: a number of rows, or a schedule of stages (a list)
BatchSize = Annotated[
    Annotated[int, Tag("rows")] | Annotated[list[BatchStage], Tag("stages")],
    Discriminator(lambda v: "stages" if isinstance(v, list) else "rows")]
#: the union's tags: not keys the user wrote (left out of messages)
_TAGS = ("str", "list[str]", "rows", "stages", "budget", "budget_stages")


class _FixedRows(_BatchCommon):
    """The batch size, named for what it counts (README, "batch"): ``global_batch_size`` (or
    its older name ``batch_size``) is the rows of one optimizer step over all ranks and all
    accumulation steps, a number or a schedule of stages; ``micro_batch_size`` the rows of one
    forward on one rank (Hugging Face's and Lightning's per-device batch); ``grad_accum`` the
    loader steps per optimizer step. ``micro × world size × grad_accum = global``; the world
    size is known when the loader starts, where a pair that disagrees is refused."""

    batch_size: BatchSize | None = None
    global_batch_size: BatchSize | None = None
    micro_batch_size: int | None = Field(default=None, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    # the largest global batch a run-time change (`loader.set_batch_size`) may ask for
    # (default: the largest of the schedule)
    max_batch_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        """``batch_size`` mirrors ``global_batch_size`` (older readers use it); the default
        (8 rows) only when neither they nor ``micro_batch_size`` are given."""
        if isinstance(data, dict) and data.get("batch_size") is None:
            size = data.get("global_batch_size")
            if size is None and data.get("micro_batch_size") is None:
                size = DEFAULT_BATCH_SIZE
            if size is not None:
                data = {**data, "batch_size": size}
        return data

    @field_validator("batch_size", "global_batch_size")
    @classmethod
    def _positive(cls, v: int | list[BatchStage] | None) -> int | list[BatchStage] | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 (rows per global step)")
        if isinstance(v, list) and not v:
            raise ValueError("a schedule needs at least one stage")
        return v

    @model_validator(mode="after")
    def _sizes_agree(self) -> _FixedRows:
        a, b = self.batch_size, self.global_batch_size
        if a is not None and b is not None and a != b:
            raise ValueError("batch_size and global_batch_size are the same setting (rows per "
                             f"optimizer step, all ranks) and disagree: {_shown(a)} vs "
                             f"{_shown(b)}; give one")
        size = self.global_size
        if isinstance(size, list) and self.micro_batch_size is not None:
            raise ValueError("micro_batch_size fixes the rows per rank, a batch_size schedule "
                             "changes them: give one of the two")
        from mixbatch.plan.batch_schedule import rows_schedule_from

        try:  # order of the stages, their clock, divisibility by grad_accum
            rows_schedule_from(self.stage_tuples(), self.grad_accum)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("batch.")) from None
        if self.max_batch_size is not None and self.max_batch_size < self.largest_size:
            raise ValueError(f"max_batch_size {self.max_batch_size} is below the schedule's "
                             f"largest batch_size {self.largest_size}")
        return self

    @property
    def global_size(self) -> int | list[BatchStage] | None:
        """``global_batch_size`` or ``batch_size`` as given (None: from ``micro_batch_size``)."""
        return self.global_batch_size if self.global_batch_size is not None else self.batch_size

    def stage_tuples(self, world_size: int = 1) -> list[tuple[int, int | None, int | None]]:
        """The global batch size as stages ``(size, until_step, until_tokens)`` at a world size
        (``micro_batch_size`` alone: ``micro · world_size · grad_accum``)."""
        size = self.global_size
        if size is None:
            assert self.micro_batch_size is not None
            size = self.micro_batch_size * world_size * self.grad_accum
        if isinstance(size, int):
            return [(size, None, None)]
        return [(s.batch_size, s.until_step, s.until_tokens) for s in size]

    @property
    def largest_size(self) -> int:
        """The largest global batch of any stage at world size 1, or ``max_batch_size``."""
        largest = max(s for s, _, _ in self.stage_tuples())
        return max(largest, self.max_batch_size or 0)

    @property
    def step_positions(self) -> int:
        """Positions of the largest loader step at world size 1 (at least what one rank reads
        in any step: the per-rank rows never exceed it)."""
        return self.largest_size // self.grad_accum * self.seq_len


class ConcatBatch(_FixedRows):
    """``concat``: one token line cut into rows of ``seq_len``; documents continue across rows."""

    packing: Literal[Packing.CONCAT] = Packing.CONCAT


class PadBatch(_FixedRows):
    """``pad``: one document (piece) per row, padded to ``seq_len``."""

    packing: Literal[Packing.PAD] = Packing.PAD


class BfdBatch(_FixedRows):
    """``bfd``: documents packed whole into rows by best-fit decreasing over a window."""

    packing: Literal[Packing.BFD] = Packing.BFD
    pack_window: int = Field(default=256, ge=1)  # rows packed together in one window


class BudgetStage(_StageBound):
    """One stage of a ``token_budget`` schedule (the rule of the mixture's stages)."""

    token_budget: int = Field(ge=2)


#: tokens per global step: a number, or a schedule of stages (a list)
TokenBudget = Annotated[
    Annotated[int, Tag("budget")] | Annotated[list[BudgetStage], Tag("budget_stages")],
    Discriminator(lambda v: "budget_stages" if isinstance(v, list) else "budget")]


class _TokenBudget(_BatchCommon):
    # tokens per global step (required; a number or a schedule of stages), and the tokens
    # planned together in one window (default: 256 budgets of the window's budget)
    token_budget: TokenBudget
    window_tokens: int | None = Field(default=None, ge=2)
    # rows per step are a multiple of this; the world size must divide it, so the global stream
    # never depends on the world size
    row_multiple: int = Field(default=8, ge=1)
    # the largest budget a run-time change (`loader.set_token_budget`) may ask for (default:
    # the largest of the schedule)
    max_token_budget: int | None = Field(default=None, ge=2)

    @field_validator("token_budget")
    @classmethod
    def _budget_positive(cls, v: int | list[BudgetStage]) -> int | list[BudgetStage]:
        if isinstance(v, int) and v < 2:
            raise ValueError("must be >= 2 (tokens per global step)")
        if isinstance(v, list) and not v:
            raise ValueError("a schedule needs at least one stage")
        return v

    @model_validator(mode="after")
    def _budget_stages(self) -> _TokenBudget:
        from mixbatch.plan.batch_schedule import budget_schedule_from

        try:  # order of the stages and their clock
            budget_schedule_from(self.budget_tuples())
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("batch.")) from None
        if self.max_token_budget is not None and self.max_token_budget < self.largest_budget:
            raise ValueError(f"max_token_budget {self.max_token_budget} is below the "
                             f"schedule's largest token_budget {self.largest_budget}")
        return self

    def budget_tuples(self) -> list[tuple[int, int | None, int | None]]:
        """The token budget as stages ``(budget, until_step, until_tokens)``."""
        b = self.token_budget
        if isinstance(b, int):
            return [(b, None, None)]
        return [(s.token_budget, s.until_step, s.until_tokens) for s in b]

    @property
    def first_budget(self) -> int:
        """The budget of the first stage (the whole run's, without a schedule)."""
        return self.budget_tuples()[0][0]

    @property
    def largest_budget(self) -> int:
        """The largest budget of any stage, or ``max_token_budget``."""
        return max(max(b for b, _, _ in self.budget_tuples()), self.max_token_budget or 0)

    @property
    def variable_rows(self) -> bool:
        return True

    @property
    def step_positions(self) -> int:
        return self.largest_budget


class BucketsBatch(_TokenBudget):
    """``buckets``: dataset decomposition into pieces of 2^k tokens, one length per step."""

    packing: Literal[Packing.BUCKETS] = Packing.BUCKETS
    min_len: int = Field(default=64, ge=1)  # piece lengths 2^k for min_len <= 2^k <= seq_len
    curriculum: Curriculum = Curriculum.UNIFORM
    cycles: int = Field(default=1, ge=1)

    @property
    def unit_multiple(self) -> int:
        return self.min_len


class PadBucketsBatch(_TokenBudget):
    """``pad_buckets``: documents whole, padded within length buckets, rows per step by cost."""

    packing: Literal[Packing.PAD_BUCKETS] = Packing.PAD_BUCKETS
    num_buckets: int = Field(default=16, ge=1)  # length buckets
    quadratic: float = Field(default=0.0, ge=0)  # the attention term of a row's cost
    # budgets of a bucket's documents sorted by length together (0: stream order)
    sort_pool: int = Field(default=16, ge=0)
    # 2-D: sub-buckets on the documents' second lengths (0: one dimension), the cost of one
    # second-length position, and the longest second length kept (longer: skipped, counted)
    second_buckets: int = Field(default=0, ge=0)
    second_weight: float = Field(default=1.0, ge=0)
    second_max: int | None = Field(default=None, ge=0)

    @property
    def two_d(self) -> bool:
        return self.second_buckets > 0


#: the batch class of each packing mode
BATCH_CLASSES: dict[Packing, type[_BatchCommon]] = {
    Packing.CONCAT: ConcatBatch, Packing.PAD: PadBatch, Packing.BFD: BfdBatch,
    Packing.BUCKETS: BucketsBatch, Packing.PAD_BUCKETS: PadBucketsBatch,
}


def _packing_of(value: Any) -> str | None:
    """The tag of a ``batch`` value: its ``packing`` (``concat`` when not given)."""
    if isinstance(value, dict):
        p = value.get("packing", Packing.CONCAT)
        return p.value if isinstance(p, Packing) else p if isinstance(p, str) else None
    p = getattr(value, "packing", None)
    return p.value if isinstance(p, Packing) else None


BatchConfig = Annotated[
    Annotated[ConcatBatch, Tag("concat")] | Annotated[PadBatch, Tag("pad")]
    | Annotated[BfdBatch, Tag("bfd")] | Annotated[BucketsBatch, Tag("buckets")]
    | Annotated[PadBucketsBatch, Tag("pad_buckets")],
    Discriminator(_packing_of, custom_error_type="packing",
                  custom_error_message="Input should be " + ", ".join(
                      repr(p.value) for p in Packing))]
"""``batch:``: one class per packing mode, chosen by ``packing`` (a tagged union)."""


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


def _shown(size: Any) -> str:
    return str(size) if isinstance(size, int) else f"a schedule of {len(size)} stages"


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


_PACKING_VALUES = {p.value for p in Packing}


def _wrong_mode(key: str, mode: str) -> str:
    """The message for a ``batch`` key that packing ``mode`` does not take."""
    owners = [p.value for p, cls in BATCH_CLASSES.items() if key in cls.model_fields]
    if not owners:
        return "unknown key"
    why = ""
    if key in _FixedRows.model_fields and issubclass(BATCH_CLASSES[Packing(mode)], _TokenBudget):
        why = (f"; a step of {mode!r} has as many rows as fit its token_budget (tokens per "
               "step), so it takes no batch size (token_budget takes a schedule of stages)")
    return (f"not a setting of packing {mode!r} (only of "
            f"{', '.join(repr(o) for o in owners)}){why}; remove it or change `packing`")


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: ``origin: field.path: message (got VALUE)``."""
    lines = []
    for e in _merge_enums(err.errors(include_url=False)):
        parts = tuple(p for p in e["loc"] if p not in (*_TAGS, *SOURCE_TAGS))
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        at = parts.index("batch") if "batch" in parts else -1
        if at >= 0 and len(parts) > at + 1 and parts[at + 1] in _PACKING_VALUES:
            mode = parts[at + 1]  # the union's tag: not a key the user wrote
            parts = parts[:at + 1] + parts[at + 2:]
            if e["type"] == "extra_forbidden" and len(parts) == at + 2:
                msg = _wrong_mode(str(parts[-1]), mode)
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
