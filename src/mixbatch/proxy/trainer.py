"""The one proxy trainer: every proxy run (search, merging, online policies, probes, reference
models, merged-model scores) is a :class:`Trainer` driven by :class:`Hooks`.

One step ``k`` of :meth:`Trainer.run` (``k`` steps done before it): plan the global step with
the loader's current weights and read this rank's rows, ``hooks.before_forward``; forward,
``hooks.before_backward`` (parameters still before the update); backward (each rank's loss is
its share of the global token mean and gradients are summed over ranks, so every rank takes the
same step), clip, update; validation when due, ``hooks.after_update``. With no hooks a run is a
plain proxy run, so an online run without a policy trains ``train_proxy``'s model by
construction. The model is the decoder-only :class:`~mixbatch.proxy.model.ProxyLM`, or for
``objectives.layout: encoder_decoder`` the :class:`~mixbatch.proxy.encdec.EncDecLM` (its
:class:`Step` carries the decoder's rows in ``ids``/``labels``/``pos``/``src`` and the
encoder's in ``encoder``; validation scores the same held-out tokens through its decoder).
Same seeds and thread count: bit-identical on CPU, equal to rounding on CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError
from mixbatch.loader.loader import MixedLoader
from mixbatch.loader.loader import Step as Planned
from mixbatch.objectives.config import Layout
from mixbatch.proxy.encdec import EncDecLM, decoder_rows
from mixbatch.proxy.evaluate import EvalRows, amp_dtype, autocast, build_eval_rows, eval_sums, global_means
from mixbatch.proxy.model import ProxyLM, ProxyOutput
from mixbatch.proxy.settings import Device, Optimizer, ProxyConfig, by_tokens, lr_at
from mixbatch.shape.base import StepPlan
from mixbatch.training.energy import EnergyMeter, EnergyReading
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
    """Refuse a config that holds no documents out; ``what`` says why the run needs them."""
    if cfg.holdout <= 0:
        raise ConfigError(f"holdout: {what}, but the config holds no documents out (holdout is "
                          "0); set `holdout:` to a fraction, e.g. `holdout: 0.05`")


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
    prefix: torch.Tensor | None = None  # per-row prefix lengths (`objectives:`, prefix LM)
    # the encoder's rows and their real tokens (`objectives:`, encoder_decoder); then ``ids``,
    # ``labels``, ``pos`` and ``src`` are the decoder's ([start] targets, EncDecLM's convention)
    encoder: tuple[torch.Tensor, torch.Tensor] | None = None

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword inputs besides ``ids``, ``labels`` and ``pos``."""
        if self.encoder is not None:
            return {"encoder_ids": self.encoder[0], "encoder_mask": self.encoder[1]}
        return {} if self.prefix is None else {"prefix_len": self.prefix}

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


def _step_positions(loader: Any, steps: int) -> list[int]:
    """Positions trained by the end of each of the first ``steps`` steps under the loader's
    batch-size schedule (a token clock read as positions; run-time changes not foreseen)."""
    b, sched, ends = loader.cfg.batch, loader.rows_schedule, [0]
    for s in range(steps):
        ends.append(ends[-1] + (b.step_positions if sched is None
                                else sched.rows_at(s, ends[-1]) * b.seq_len))
    return ends[1:]


