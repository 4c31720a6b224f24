"""The ``batch:`` section of the configuration: one settings class per packing mode.

Split from :mod:`mixbatch.config` (which re-exports every name here): the modes' classes, the
batch size and token budget as numbers or schedules of stages, and the message for a setting
given to a mode that does not take it. Also the base model every config section uses
(``_Strict``) and a stage's bound (``_StageBound``), which the mixture's stages share.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from mixbatch.errors import ConfigError

__all__ = [
    "BATCH_CLASSES",
    "DEFAULT_BATCH_SIZE",
    "BatchConfig",
    "BatchSize",
    "BatchStage",
    "BfdBatch",
    "BucketsBatch",
    "BudgetStage",
    "ConcatBatch",
    "Curriculum",
    "Packing",
    "PadBatch",
    "PadBucketsBatch",
    "TokenBudget",
    "wrong_mode",
]


class Packing(str, Enum):
    CONCAT = "concat"
    PAD = "pad"
    BFD = "bfd"
    BUCKETS = "buckets"
    PAD_BUCKETS = "pad_buckets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class _StageBound(_Strict):
    """Where a stage ends: ``until_step`` or ``until_tokens`` (neither: the open last stage)."""

    until_step: int | None = Field(default=None, ge=1)
    until_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_bound(self) -> _StageBound:
        if self.until_step is not None and self.until_tokens is not None:
            raise ValueError("give `until_step` or `until_tokens`, not both")
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


def _shown(size: Any) -> str:
    return str(size) if isinstance(size, int) else f"a schedule of {len(size)} stages"


_PACKING_VALUES = {p.value for p in Packing}


def wrong_mode(key: str, mode: str) -> str:
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
