"""The settings of a proxy run (:class:`ProxyConfig`: model shape, optimiser and learning-rate
schedule, device, evaluation; presets ``demo`` for CPUs and ``regmix`` for a GPU) and the
schedule by steps (:func:`lr_at`).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixbatch.config import format_validation_error
from mixbatch.errors import ConfigError
from mixbatch.proxy.model import MlpKind, ModelConfig, PositionKind

__all__ = ["Device", "Optimizer", "ProxyConfig", "Schedule", "by_tokens", "lr_at"]


class Schedule(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"
    WSD = "wsd"  # by tokens: mixbatch.training.lr
    POWER = "power"  # by tokens: mixbatch.training.lr


class Optimizer(str, Enum):
    ADAMW = "adamw"
    LAMB = "lamb"  # mixbatch.training.lamb: layer-wise trust ratio, for large batches


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ProxyConfig(BaseModel):
    """Model shape and optimisation of a proxy run. Defaults: the demo model (CPU, byte tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    n_layer: int = Field(default=2, ge=1)
    d_model: int = Field(default=128, ge=1)
    n_head: int = Field(default=4, ge=1)
    d_mlp: int | None = Field(default=None, ge=1)
    mlp: MlpKind = MlpKind.SWIGLU
    positions: PositionKind = PositionKind.ROTARY
    # rows per step and their length (None: the mixbatch config's `batch:`)
    seq_len: int | None = Field(default=None, ge=2)
    batch_size: int | None = Field(default=None, ge=1)
    # optimisation
    optimizer: Optimizer = Optimizer.ADAMW
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    warmup: int = Field(default=20, ge=0)
    schedule: Schedule = Schedule.COSINE
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine ends at lr * min_lr_ratio
    # wsd / power / re-warming follow tokens trained (mixbatch.training.lr.TokenLR): warmup in
    # steps of batch tokens, the final decay's share, re-warming at each mixture stage change
    decay_fraction: float = Field(default=0.1, ge=0, le=1)
    rewarm_tokens: int | None = Field(default=None, ge=1)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    # share of steps retraining the hardest kept batch (mixbatch.training.replay; 0: off)
    replay_rate: float = Field(default=0.0, ge=0, lt=1)
    replay_capacity: int = Field(default=16, ge=1)
    # EMA decay of the noise scale B_simple (mixbatch.training.noise; two or more ranks)
    noise_beta: float | None = Field(default=None, ge=0, lt=1)
    # where
    device: Device = Device.AUTO
    # mixed precision (proxy.evaluate.amp_dtype): None (auto) bf16 autocast on a CUDA GPU that
    # has it, float32 on CPUs; true: bf16 autocast on any device, CPUs too (an error on a GPU
    # without bf16); false: float32. Parameters, optimiser state and the loss stay float32.
    bf16: bool | None = None
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads during the run
    co2_g_per_kwh: float | None = Field(default=None, ge=0)  # grid intensity for the CO2 figure
    # evaluation
    eval_every: int | None = Field(default=None, ge=1)  # also always at the end
    eval_tokens: int = Field(default=16_384, ge=2)  # held-out tokens read per source
    eval_batch_rows: int = Field(default=32, ge=1)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "proxy") -> ProxyConfig:
        """Validate a mapping (e.g. a YAML section); problems become one-line ConfigErrors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, origin)) from None

    @classmethod
    def demo(cls, **overrides: Any) -> ProxyConfig:
        """About 35 s on 2 quiet CPU cores with byte tokens: 0.4M non-embedding parameters,
        8 x 256 tokens per step, 300 steps (0.6M tokens)."""
        return cls.from_dict({"seq_len": 256, "batch_size": 8, **overrides})

    @classmethod
    def regmix(cls, **overrides: Any) -> ProxyConfig:
        """RegMix's ``tinyllama_1M`` proxy (sail-sg/regmix ``lit_gpt/config.py``, 1.3M
        non-embedding parameters) and its optimiser: constant LR 4e-4 after 100 warm-up steps,
        1000 steps, eval every 100. RegMix's batch is 512 x 2048 tokens: set ``batch:`` (or
        ``seq_len``/``batch_size`` here) to what the GPU holds."""
        return cls.from_dict({"n_layer": 2, "d_model": 256, "n_head": 8, "d_mlp": 512,
                              "steps": 1000, "lr": 4e-4, "warmup": 100,
                              "schedule": "constant", "eval_every": 100, **overrides})

    def model_for(self, vocab_size: int, seq_len: int) -> ModelConfig:
        try:
            return ModelConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=self.n_layer,
                               d_model=self.d_model, n_head=self.n_head, d_mlp=self.d_mlp,
                               mlp=self.mlp, positions=self.positions)
        except ValueError as e:
            raise ConfigError(f"proxy: {e}") from None


def by_tokens(proxy: ProxyConfig) -> bool:
    """Whether the LR follows the tokens trained (:class:`mixbatch.training.lr.TokenLR`)
    rather than the step (:func:`lr_at`)."""
    return proxy.schedule in (Schedule.WSD, Schedule.POWER) or proxy.rewarm_tokens is not None


def lr_at(step: int, proxy: ProxyConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up to ``lr`` over ``warmup`` steps,
    then constant, or cosine decay to ``lr * min_lr_ratio`` at the last step (schedules by
    tokens: see :func:`by_tokens`)."""
    if step < proxy.warmup:
        return proxy.lr * (step + 1) / proxy.warmup
    if proxy.schedule == Schedule.CONSTANT:
        return proxy.lr
    span = max(proxy.steps - 1 - proxy.warmup, 1)
    progress = min(max(step - proxy.warmup, 0) / span, 1.0)
    low = proxy.lr * proxy.min_lr_ratio
    return low + 0.5 * (proxy.lr - low) * (1.0 + math.cos(math.pi * progress))