class Trainer:
    """One proxy run's loader (one process, or this rank with ``distributed``), model (seeded
    by ``proxy.seed`` without touching the caller's RNG, or ``init_state``), optimiser,
    schedule and evaluation of ``eval_rows`` (this rank's rows per source, e.g.
    :meth:`heldout_rows`). torch's CPU threads are ``proxy.threads`` until :meth:`close`."""

    def __init__(self, cfg: Config, proxy: ProxyConfig | None = None, *,
                 distributed: bool = False,
                 init_state: dict[str, torch.Tensor] | None = None) -> None:
        self.proxy = proxy = proxy or ProxyConfig()
        batch = {k: v for k, v in (("seq_len", proxy.seq_len), ("batch_size", proxy.batch_size))
                 if v is not None}
        self.cfg = cfg = cfg.model_copy(update={"batch": cfg.batch.model_copy(update=batch)})
        if proxy.device == Device.CUDA and not torch.cuda.is_available():
            raise ConfigError("proxy.device: cuda was asked for but torch sees no CUDA device "
                              "(use device: auto or cpu)")
        cuda = proxy.device != Device.CPU and torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.device_name = torch.cuda.get_device_name(self.device) if cuda else "cpu"
        self.amp = amp_dtype(self.device, proxy.bf16)  # mixed precision: None is float32
        self._stack = ExitStack()  # what close() undoes: torch's CPU threads
        self._stack.enter_context(torch_threads(proxy.threads))
        try:
            self.loader = (MixedLoader(cfg) if distributed
                           else MixedLoader(cfg, rank=0, world_size=1))
            self.names, self.rank, self.world_size = (self.loader.names, self.loader.rank,
                                                      self.loader.world_size)
            stage = self.loader.objectives  # objectives: wider rows, paradigm + sentinel ids
            self.model_cfg = proxy.model_for(*(
                (self.loader.stores[0].vocab_size, cfg.batch.seq_len) if stage is None
                else stage.model_shape(replay=proxy.replay_rate > 0)))
            # `objectives.layout: encoder_decoder`: the encoder-decoder proxy (proxy.encdec)
            self.encdec_empty = (stage.empty_id if stage is not None
                                 and stage.layout is Layout.ENCODER_DECODER else None)
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
                torch.manual_seed(proxy.seed)
                self.model = self.new_model()
            if init_state is not None:
                try:
                    self.model.load_state_dict(init_state)
                except RuntimeError as e:
                    raise ConfigError(f"init_state does not fit this proxy's shape: {e}") from None
            self.model.to(self.device).train()
            params = list(self.model.parameters())  # decay matrices (the tied embedding too)
            groups = [{"params": [p for p in params if p.dim() >= 2],
                       "weight_decay": proxy.weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            betas = (proxy.beta1, proxy.beta2)
            self.opt: torch.optim.Optimizer = (
                Lamb(groups, lr=proxy.lr, betas=betas) if proxy.optimizer == Optimizer.LAMB
                else torch.optim.AdamW(groups, lr=proxy.lr, betas=betas,
                                       **({"fused": True} if cuda else {})))
            ends = _step_positions(self.loader, proxy.steps)  # warmup and steps in batches
            sizes = self.loader.rows_schedule  # a batch-size ramp: the LR follows tokens
            ramp = sizes is not None and not sizes.constant
            self.lr_sched = TokenLR(self.opt, TokenSchedule(
                proxy.schedule.value, total_tokens=ends[-1],
                warmup_tokens=ends[min(proxy.warmup, proxy.steps - 1)] - ends[0],
                decay_fraction=proxy.decay_fraction, min_ratio=proxy.min_lr_ratio,
                batch_size=ends[0] // cfg.batch.seq_len, rewarm_tokens=proxy.rewarm_tokens),
                loader=self.loader) if by_tokens(proxy) or ramp else None
            # B_simple per step from the local and global gradients (distributed runs only)
            self.noise = (NoiseScale(proxy.noise_beta) if proxy.noise_beta is not None
                          and self.world_size > 1 else None)
            self.replay = (HardBatchReplay(proxy.replay_capacity, proxy.replay_rate,
                                           len(self.names)) if proxy.replay_rate > 0 else None)
        except BaseException:
            self.close()
            raise
        self._parts = (("lr_scheduler", self.lr_sched), ("replay", self.replay), ("noise", self.noise))
        self.noise_scale: list[float] = []  # B_simple in tokens, one a step of run()
        self._tokens = (0.0, 0.0)  # this rank's and all ranks' tokens of the step
        self.eval_rows: dict[str, EvalRows] = {}
        # real tokens trained per source: all ranks' before the last load_state_dict, this one's since
        self.tokens_before = np.zeros(len(self.names), dtype=np.int64)
        self.by_source = np.zeros(len(self.names), dtype=np.int64)
        self.history: list[dict[str, Any]] = []  # one record per validation
        self.train_losses: list[torch.Tensor] = []  # token-mean loss of each step of run()
        self.train_seconds = self.eval_seconds = 0.0  # training steps; validation
        # joules of the run from RAPL / NVML counters (None when none reads: energy_unavailable)
        self.meter = EnergyMeter(nvml=cuda)
        self.joules: float | None = 0.0 if self.meter.rapl or self.meter.handles else None
        self.energy_unavailable = list(self.meter.unavailable)

    def new_model(self) -> ProxyLM | EncDecLM:
        """A freshly initialised model of this run's shape (torch's global RNG): the
        decoder-only proxy, or the encoder-decoder one for ``layout: encoder_decoder``."""
        if self.encdec_empty is not None:
            return EncDecLM(self.model_cfg, self.encdec_empty)
        return ProxyLM(self.model_cfg)

    def close(self) -> None:
        """Give torch its CPU threads back (idempotent)."""
        self._stack.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heldout_rows(self) -> dict[str, EvalRows]:
        """``eval_tokens`` tokens of every source's held-out documents, in their keyed order."""
        heldout, loader = self.loader.heldout(), self.loader
        return {n: build_eval_rows(s, heldout[n], self.cfg.batch.seq_len, self.proxy.eval_tokens,
                                   loader.eod_id, loader.pad_id)
                for n, s in zip(self.names, loader.stores, strict=True)}

    def loss_means(self, rows: dict[str, EvalRows]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-mean loss and scored tokens of each entry of ``rows`` over every rank."""
        return global_means(*eval_sums(self.model, rows, self.device, self.proxy.eval_batch_rows,
                                       self.amp))

    def score(self) -> tuple[dict[str, float], float]:
        """Loss per source of ``eval_rows`` and the mean over every scored token (NaN: none)."""
        means, counts = self.loss_means(self.eval_rows)
        total = float(counts.sum())
        mean = float(torch.nansum(means * counts)) / total if total else float("nan")
        return dict(zip(self.eval_rows, means.tolist(), strict=True)), mean

    def validate(self, step: int) -> dict[str, Any]:
        """Score ``eval_rows`` now and append the record to ``history``."""
        self._sync()
        t0 = time.perf_counter()
        losses, mean = self.score()
        record = {"step": step, "tokens": int(self.trained_tokens().sum()), "val_loss": losses,
                  "val_loss_mean": mean}
        self.history.append(record)
        self.eval_seconds += time.perf_counter() - t0
        return record

    def trained_tokens(self) -> np.ndarray:
        """Real (non-padding) tokens trained per source so far, over every rank (collective)."""
        if self.world_size == 1:
            return self.tokens_before + self.by_source
        counts = torch.from_numpy(self.by_source.astype(np.float64))
        return self.tokens_before + global_means(torch.zeros_like(counts), counts)[1].numpy(
            ).astype(np.int64)

    def report(self) -> dict[str, Any]:
        """The run's figures so far (collective when distributed), with ``energy``: joules of
        :meth:`run` (RAPL / NVML), per token trained and as grams of CO2 at ``co2_g_per_kwh``,
        None with why when unreadable (never estimated); ``noise_scale``: the last B_simple."""
        proxy, tokens = self.proxy, self.trained_tokens()
        total, last = int(tokens.sum()), self.history[-1] if self.history else None
        energy = EnergyReading(self.joules, self.train_seconds + self.eval_seconds, {},
                               self.energy_unavailable).as_dict(total, proxy.co2_g_per_kwh)
        del energy["sources"]
        if proxy.co2_g_per_kwh is None:
            energy.update(co2_grams=None, co2_unavailable="no grid intensity given "
                          "(proxy.co2_g_per_kwh, grams of CO2 per kWh where it runs)")
        if self.world_size > 1:
            energy["scope"] = "counters of rank 0's machine (all its processes), not the others"
        noise = ({"last": self.noise_scale[-1] if self.noise_scale else None} if self.noise
                 else {"last": None, "unavailable": "off (proxy.noise_beta)" if proxy.noise_beta
                       is None else "needs two or more ranks (local vs global gradients)"})
        return {"val_loss": None if last is None else dict(last["val_loss"]),
                "val_loss_mean": None if last is None else last["val_loss_mean"],
                "train_tokens": total,
                "train_tokens_by_source": dict(zip(self.names, map(int, tokens), strict=True)),
                "history": self.history, "train_seconds": self.train_seconds,
                "device": self.device_name, "world_size": self.world_size, "energy": energy,
                "noise_scale": noise}

    def state_dict(self) -> dict[str, Any]:
        """Model (CPU copy), optimiser, loader, history, tokens trained and joules (every rank
        calls this: it sums over ranks), and the schedule, replay and noise states when on."""
        state = {"model": cpu_state(self.model), "optimizer": self.opt.state_dict(),
                 "loader": self.loader.state_dict(), "history": list(self.history),
                 "trained_tokens": self.trained_tokens().tolist(), "joules": self.joules}
        for key, part in self._parts:
            if part is not None:
                state[key] = part.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        for key, part in self._parts:
            if part is not None:
                if key not in state:
                    raise StateError(f"checkpoint: the state has no {key}, but this run's proxy "
                                     "settings keep one")
                part.load_state_dict(state[key])
        self.history = list(state.get("history", self.history))
        self.tokens_before = np.asarray(state["trained_tokens"], dtype=np.int64)
        self.by_source[:] = 0
        before = state.get("joules")
        if before is None and self.joules is not None:
            self.energy_unavailable.append("the run's part before this state: not read")
        self.joules = None if before is None or self.joules is None else before + self.joules

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read(self, k: int) -> Step | None:
        weights, fed_before = self.loader.current_weights().copy(), self.loader.fed_tokens.copy()
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
        k_src = len(self.names)
        encoder = None
        if "decoder_input_ids" in batch:  # `objectives:` encoder-decoder examples
            ids, labels, src = decoder_rows(batch)
            pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
            enc_src = batch["source_ids"]  # tokens trained: the encoder's and the targets
            self.by_source += np.bincount(enc_src[enc_src >= 0], minlength=k_src)[:k_src]
            encoder = (torch.from_numpy(batch["input_ids"]).to(self.device, non_blocking=True),
                       torch.from_numpy(batch["attention_mask"]).to(self.device,
                                                                    non_blocking=True))
            arrays = (ids, labels, np.ascontiguousarray(pos), src)
        else:
            arrays = tuple(batch[n] for n in ("input_ids", "labels", "position_ids",
                                              "source_ids"))
            src = batch["source_ids"]
        self.by_source += np.bincount(src[src >= 0], minlength=k_src)[:k_src]
        put = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays]
        prefix = (torch.from_numpy(batch["prefix_len"]).to(self.device, non_blocking=True)
                  if "prefix_len" in batch else None)  # `objectives:` prefix-LM rows
        return Step(k, planned, batch, weights, self.loader.fed_tokens - fed_before, *put,
                    replayed=replayed, prefix=prefix, encoder=encoder)

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
        self._tokens = (float(local), float(total))
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
            with autocast(self.device, self.amp):
                step.out = model(step.ids, step.labels, step.pos, **step.model_inputs())
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
