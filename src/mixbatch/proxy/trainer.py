"""The one proxy trainer: every proxy run of mixbatch is a :class:`Trainer` driven by hooks.

Offline search runs and merging ablations (:func:`mixbatch.proxy.train_proxy`), online policy
runs (:func:`mixbatch.online.train_online`), Skill-It's probes and DoReMi's reference model
(``train_proxy`` calls) and the scoring of merged models
(:func:`mixbatch.search.merge.heldout_evaluator`) share what it owns: the loader (batch shape
overridden by the proxy's ``seq_len`` / ``batch_size``; one process or this rank of
``torch.distributed``), the device (``cuda`` asked for without one is an error), bf16 autocast
on a CUDA device that supports it, torch's CPU threads for the run (restored by ``close``), the
model seeded by ``ProxyConfig.seed`` without touching the caller's RNG (or a given state),
AdamW with decay on matrices only, the schedule (:func:`~mixbatch.proxy.settings.lr_at`),
gradient clipping, held-out evaluation over every rank, and a checkpoint's model + optimiser +
loader state.

One step ``k`` of :meth:`Trainer.run` (``k`` steps done before it): plan the global step with
the loader's current weights and read this rank's rows, ``hooks.before_forward(step)``;
forward, ``hooks.before_backward(step)`` (parameters still before the update: feedback measured
on the batch goes here); backward (each rank's loss is its share of the global token mean and
gradients are summed over ranks, so every rank takes the same step), clip, AdamW; validation
every ``eval_every`` steps and at the last step, ``hooks.after_update(step, record)``.

With no hooks a run is a plain proxy run, so an online run without a policy trains the same
model as ``train_proxy`` by construction. On CPU two runs with the same seeds and thread count
are bit-identical; on CUDA attention kernels may reorder reductions (equal to rounding).
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
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.loader.loader import Step as Planned
from mixbatch.proxy.evaluate import EvalRows, build_eval_rows, eval_sums, global_means
from mixbatch.proxy.model import ProxyLM, ProxyOutput
from mixbatch.proxy.settings import Device, Optimizer, ProxyConfig, by_tokens, lr_at
from mixbatch.shape.base import StepPlan
from mixbatch.training.energy import EnergyMeter
from mixbatch.training.lamb import Lamb
from mixbatch.training.lr import TokenLR, TokenSchedule, loader_stage
from mixbatch.training.noise import NoiseScale
from mixbatch.training.replay import HardBatchReplay, payload_plan, plan_payload

__all__ = ["Hooks", "Step", "Trainer", "cpu_state", "require_holdout", "torch_threads"]


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
    replayed: bool = False  # a hard batch trained again (``fed`` is then zero)

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
        batch = {k: v for k, v in (("seq_len", proxy.seq_len), ("batch_size", proxy.batch_size))
                 if v is not None}  # the proxy's batch shape overrides the config's
        self.cfg = cfg = cfg.model_copy(update={"batch": cfg.batch.model_copy(update=batch)})
        if proxy.device == Device.CUDA and not torch.cuda.is_available():
            raise ConfigError("proxy.device: cuda was asked for but torch sees no CUDA device "
                              "(use device: auto or cpu)")
        cuda = proxy.device != Device.CPU and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.device_name = torch.cuda.get_device_name(self.device) if cuda else "cpu"
        self.amp = torch.bfloat16 if cuda and proxy.bf16 and torch.cuda.is_bf16_supported() else None
        self._threads = torch_threads(proxy.threads)
        self._threads.__enter__()
        try:
            self.loader = (MixedLoader(cfg) if distributed
                           else MixedLoader(cfg, rank=0, world_size=1))
            self.names, self.rank, self.world_size = (self.loader.names, self.loader.rank,
                                                      self.loader.world_size)
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
            groups = _param_groups(self.model, proxy.weight_decay)
            self.opt: torch.optim.Optimizer = (
                Lamb(groups, lr=proxy.lr, betas=(proxy.beta1, proxy.beta2))
                if proxy.optimizer == Optimizer.LAMB else
                torch.optim.AdamW(groups, lr=proxy.lr, betas=(proxy.beta1, proxy.beta2),
                                  **({"fused": True} if self.device.type == "cuda" else {})))
            self.lr_sched = self._token_lr() if by_tokens(proxy) else None
            # gradient noise scale per step (distributed runs: local vs global gradient)
            self.noise = (NoiseScale(proxy.noise_beta) if proxy.noise_beta is not None
                          and self.world_size > 1 else None)
            self.noise_scale: list[float] = []
            self._tokens = (0.0, 0.0)
            self.replay = (HardBatchReplay(proxy.replay_capacity, proxy.replay_rate,
                                           len(self.names)) if proxy.replay_rate > 0 else None)
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
        # joules of run() from RAPL / NVML counters (validation included); None when no
        # counter is readable, energy_unavailable then says why
        self.meter = EnergyMeter(nvml=self.device.type == "cuda")
        self.joules: float | None = 0.0 if self.meter.rapl or self.meter.handles else None
        self.energy_unavailable = list(self.meter.unavailable)

    def _token_lr(self) -> TokenLR:
        """The schedule by tokens trained: ``warmup`` and ``steps`` in steps of the batch."""
        proxy, batch = self.proxy, self.cfg.batch
        per_step = batch.batch_size * batch.seq_len
        sched = TokenSchedule(proxy.schedule.value, total_tokens=proxy.steps * per_step,
                              warmup_tokens=min(proxy.warmup, proxy.steps - 1) * per_step,
                              decay_fraction=proxy.decay_fraction, min_ratio=proxy.min_lr_ratio,
                              batch_size=batch.batch_size, rewarm_tokens=proxy.rewarm_tokens)
        return TokenLR(self.opt, sched, loader=self.loader)

    def close(self) -> None:
        """Give torch its CPU threads back (idempotent)."""
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heldout_rows(self) -> dict[str, EvalRows]:
        """``eval_tokens`` tokens of every source's held-out documents, in their keyed order."""
        heldout = self.loader.heldout()
        loader, seq_len = self.loader, self.cfg.batch.seq_len
        return {n: build_eval_rows(s, heldout[n], seq_len, self.proxy.eval_tokens, loader.eod_id,
                                   loader.pad_id)
                for n, s in zip(self.names, loader.stores, strict=True)}

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

    def state_dict(self) -> dict[str, Any]:
        """Model (CPU copy), optimiser and loader state, and the tokens trained on per source
        (summed over ranks: every rank calls this, though one may be enough to save it)."""
        state = {"model": cpu_state(self.model), "optimizer": self.opt.state_dict(),
                 "loader": self.loader.state_dict(),
                 "trained_tokens": self.trained_tokens().tolist()}
        if self.lr_sched is not None:
            state["lr_scheduler"] = self.lr_sched.state_dict()
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        if self.lr_sched is not None:
            if "lr_scheduler" not in state:
                raise StateError("checkpoint: this run's LR follows tokens (schedule "
                                 f"{self.proxy.schedule.value}), but the state has no lr_scheduler")
            self.lr_sched.load_state_dict(state["lr_scheduler"])
        if self.replay is not None:
            if "replay" not in state:
                raise StateError("checkpoint: this run replays hard batches, but the state has "
                                 "no replay memory")
            self.replay.load_state_dict(state["replay"])
        self.tokens_before = np.asarray(state["trained_tokens"], dtype=np.int64)
        self.by_source[:] = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read(self, k: int) -> Step | None:
        weights = self.loader.current_weights().copy()
        fed_before = self.loader.fed_tokens.copy()
        replayed = self.replay is not None and self.replay.due(k)
        if replayed:
            assert self.replay is not None
            index, plan, rows = payload_plan(self.replay.hardest()[1], StepPlan)
            planned = Planned(index, plan, rows, weights)
            self.replay.count(np.bincount(plan.source, weights=plan.end - plan.start,
                                          minlength=len(self.names)).astype(np.int64))
        else:
            planned = self.loader.next_step()
        if planned is None:
            return None
        batch = self.loader.batch_of(planned, rows=planned.rows if replayed else None)
        src, k_src = batch["source_ids"], len(self.names)
        self.by_source += np.bincount(src[src >= 0], minlength=k_src)[:k_src]
        dev = self.device

        def put(name: str) -> torch.Tensor:
            return torch.from_numpy(batch[name]).to(dev, non_blocking=True)

        return Step(k, planned, batch, weights, self.loader.fed_tokens - fed_before, put("input_ids"),
                    put("labels"), put("position_ids"), put("source_ids"), replayed=replayed)

    def _remember(self, step: Step, loss: torch.Tensor) -> None:
        """Offer the step's batch to the replay memory with its global token-mean loss."""
        assert self.replay is not None
        total = loss.detach().to(torch.float64).reshape(1)
        if self.world_size > 1:
            dist.all_reduce(total)  # the ranks' shares add up to the global mean
        planned, value = step.planned, float(total)
        if self.replay.wants(planned.index, value):
            self.replay.record(planned.index, value,
                               plan_payload(planned.index, planned.plan, planned.rows))

    def _loss(self, out: ProxyOutput) -> torch.Tensor:
        if self.world_size == 1:
            return out.loss
        # this rank's share of the global token mean: the summed gradients are exact
        assert out.losses is not None and out.mask is not None
        local = out.mask.sum().to(torch.float64).reshape(1)
        total = local.clone()
        dist.all_reduce(total)
        self._tokens = (float(local), float(total))  # this rank's and all ranks' (noise scale)
        return out.losses.sum() / total.clamp(min=1).to(out.losses.dtype)

    def _grad_sq(self) -> torch.Tensor:
        grads = [p.grad.detach().to(torch.float64).pow(2).sum()
                 for p in self.model.parameters() if p.grad is not None]
        return torch.stack(grads).sum() if grads else torch.zeros((), dtype=torch.float64)

    def _measure_noise(self, share_sq: torch.Tensor) -> None:
        """B_simple in tokens from this rank's gradient (its share ``share_sq`` rescaled to
        its own token mean) and the global one now in ``.grad``; appended to ``noise_scale``."""
        assert self.noise is not None
        local, total = self._tokens
        small = (share_sq * (total / max(local, 1.0)) ** 2).reshape(1).cpu()
        dist.all_reduce(small)  # mean over ranks of |G_small|², below
        b_small = max(round(total / self.world_size), 1)
        self.noise_scale.append(self.noise.update(
            float(small) / self.world_size, float(self._grad_sq()), b_small,
            max(int(total), b_small + 1)))

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
        self.meter.start()
        for k in range(start, end):
            stage = loader_stage(self.loader)  # the mixture's stage this step is planned in
            step = self._read(k)
            if step is None:
                ended = True  # the stream ended (max_epochs caps with on_exhausted: stop)
                break
            hooks.before_forward(step)
            if self.lr_sched is not None:  # tokens fed, this step's included, and the stage
                self.lr_sched.step(int(self.loader.fed_tokens.sum()), stage)
            else:
                for group in opt.param_groups:
                    group["lr"] = lr_at(k, proxy)
            with torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16,
                                enabled=self.amp is not None):
                step.out = model(step.ids, step.labels, step.pos)
            loss = self._loss(step.out)
            hooks.before_backward(step)
            if self.replay is not None:
                self._remember(step, loss)
            loss.backward()
            if self.world_size > 1:
                share_sq = self._grad_sq() if self.noise is not None else None
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                if share_sq is not None:
                    self._measure_noise(share_sq)
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
        used = self.meter.stop().joules
        self.joules = None if used is None or self.joules is None else self.joules + used
        return done, ended

    def losses(self) -> list[float]:
        """The token-mean loss of every step trained (floats)."""
        return torch.stack(self.train_losses).float().cpu().tolist() if self.train_losses else []
