"""Train one proxy model on one mixture and report its validation loss per source.

Offline mixture search (RegMix, Liu et al. 2024, arXiv 2407.01492) trains many small proxies,
one per candidate mixture, and regresses their per-source validation losses on the mixture
weights. :func:`train_proxy` is one such run of the :class:`~mixbatch.proxy.trainer.Trainer`,
scored on each source's held-out documents at the end and every ``eval_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mixbatch.config import Config
from mixbatch.proxy.settings import Device, ProxyConfig, Schedule, lr_at
from mixbatch.proxy.trainer import Hooks, Trainer, cpu_state, require_holdout

__all__ = ["Device", "ProxyConfig", "ProxyResult", "Schedule", "lr_at", "train_proxy"]


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
    world_size: int
    weights: dict[str, float] | None  # `weights` normalised, every source (None: the config's)
    # joules (total, per token), CO2, or None with why not (Trainer.report)
    energy: dict[str, Any] = field(default_factory=dict)
    noise_scale: dict[str, Any] = field(default_factory=dict)  # last B_simple, or why not
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model state, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != "state"}


def train_proxy(cfg: Config, proxy: ProxyConfig | None = None,
                weights: dict[str, float] | None = None,
                init_state: dict[str, torch.Tensor] | None = None,
                hooks: Hooks | None = None) -> ProxyResult:
    """Train a proxy on ``cfg``'s sources and evaluate it on their held-out documents.

    Args:
        cfg: the mixbatch config (sources prepared; ``holdout`` > 0).
        proxy: model and optimiser settings (default :class:`ProxyConfig`).
        weights: the mixture to train on, ``{source: weight}`` (missing sources get 0), from
            the first step. None: the config's mixture.
        init_state: a model state dict (e.g. a previous ``ProxyResult.state``) to start from;
            the optimiser, the LR schedule and the data stream start anew.
        hooks: what the run adds to each step (:class:`~mixbatch.proxy.trainer.Hooks`).

    Raises:
        ConfigError: ``holdout`` is 0, unknown sources in ``weights``, a bad shape or device.
    """
    t_start = time.perf_counter()
    require_holdout(cfg, "proxy runs score held-out documents")
    with Trainer(cfg, proxy, init_state=init_state) as t:
        asked: dict[str, float] | None = None
        if weights is not None:
            t.loader.set_weights({str(k): float(v) for k, v in weights.items()})
            asked = {n: float(w) for n, w in zip(t.names, t.loader.current_weights(), strict=True)}
        t.eval_rows = t.heldout_rows()
        done, _ = t.run(eval_every=t.proxy.eval_every, hooks=hooks)
        report, losses, seconds = t.report(), t.losses(), t.train_seconds
        return ProxyResult(
            **report, val_tokens={n: r.tokens for n, r in t.eval_rows.items()}, steps=done,
            seconds=time.perf_counter() - t_start,
            tokens_per_s=report["train_tokens"] / seconds if seconds > 0 else float("nan"),
            train_loss=losses[-1] if losses else float("nan"), train_losses=losses,
            params=t.model.num_params(), params_total=t.model.num_params(non_embedding=False),
            weights=asked, state=cpu_state(t.model))
