"""The one proxy trainer: every proxy run of mixbatch is a :class:`Trainer` driven by hooks.

Offline search runs and merging ablations (:func:`mixbatch.proxy.train_proxy`), online policy
runs (:func:`mixbatch.online.train_online`), Skill-It's probe runs and DoReMi's reference
model (both ``train_proxy`` calls) and the held-out scoring of merged models
(:func:`mixbatch.search.merge.heldout_evaluator`) share this class. It owns what every run has:

- the loader over the config's sources (batch shape overridden by the proxy's ``seq_len`` /
  ``batch_size``), on one process or as this rank of ``torch.distributed``;
- the device (:func:`resolve_device`), bf16 autocast on a CUDA device that supports it, torch's
  CPU threads for the run's duration (restored by :meth:`Trainer.close`);
- the model, initialised from ``ProxyConfig.seed`` without touching the caller's RNG (or from
  a given state), AdamW with weight decay on matrices only, the learning-rate schedule
  (:func:`~mixbatch.proxy.settings.lr_at`) and gradient clipping;
- held-out evaluation (:meth:`Trainer.validate`, over every rank's rows);
- the model + optimiser + loader state of a checkpoint (:meth:`Trainer.state_dict`).

One step ``k`` of :meth:`Trainer.run` (``k`` steps done before it):

1. plan the global step with the loader's current weights and read this rank's rows;
   ``hooks.before_forward(step)``;
2. forward; ``hooks.before_backward(step)``: the parameters are still those before the
   update (feedback measured on the batch belongs here);
3. backward (each rank's loss is its share of the global token mean and the gradients are
   summed over ranks, so every rank takes the same step), clip, AdamW;
4. validation every ``eval_every`` steps and at the run's last step;
   ``hooks.after_update(step, record)`` (``record``: the validation, or None).

Without hooks (:class:`Hooks` does nothing) a run is a plain proxy run, so an online run with
no policy trains the same model as ``train_proxy`` by construction. On CPU two runs with the
same seeds and thread count are bit-identical; on CUDA attention kernels may reorder
reductions, so repeated runs agree only to rounding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mixbatch.config import Config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.proxy.evaluate import EvalRows, build_eval_rows, eval_sums, global_means
from mixbatch.proxy.model import ProxyLM, ProxyOutput
from mixbatch.proxy.settings import Device, ProxyConfig, lr_at

__all__ = ["Hooks", "Step", "Trainer", "autocast_dtype", "require_holdout", "resolve_device",
           "torch_threads", "with_batch"]


def resolve_device(proxy: ProxyConfig) -> torch.device:
    """``proxy.device``: ``auto`` is CUDA when torch sees one; ``cuda`` without one is an error."""
    if proxy.device == Device.CPU:
        return torch.device("cpu")
    if proxy.device == Device.CUDA and not torch.cuda.is_available():
        raise ConfigError("proxy.device: cuda was asked for but torch sees no CUDA device "
                          "(use device: auto or cpu)")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(proxy: ProxyConfig, device: torch.device) -> torch.dtype | None:
    """bf16 on a CUDA device that supports it when ``proxy.bf16``; else None (float32)."""
    if device.type == "cuda" and proxy.bf16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside the block (None: left as they are)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(old)


def with_batch(cfg: Config, proxy: ProxyConfig) -> Config:
    """``cfg`` with the proxy's ``seq_len`` / ``batch_size`` (when given) in its ``batch:``."""
    update = {k: v for k, v in (("seq_len", proxy.seq_len), ("batch_size", proxy.batch_size))
              if v is not None}
    return cfg.model_copy(update={"batch": cfg.batch.model_copy(update=update)}) if update else cfg


def require_holdout(cfg: Config, what: str) -> None:
    """Refuse a config that holds no documents out: ``what`` (e.g. "proxy runs score held-out
    documents") says why the run needs them."""
    if cfg.holdout <= 0:
        raise ConfigError(f"holdout: {what}, but the config holds no documents out (holdout is "
                          "0); set `holdout:` to a fraction, e.g. `holdout: 0.05`")


