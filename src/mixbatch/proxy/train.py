"""Train one proxy model on one mixture and report its validation loss per source.

Offline mixture search (RegMix, Liu et al. 2024, arXiv 2407.01492) trains many small proxies,
one per candidate mixture, and regresses their per-source validation losses on the mixture
weights. :func:`train_proxy` is one such run: a :class:`MixedLoader` over the config's sources
(its mixture replaced by ``weights`` when given), AdamW with linear warm-up then a constant or
cosine learning rate, and the validation loss of each source on its held-out documents
(``holdout:`` in the config) at the end and every ``eval_every`` steps.

Presets: :meth:`ProxyConfig.demo` trains in well under a minute on 2 CPU cores (byte tokens,
2 layers, width 128, 8 x 256 tokens per step, 300 steps = 0.6M tokens; ~19K tokens/s measured
on 2 quiet cores by ``benchmarks/bench_proxy.py``); :meth:`ProxyConfig.regmix` is RegMix's
``tinyllama_1M`` shape and optimiser (2 layers, width 256, 8 heads, SwiGLU 512, constant LR
4e-4 after 100 warm-up steps, 1000 steps), meant for a GPU.

Runs are deterministic given the config's seed (the data order) and ``ProxyConfig.seed`` (the
initialisation): on CPU two runs with the same thread count give bit-identical losses. On CUDA
attention kernels may reorder reductions, so repeated runs agree only to rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixbatch.config import Config, format_validation_error
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.proxy.evaluate import EvalRows, build_eval_rows, evaluate
from mixbatch.proxy.model import MlpKind, ModelConfig, PositionKind, ProxyLM

__all__ = ["Device", "ProxyConfig", "ProxyResult", "Schedule", "lr_at", "train_proxy"]


class Schedule(str, Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ProxyConfig(BaseModel):
    """Model shape and optimisation of a proxy run. Defaults: the demo model (CPU, byte tokens).

    ``seq_len`` and ``batch_size`` (rows per step) default to the mixbatch config's ``batch:``;
    give them here to override it for the proxy only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    n_layer: int = Field(default=2, ge=1)
    d_model: int = Field(default=128, ge=1)
    n_head: int = Field(default=4, ge=1)
    d_mlp: int | None = Field(default=None, ge=1)
    mlp: MlpKind = MlpKind.SWIGLU
    positions: PositionKind = PositionKind.ROTARY
    # batch (None: from the mixbatch config)
    seq_len: int | None = Field(default=None, ge=2)
    batch_size: int | None = Field(default=None, ge=1)
    # optimisation
    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    warmup: int = Field(default=20, ge=0)
    schedule: Schedule = Schedule.COSINE
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine ends at lr * min_lr_ratio
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    # where
    device: Device = Device.AUTO
    bf16: bool = True  # bf16 autocast on CUDA when the GPU supports it; CPU runs stay float32
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads during the run
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


def lr_at(step: int, proxy: ProxyConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up to ``lr`` over ``warmup`` steps,
    then constant, or cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < proxy.warmup:
        return proxy.lr * (step + 1) / proxy.warmup
    if proxy.schedule == Schedule.CONSTANT:
        return proxy.lr
    span = max(proxy.steps - 1 - proxy.warmup, 1)
    progress = min(max(step - proxy.warmup, 0) / span, 1.0)
    low = proxy.lr * proxy.min_lr_ratio
    return low + 0.5 * (proxy.lr - low) * (1.0 + math.cos(math.pi * progress))


@dataclass
class ProxyResult:
    """What one proxy run measured. ``state`` is the final model's state dict (CPU tensors)."""

    val_loss: dict[str, float]  # token-mean cross entropy (nats/token) per source
    val_loss_mean: float  # mean over every scored token of every source
    val_tokens: dict[str, int]  # tokens scored per source
    train_tokens: int  # real (non-padding) tokens trained on
    train_tokens_by_source: dict[str, int]
    steps: int  # optimiser steps taken (fewer than asked if the stream ended)
    seconds: float  # wall time of the whole call (setup, training, evaluation)
    train_seconds: float  # training steps only (batches, forward, backward, update)
    tokens_per_s: float  # train_tokens / train_seconds
    train_loss: float  # token-mean loss of the last step
    train_losses: list[float]  # token-mean loss of every step
    history: list[dict[str, Any]]  # one record per evaluation: step, tokens, val_loss, mean
    params: int  # non-embedding parameters
    params_total: int
    device: str
    weights: dict[str, float] | None  # `weights` normalised, every source (None: the config's)
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model state, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != "state"}