def _param_groups(model: ProxyLM, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (the tied embedding included), not norm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class Step:
    """One training step as the hooks see it (``out`` is set after the forward)."""

    index: int  # steps done before this one
    planned: Any  # the loader's planned step (plan, rows, index)
    batch: dict[str, np.ndarray]  # this rank's rows, as the loader gives them
    weights: np.ndarray  # the target weights the step was planned with
    fed: np.ndarray  # real tokens this step fed per source (all ranks)
    ids: torch.Tensor
    labels: torch.Tensor
    pos: torch.Tensor
    src: torch.Tensor
    out: ProxyOutput | None = None

    @property
    def done(self) -> int:
        """Steps done after this one."""
        return self.index + 1


class Hooks:
    """What a run adds to the plain proxy loop; every method does nothing here."""

    def before_forward(self, step: Step) -> None:
        """The step's batch is read; nothing is computed yet."""

    def before_backward(self, step: Step) -> None:
        """``step.out`` holds the forward; the parameters are those before the update."""

    def after_update(self, step: Step, record: dict[str, Any] | None) -> None:
        """The update is done; ``record`` is the validation after it, when one was due."""


class Trainer:
    """One proxy run's model, optimiser, loader and evaluation (see the module docstring).

    Args:
        cfg: the mixbatch config (sources prepared).
        proxy: model, optimiser, device and evaluation settings (default :class:`ProxyConfig`).
        distributed: take rank and world size from ``torch.distributed`` (else one process).
        init_state: a model state dict to start from instead of the seeded initialisation.

    The trainer sets torch's CPU threads to ``proxy.threads`` until :meth:`close` (or the end
    of a ``with`` block). ``eval_rows`` (this rank's rows per source) is what :meth:`validate`
    scores: :meth:`heldout_rows` unless the caller sets other rows.
    """

    def __init__(self, cfg: Config, proxy: ProxyConfig | None = None, *,
                 distributed: bool = False,
                 init_state: dict[str, torch.Tensor] | None = None) -> None:
        self.proxy = proxy = proxy or ProxyConfig()
        self.cfg = cfg = with_batch(cfg, proxy)
        self.device = resolve_device(proxy)
        self.amp = autocast_dtype(proxy, self.device)
        self._threads = torch_threads(proxy.threads)
        self._threads.__enter__()
        try:
            self.loader = (MixedLoader(cfg) if distributed
                           else MixedLoader(cfg, rank=0, world_size=1))
            self.names = self.loader.names
            self.model_cfg = proxy.model_for(self.loader.stores[0].vocab_size, cfg.batch.seq_len)
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
                torch.manual_seed(proxy.seed)
                self.model = ProxyLM(self.model_cfg)
            if init_state is not None:
                try:
                    self.model.load_state_dict(init_state)
                except RuntimeError as e:
                    raise ConfigError(f"init_state does not fit this proxy's shape: {e}") from None
            self.model.to(self.device).train()
            self.opt = torch.optim.AdamW(
                _param_groups(self.model, proxy.weight_decay), lr=proxy.lr,
                betas=(proxy.beta1, proxy.beta2),
                **({"fused": True} if self.device.type == "cuda" else {}))
        except BaseException:
            self.close()
            raise
        self.eval_rows: dict[str, EvalRows] = {}
        # real tokens trained on per source: on every rank before the last load_state_dict,
        # and on this rank's rows since
        self.tokens_before = np.zeros(len(self.names), dtype=np.int64)
        self.by_source = np.zeros(len(self.names), dtype=np.int64)
        self.history: list[dict[str, Any]] = []  # one record per validation
        self.train_losses: list[torch.Tensor] = []  # token-mean loss of each step of run()
        self.train_seconds = 0.0  # training steps only, validation excluded
        self.eval_seconds = 0.0

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Give torch its CPU threads back (idempotent)."""
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what the run is --------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.loader.rank

    @property
    def world_size(self) -> int:
        return self.loader.world_size

    def device_name(self) -> str:
        return "cpu" if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)

    def heldout_rows(self) -> dict[str, EvalRows]:
        """``eval_tokens`` tokens of every source's held-out documents, in their keyed order."""
        heldout = self.loader.heldout()
        loader, seq_len = self.loader, self.cfg.batch.seq_len
        return {n: build_eval_rows(s, heldout[n], seq_len, self.proxy.eval_tokens, loader.eod_id,
                                   loader.pad_id)
                for n, s in zip(self.names, loader.stores, strict=True)}

    # ---- evaluation -------------------------------------------------------------------------
    def loss_means(self, rows: dict[str, EvalRows]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-mean loss and scored tokens of each entry of ``rows`` over every rank."""
        return global_means(*eval_sums(self.model, rows, self.device, self.proxy.eval_batch_rows,
                                       self.amp))

    def score(self) -> tuple[dict[str, float], dict[str, int], float]:
        """Loss per source of ``eval_rows``, tokens scored per source, and the mean over every
        scored token (NaN when none was)."""
        means, counts = self.loss_means(self.eval_rows)
        total = float(counts.sum())
        mean = float(torch.nansum(means * counts)) / total if total else float("nan")
        return ({n: float(m) for n, m in zip(self.eval_rows, means.tolist(), strict=True)},
                {n: int(c) for n, c in zip(self.eval_rows, counts.tolist(), strict=True)}, mean)

    def validate(self, step: int) -> dict[str, Any]:
        """Score ``eval_rows`` now and append the record to ``history``."""
        self._sync()
        t0 = time.perf_counter()
        losses, _, mean = self.score()
        record = {"step": step, "tokens": int(self.trained_tokens().sum()), "val_loss": losses,
                  "val_loss_mean": mean}
        self.history.append(record)
        self.eval_seconds += time.perf_counter() - t0
        return record

    def trained_tokens(self) -> np.ndarray:
        """Real (non-padding) tokens trained on per source so far, over every rank (a collective
        operation when distributed)."""
        if self.world_size == 1:
            return self.tokens_before + self.by_source
        counts = torch.from_numpy(self.by_source.astype(np.float64))
        summed = global_means(torch.zeros_like(counts), counts)[1].numpy().astype(np.int64)
        return self.tokens_before + summed

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model (CPU copy), optimiser and loader state, and the tokens trained on per source
        (summed over ranks: every rank calls this, though one may be enough to save it)."""
        return {"model": cpu_state(self.model), "optimizer": self.opt.state_dict(),
                "loader": self.loader.state_dict(),
                "trained_tokens": self.trained_tokens().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.tokens_before = np.asarray(state["trained_tokens"], dtype=np.int64)
        self.by_source[:] = 0

    # ---- training ---------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read(self, k: int) -> Step | None:
        weights = self.loader.current_weights().copy()
        fed_before = self.loader.fed_tokens.copy()
        planned = self.loader.next_step()
        if planned is None:
            return None
        batch = self.loader.batch_of(planned)
        src, k_src = batch["source_ids"], len(self.names)
        self.by_source += np.bincount(src[src >= 0], minlength=k_src)[:k_src]
        dev = self.device

        def put(name: str) -> torch.Tensor:
            return torch.from_numpy(batch[name]).to(dev, non_blocking=True)

        return Step(k, planned, batch, weights, self.loader.fed_tokens - fed_before, put("input_ids"),
                    put("labels"), put("position_ids"), put("source_ids"))

    def _loss(self, out: ProxyOutput) -> torch.Tensor:
        if self.world_size == 1:
            return out.loss
        # this rank's share of the global token mean: the summed gradients are exact
        assert out.losses is not None and out.mask is not None
        total = out.mask.sum().to(torch.float64).reshape(1)
        dist.all_reduce(total)
        return out.losses.sum() / total.clamp(min=1).to(out.losses.dtype)

    def run(self, start: int = 0, end: int | None = None, hooks: Hooks | None = None,
            eval_every: int | None = None) -> tuple[int, bool]:
        """Train steps ``start .. end - 1`` (default: to ``proxy.steps``); validate every
        ``eval_every`` steps done and at ``proxy.steps``, and once more when the stream ends
        early. Returns the steps done and whether the stream ended."""
        hooks = hooks or Hooks()
        proxy, model, opt = self.proxy, self.model, self.opt
        end = proxy.steps if end is None else end
        done, ended = start, False
        t0, eval_before = time.perf_counter(), self.eval_seconds
        for k in range(start, end):
            step = self._read(k)
            if step is None:
                ended = True  # the stream ended (max_epochs caps with on_exhausted: stop)
                break
            hooks.before_forward(step)
            for group in opt.param_groups:
                group["lr"] = lr_at(k, proxy)
            with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16,
                                enabled=self.amp is not None):
                step.out = model(step.ids, step.labels, step.pos)
            loss = self._loss(step.out)
            hooks.before_backward(step)
            loss.backward()
            if self.world_size > 1:
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
            if proxy.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), proxy.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.train_losses.append(loss.detach())
            done = step.done
            due = (eval_every and done % eval_every == 0) or done == proxy.steps
            hooks.after_update(step, self.validate(done) if due else None)
        if ended and (not self.history or self.history[-1]["step"] != done):
            self.validate(done)  # the stream ran out before the last step: score what was trained
        self._sync()  # GPU steps run ahead of the host: time them to their end
        self.train_seconds += time.perf_counter() - t0 - (self.eval_seconds - eval_before)
        return done, ended

    def losses(self) -> list[float]:
        """The token-mean loss of every step trained (floats)."""
        return torch.stack(self.train_losses).float().cpu().tolist() if self.train_losses else []