def _device(proxy: ProxyConfig) -> torch.device:
    if proxy.device == Device.CPU:
        return torch.device("cpu")
    if proxy.device == Device.CUDA:
        if not torch.cuda.is_available():
            raise ConfigError("proxy.device: cuda was asked for but torch sees no CUDA device "
                              "(use device: auto or cpu)")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _param_groups(model: ProxyLM, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (the tied embedding included), not norm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _with_batch(cfg: Config, proxy: ProxyConfig) -> Config:
    update = {k: v for k, v in (("seq_len", proxy.seq_len), ("batch_size", proxy.batch_size))
              if v is not None}
    return cfg.model_copy(update={"batch": cfg.batch.model_copy(update=update)}) if update else cfg


def train_proxy(cfg: Config, proxy: ProxyConfig | None = None,
                weights: dict[str, float] | None = None,
                init_state: dict[str, torch.Tensor] | None = None,
                on_step: Callable[[int, dict[str, Any]], None] | None = None) -> ProxyResult:
    """Train a proxy on ``cfg``'s sources and evaluate it on their held-out documents.

    Args:
        cfg: the mixbatch config (sources prepared; ``holdout`` > 0; ``batch`` unless the proxy
            overrides ``seq_len``/``batch_size``).
        proxy: model and optimiser settings (default :class:`ProxyConfig`).
        weights: the mixture to train on, ``{source: weight}`` (missing sources get 0); replaces
            the config's mixture from the first step. None: the config's mixture.
        init_state: a model state dict (e.g. a previous ``ProxyResult.state``) to start from
            instead of a fresh initialisation; the optimiser, the LR schedule and the data
            stream start anew.
        on_step: called with ``(step, batch)`` before each step trains on ``batch`` (the
            loader's numpy dict), e.g. to log what was fed.

    Raises:
        ConfigError: ``holdout`` is 0, unknown source names in ``weights``, a bad shape or
            device.
    """
    t_start = time.perf_counter()
    proxy = proxy or ProxyConfig()
    if cfg.holdout <= 0:
        raise ConfigError("holdout: proxy runs score held-out documents, but the config holds none "
                          "out (holdout is 0); set `holdout:` to a fraction, e.g. `holdout: 0.05`")
    cfg = _with_batch(cfg, proxy)
    seq_len = cfg.batch.seq_len
    loader = MixedLoader(cfg, rank=0, world_size=1)
    names = loader.names
    asked: dict[str, float] | None = None
    if weights is not None:
        loader.set_weights({str(k): float(v) for k, v in weights.items()})
        asked = {n: float(w) for n, w in zip(names, loader.current_weights(), strict=True)}
    device = _device(proxy)
    amp = (torch.bfloat16 if device.type == "cuda" and proxy.bf16 and torch.cuda.is_bf16_supported()
           else None)
    old_threads = torch.get_num_threads()
    if proxy.threads is not None:
        torch.set_num_threads(proxy.threads)
    try:
        mcfg = proxy.model_for(loader.stores[0].vocab_size, seq_len)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
            torch.manual_seed(proxy.seed)
            model = ProxyLM(mcfg)
        if init_state is not None:
            try:
                model.load_state_dict(init_state)
            except RuntimeError as e:
                raise ConfigError(f"init_state does not fit this proxy's shape: {e}") from None
        model.to(device).train()
        opt = torch.optim.AdamW(_param_groups(model, proxy.weight_decay), lr=proxy.lr,
                                betas=(proxy.beta1, proxy.beta2),
                                **({"fused": True} if device.type == "cuda" else {}))

        heldout = loader.heldout()
        eval_rows: dict[str, EvalRows] = {
            n: build_eval_rows(s, heldout[n], seq_len, proxy.eval_tokens, loader.eod_id,
                               loader.pad_id)
            for n, s in zip(names, loader.stores, strict=True)}

        history: list[dict[str, Any]] = []
        eval_seconds = [0.0]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def run_eval(step: int, tokens: int) -> tuple[dict[str, float], dict[str, int], float]:
            sync()
            t0 = time.perf_counter()
            losses, counts = evaluate(model, eval_rows, device, proxy.eval_batch_rows, amp)
            eval_seconds[0] += time.perf_counter() - t0
            scored = sum(counts.values())
            mean = (sum(losses[n] * counts[n] for n in names if counts[n]) / scored
                    if scored else float("nan"))
            history.append({"step": step, "tokens": tokens, "val_loss": dict(losses),
                            "val_loss_mean": mean})
            return losses, counts, mean

        step_losses: list[torch.Tensor] = []
        by_source = np.zeros(len(names), dtype=np.int64)
        done = 0
        t_train = time.perf_counter()
        for k in range(proxy.steps):
            planned = loader.next_step()
            if planned is None:
                break  # the stream ended (max_epochs caps with on_exhausted: stop)
            batch = loader.batch_of(planned)
            if on_step is not None:
                on_step(k, batch)
            src = batch["source_ids"]
            by_source += np.bincount(src[src >= 0], minlength=len(names))[: len(names)]
            ids = torch.from_numpy(batch["input_ids"]).to(device, non_blocking=True)
            labels = torch.from_numpy(batch["labels"]).to(device, non_blocking=True)
            pos = torch.from_numpy(batch["position_ids"]).to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(k, proxy)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss = model(ids, labels, pos).loss
            loss.backward()
            if proxy.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), proxy.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_losses.append(loss.detach())
            done = k + 1
            if proxy.eval_every and done % proxy.eval_every == 0 and done < proxy.steps:
                run_eval(done, int(by_source.sum()))
        sync()  # GPU steps run ahead of the host; time them to their end, without evaluation
        train_seconds = time.perf_counter() - t_train - eval_seconds[0]
        train_tokens = int(by_source.sum())
        val, counts, mean = run_eval(done, train_tokens)
        losses_list = torch.stack(step_losses).float().cpu().tolist() if step_losses else []
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return ProxyResult(
            val_loss=val, val_loss_mean=mean, val_tokens=counts,
            train_tokens=train_tokens,
            train_tokens_by_source={n: int(t) for n, t in zip(names, by_source, strict=True)},
            steps=done, seconds=time.perf_counter() - t_start, train_seconds=train_seconds,
            tokens_per_s=train_tokens / train_seconds if train_seconds > 0 else float("nan"),
            train_loss=losses_list[-1] if losses_list else float("nan"),
            train_losses=losses_list, history=history,
            params=model.num_params(), params_total=model.num_params(non_embedding=False),
            device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            weights=asked,
            state=state)
    finally:
        if proxy.threads is not None:
            torch.set_num_threads(old_threads)
