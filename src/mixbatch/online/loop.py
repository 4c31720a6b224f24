"""Train a proxy model with an online mixture policy in the loop.

:func:`train_online` composes the pieces that already exist: the loader
(:class:`~mixbatch.loader.loader.MixedLoader`), the proxy model and its optimiser settings
(:mod:`mixbatch.proxy`: :class:`ProxyConfig`, the same initialisation, AdamW parameter groups,
learning-rate schedule, gradient clipping and held-out evaluation as
:func:`~mixbatch.proxy.train_proxy`), a policy (:func:`~mixbatch.mixture.policies.make_policy`),
and the feedback helpers (:mod:`mixbatch.online.feedback`). Without a policy a run is exactly a
:func:`train_proxy` run: the same model after every step.

One step ``k`` (``k`` steps done before it):

1. plan the global step with the loader's current weights, read this rank's rows;
2. forward; the per-source training loss of the batch is always measured (for the log);
3. when ``policy.due(k + 1)``, measure what the policy needs at these parameters: train loss
   per source, DoReMi's excess loss (a reference forward), per-source head gradients and the
   target's development gradient (DGA, FLAD);
4. backward (summed over ranks, so every rank takes the same step), clip, AdamW;
5. when due: Skill-It's evaluation losses (after the update, at the end of its round); all
   feedback is summed over ranks (``all_reduce_feedback``) and ``policy.observe`` is called
   with ``step = k + 1``; ``loader.set_weights(policy.weights())`` makes the planner integrate
   the new weights from its current counts from step ``k + 1`` on (no jump, exact prefixes);
6. validation loss every ``eval_every`` steps and at the end; files; checkpoint.

Every rank computes the same feedback totals, so every rank holds the same policy state and the
same weights after every update; with the gradients summed over ranks the models stay equal.
DoReMi's reference model and Skill-It's probe runs are computed on every rank (or read from the
run folder's cache); the skills graph is then taken from rank 0.
Resume (``resume=True``) restores model, optimiser, loader and policy from
``RUN_DIR/checkpoint.pt``; the continued run is identical to an uninterrupted one (on CPU,
bit for bit, with the same thread count).

The policy replaces the config's static mixture from step 0 with its own initial weights
(uniform unless its ``initial`` setting says otherwise).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mixbatch.config import Config
from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.mixture.policies import DoReMi, Feedback, Policy, PolicyName, make_policy
from mixbatch.mixture.policies.spec import NEEDS_TARGET, EvalGroups, PolicySpec, parse_policy
from mixbatch.online.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    check_same_run,
    load_checkpoint,
)
from mixbatch.online.feedback import (
    HeadInput,
    eval_sums,
    global_means,
    head_grad_sums,
    rank_rows,
    source_sums,
    target_grad_sums,
)
from mixbatch.online.probes import probe_graph
from mixbatch.online.reference import reference_model, save_torch
from mixbatch.online.runfiles import RunFiles
from mixbatch.online.splits import HeldoutSplit, eval_rows, heldout_split
from mixbatch.proxy.evaluate import EvalRows
from mixbatch.proxy.model import ModelConfig, ProxyLM
from mixbatch.proxy.train import ProxyConfig, _device, _param_groups, _with_batch, lr_at

__all__ = ["SUMMARY_FORMAT", "OnlineResult", "resolve_policy", "train_online"]

SUMMARY_FORMAT = "mixbatch.online.summary/1"
NO_POLICY = "none"


@dataclass
class OnlineResult:
    """What one call of :func:`train_online` did (the run folder holds the whole run)."""

    summary: dict[str, Any]
    weights: np.ndarray  # [steps of this call, K]: the target weights of each step
    train_loss: np.ndarray  # [steps of this call, K]: per-source train loss (NaN: absent)
    updates: list[tuple[int, list[float]]]  # (steps done, weights after the update)
    history: list[dict[str, Any]]  # validation records of the whole run
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def resolve_policy(cfg: Config, policy: Any, names: list[str], where: str = "policy"
                   ) -> PolicySpec | None:
    """The policy of a run: ``None`` reads ``cfg.mixture.policy``; ``"none"`` is a static
    mixture; a name, a mapping or a :class:`PolicySpec` is checked with :func:`parse_policy`."""
    if policy is None:
        return parse_policy(cfg.mixture.policy, names, "mixture.policy")
    if isinstance(policy, str) and policy.strip().lower() == NO_POLICY:
        return None
    return parse_policy(policy, names, where)


def _amp(proxy: ProxyConfig, device: torch.device) -> torch.dtype | None:
    if device.type == "cuda" and proxy.bf16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _unit(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero and NaN rows kept as they are)."""
    norms = rows.norm(dim=-1, keepdim=True)
    ok = torch.isfinite(norms) & (norms > 0)
    return torch.where(ok, rows / torch.where(ok, norms, torch.ones_like(norms)), rows)


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Signals:
    """What measuring a policy's feedback takes besides the model: its reference model, the
    development rows of its target and evaluation groups (this rank's share), tokens spent."""

    def __init__(self, policy: Policy, spec: PolicySpec) -> None:
        self.policy = policy
        self.spec = spec
        self.needs = policy.needs
        self.reference: ProxyLM | None = None
        self.target_rows: EvalRows | None = None
        self.groups: dict[str, EvalRows] = {}
        self.overhead = {"reference": 0, "probes": 0}


def _build_policy(spec: PolicySpec, cfg: Config, proxy: ProxyConfig, loader: MixedLoader,
                  splits: dict[str, HeldoutSplit], model_cfg: ModelConfig,
                  init_state: dict[str, torch.Tensor], run_path: Path | None,
                  device: torch.device, log: Callable[[str], None] | None
                  ) -> tuple[Policy, _Signals]:
    """The policy with the run-length defaults, and what its feedback needs: Skill-It's graph
    (probe runs unless given) and evaluation rows, DoReMi's reference model, the target's
    development rows. Reference and probe runs are computed on every rank (or read from the
    run folder's cache); the graph is then taken from rank 0."""
    names = loader.names
    seq_len = cfg.batch.seq_len
    steps = proxy.steps
    target = spec.target
    settings = spec.policy_settings(steps)
    groups: list[str] = []
    spent_probes = 0
    if spec.name is PolicyName.SKILLIT:
        if spec.eval_groups() is EvalGroups.TARGET:
            if target is None:
                raise ConfigError("mixture.policy.eval: 'target' needs a target: give --target "
                                  "SOURCE, or use eval: all")
            groups = [target]
        else:
            groups = names
        dev_groups = eval_rows(loader, splits, groups, "dev", seq_len, proxy.eval_tokens)
        if "graph" not in settings:
            scratch = ProxyLM(model_cfg).to(device)
            graph, spent_probes = probe_graph(cfg, proxy, init_state, scratch, dev_groups,
                                              spec.probe_steps_for(steps), run_path, device, log)
            settings["graph"] = _broadcast(graph.tolist())
        elif len(settings["graph"][0]) != len(groups):
            raise ConfigError(f"mixture.policy.graph: has {len(settings['graph'][0])} columns, "
                              f"but the evaluation groups are {groups} (eval: "
                              f"{spec.eval_groups().value})")
    try:
        pol = make_policy(spec.name, len(names), **settings)
    except ConfigError as e:
        raise ConfigError(f"mixture.policy: {e}") from None
    sig = _Signals(pol, spec)
    sig.overhead["probes"] = spent_probes
    rank, world = loader.rank, loader.world_size
    if groups:
        sig.groups = {g: rank_rows(r, rank, world) for g, r in dev_groups.items()}
    if sig.needs & {"excess_loss", "ref_loss"}:
        sig.reference, sig.overhead["reference"] = reference_model(
            cfg, proxy, model_cfg, spec.loop_options(steps)["reference_steps"], spec.reference,
            run_path, device, log)
    if "target_grad" in sig.needs:
        assert target is not None
        # one batch's worth of development tokens (at most eval_tokens): its gradient costs
        # about one training step's forward
        budget = min(proxy.eval_tokens, cfg.batch.batch_size * seq_len)
        rows = eval_rows(loader, splits, [target], "dev", seq_len, budget)
        sig.target_rows = rank_rows(rows[target], rank, world)
    return pol, sig


def train_online(cfg: Config, proxy: ProxyConfig | None = None, policy: Any = None, *,
                 target: str | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, stop_at: int | None = None,
                 checkpoint_every: int | None = None, audit: bool = True,
                 log: Callable[[str], None] | None = None) -> OnlineResult:
    """Train a proxy on ``cfg``'s sources with an online policy choosing the mixture.

    Args:
        cfg: the config (sources prepared, ``holdout`` > 0). Its ``seed`` orders the data.
        proxy: model and optimiser (default :class:`ProxyConfig`); ``proxy.steps`` is the run's
            length, ``proxy.seed`` the initialisation, ``proxy.eval_every`` the validation
            cadence (default: ten evaluations per run, and always at the end).
        policy: ``None``: ``cfg.mixture.policy``; ``"none"``: the config's static mixture; or a
            policy name, a ``mixture.policy`` mapping, a :class:`PolicySpec`.
        target: the source whose held-out loss is the objective (overrides the policy's
            ``target``); DGA and FLAD need one.
        run_dir: where the run's files go (``mixbatch.online.runfiles``); None writes nothing.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists.
        stop_at: stop after this many steps done (the schedule still spans ``proxy.steps``):
            a deliberate interruption, e.g. to test resume.
        checkpoint_every: also save the checkpoint every this many steps (it is always saved
            at the end of the call when there is a run folder).
        audit: write the audit log of the rows fed.
        log: called with progress lines (reference training, probes).

    Raises:
        ConfigError: a bad policy or target, ``holdout`` 0, too few held-out documents.
        StateError: a checkpoint written by other settings.
    """
    t_start = time.perf_counter()
    proxy = proxy or ProxyConfig()
    if cfg.holdout <= 0:
        raise ConfigError("holdout: online runs report held-out loss and some policies steer by "
                          "it, but the config holds no documents out (holdout is 0); set "
                          "`holdout:` to a fraction, e.g. `holdout: 0.1`")
    names = list(cfg.sources)
    spec = resolve_policy(cfg, policy, names)
    if target is not None and target not in names:
        raise ConfigError(f"target: unknown source {target!r} (sources: {', '.join(names)})")
    if spec is not None:
        spec = spec.with_target(target)
        target = spec.target
        if spec.name in NEEDS_TARGET and target is None:
            raise ConfigError(f"mixture.policy: policy {spec.label!r} steers towards a target "
                              "domain's held-out loss; give --target SOURCE (or "
                              "mixture.policy.target)")
    cfg = _with_batch(cfg, proxy)
    seq_len = cfg.batch.seq_len
    run_path = Path(run_dir) if run_dir is not None else None
    loader = MixedLoader(cfg)  # rank and world size from torch.distributed when initialised
    rank, world = loader.rank, loader.world_size
    k_src = len(names)
    steps = proxy.steps
    eval_every = proxy.eval_every or max(1, steps // 10)
    device = _device(proxy)
    amp = _amp(proxy, device)
    old_threads = torch.get_num_threads()
    if proxy.threads is not None:
        torch.set_num_threads(proxy.threads)
    files: RunFiles | None = None
    capture: HeadInput | None = None
    try:
        mcfg = proxy.model_for(loader.stores[0].vocab_size, seq_len)
        with torch.random.fork_rng(devices=[]):  # as train_proxy: leave the caller's RNG alone
            torch.manual_seed(proxy.seed)
            model = ProxyLM(mcfg)
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.to(device).train()
        opt = torch.optim.AdamW(_param_groups(model, proxy.weight_decay), lr=proxy.lr,
                                betas=(proxy.beta1, proxy.beta2),
                                **({"fused": True} if device.type == "cuda" else {}))
        splits = heldout_split(loader)
        val_rows = {n: rank_rows(r, rank, world) for n, r in
                    eval_rows(loader, splits, names, "val", seq_len, proxy.eval_tokens).items()}

        pol: Policy | None = None
        sig: _Signals | None = None
        overhead = {"reference": 0, "probes": 0}
        if spec is not None:
            pol, sig = _build_policy(spec, cfg, proxy, loader, splits, mcfg, init_state,
                                     run_path, device, log)
            overhead = dict(sig.overhead)
            if "grads" in sig.needs:
                capture = HeadInput(model)

        # where and how fast it runs may change on resume; what it computes may not
        run_key = {"proxy": proxy.model_dump(mode="json",
                                             exclude={"threads", "device", "eval_batch_rows"}),
                   "policy": None if spec is None else spec.label,
                   "settings": None if pol is None else pol.settings_dict(),
                   "loop": None if spec is None else spec.loop_options(steps),
                   "target": target}
        start = 0
        history: list[dict[str, Any]] = []
        last_fed = loader.fed_tokens.copy()  # tokens per source at the last feedback
        resumed = False
        ckpt_path = None if run_path is None else run_path / CHECKPOINT_FILE
        if resume and ckpt_path is not None and ckpt_path.exists():
            ck = load_checkpoint(ckpt_path)
            check_same_run(ck["run"], run_key, ckpt_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            loader.load_state_dict(ck["loader"])
            if pol is not None:
                pol.load_state_dict(ck["policy"])
            start = int(ck["step"])
            history = list(ck["history"])
            overhead = {k: overhead[k] + int(ck["overhead"].get(k, 0)) for k in overhead}
            last_fed = np.asarray(ck["fed_at_feedback"], dtype=np.int64)
            resumed = True
        elif pol is not None:
            loader.set_weights(pol.weights())
        files = RunFiles(run_path, names, rank, world, start if resumed else None, audit)

        end = steps if stop_at is None else max(start, min(stop_at, steps))
        weights_log: list[np.ndarray] = []
        train_log: list[np.ndarray] = []
        updates: list[tuple[int, list[float]]] = []
        done = start
        ended = False
        t_train = time.perf_counter()
        eval_seconds = 0.0

        def validate(step: int) -> dict[str, Any]:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            s, c = eval_sums(model, val_rows, device, proxy.eval_batch_rows, amp)
            means, counts = global_means(s, c)
            record = {"step": step, "tokens": int(loader.fed_tokens.sum()),
                      "val_loss": {n: float(means[i]) for i, n in enumerate(names)},
                      "val_loss_mean": float(torch.nansum(means * counts)
                                             / counts.sum().clamp(min=1))}
            history.append(record)
            eval_seconds += time.perf_counter() - t0
            return record

        def checkpoint(step: int) -> None:
            if ckpt_path is None or rank != 0:
                return
            save_torch({
                "format": CHECKPOINT_FORMAT, "step": step, "run": run_key,
                "loader": loader.state_dict(),
                "policy": None if pol is None else pol.state_dict(),
                "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "history": history, "overhead": overhead,
                "fed_at_feedback": last_fed.tolist(),
            }, ckpt_path)

        for k in range(start, end):
            weights = loader.current_weights().copy()
            fed_before = loader.fed_tokens.copy()
            planned = loader.next_step()
            if planned is None:
                ended = True  # the stream ended (max_epochs caps with on_exhausted: stop)
                break
            fed_step = loader.fed_tokens - fed_before
            batch = loader.batch_of(planned)
            files.audit(planned.plan.select_rows(planned.rows), planned.index, rank)
            ids = torch.from_numpy(batch["input_ids"]).to(device, non_blocking=True)
            labels = torch.from_numpy(batch["labels"]).to(device, non_blocking=True)
            pos = torch.from_numpy(batch["position_ids"]).to(device, non_blocking=True)
            src = torch.from_numpy(batch["source_ids"]).to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(k, proxy)
            due = pol is not None and pol.due(k + 1)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(ids, labels, pos)
            assert out.losses is not None and out.mask is not None
            if world == 1:
                loss = out.loss
            else:  # this rank's share of the global token mean: the summed gradients are exact
                total = out.mask.sum().to(torch.float64).reshape(1)
                dist.all_reduce(total)
                loss = out.losses.sum() / total.clamp(min=1).to(out.losses.dtype)
            train_means, train_counts = global_means(*source_sums(out.losses, src, out.mask,
                                                                  k_src))
            fb: dict[str, Any] = {}
            if due:
                assert sig is not None
                fb = _batch_feedback(sig, model, out.losses, out.mask, ids, labels, pos, src,
                                     train_means, train_counts, capture, device, amp, proxy)
            loss.backward()
            if world > 1:
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
            if proxy.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), proxy.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = k + 1
            if due:
                assert pol is not None and sig is not None
                if "eval_loss" in sig.needs:
                    s, c = eval_sums(model, sig.groups, device, proxy.eval_batch_rows, amp)
                    fb["eval_loss"] = global_means(s, c)[0].numpy()
                fed = loader.fed_tokens
                pol.observe(Feedback(step=done, tokens=int(fed.sum()), counts=fed - last_fed,
                                     **fb))
                last_fed = fed.copy()
                new = pol.weights()
                loader.set_weights(new)
                updates.append((done, new.tolist()))
                files.update(done, new)
            val = validate(done) if done % eval_every == 0 or done == steps else None
            tm = train_means.numpy()
            train_mean = float(np.nansum(tm * train_counts.numpy()) / max(train_counts.sum(), 1))
            files.step(k, weights, fed_step, int(loader.fed_tokens.sum()), train_mean, tm,
                       None if val is None else val["val_loss"],
                       None if val is None else val["val_loss_mean"])
            weights_log.append(weights)
            train_log.append(tm)
            if checkpoint_every and done % checkpoint_every == 0 and done < end:
                files.flush()
                checkpoint(done)
        if ended and done > start and (not history or history[-1]["step"] != done):
            validate(done)  # the stream ran out before the last step: score what was trained
        train_seconds = time.perf_counter() - t_train - eval_seconds
        if done > start or not resumed:
            checkpoint(done)
        summary = _summary(cfg, proxy, spec, pol, target, names, loader, history, overhead,
                           done, ended, rank, world, device, run_key,
                           time.perf_counter() - t_start, train_seconds)
        files.summary(summary)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return OnlineResult(
            summary=summary,
            weights=np.array(weights_log).reshape(-1, k_src),
            train_loss=np.array(train_log).reshape(-1, k_src),
            updates=updates, history=copy.deepcopy(history), state=state)
    finally:
        if capture is not None:
            capture.close()
        if files is not None:
            files.close()
        if proxy.threads is not None:
            torch.set_num_threads(old_threads)


def _batch_feedback(sig: _Signals, model: ProxyLM, losses: torch.Tensor, mask: torch.Tensor,
                    ids: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor,
                    src: torch.Tensor, train_means: torch.Tensor, train_counts: torch.Tensor,
                    capture: HeadInput | None, device: torch.device, amp: torch.dtype | None,
                    proxy: ProxyConfig) -> dict[str, Any]:
    """The feedback measured on this step's batch at the current parameters (before the update)."""
    k_src = len(train_means)
    needs = sig.needs
    fb: dict[str, Any] = {"observed": (train_counts > 0).numpy()}
    if "train_loss" in needs:
        fb["train_loss"] = train_means.numpy()
    if sig.reference is not None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16,
                                             enabled=amp is not None):
            ref = sig.reference(ids, labels, pos).losses
        assert ref is not None
        excess = (losses.detach() - ref).clamp(min=0)  # DoReMi clips per token
        fb["excess_loss"] = global_means(*source_sums(excess, src, mask, k_src))[0].numpy()
        if "ref_loss" in needs:
            fb["ref_loss"] = global_means(*source_sums(ref, src, mask, k_src))[0].numpy()
    if "grads" in needs:
        assert capture is not None and capture.value is not None
        grads = global_means(*head_grad_sums(model, capture.value, labels, src, k_src))[0]
        if sig.spec.name is PolicyName.DGA and sig.spec.normalize_grads:
            grads = _unit(grads)
        fb["grads"] = grads.numpy()
    if "target_grad" in needs:
        assert sig.target_rows is not None
        s, c = target_grad_sums(model, sig.target_rows, device, proxy.eval_batch_rows, amp)
        tg = global_means(s[None], c)[0]
        if sig.spec.name is PolicyName.DGA and sig.spec.normalize_grads:
            tg = _unit(tg)
        fb["target_grad"] = tg[0].numpy()
    return fb


def _summary(cfg: Config, proxy: ProxyConfig, spec: PolicySpec | None, pol: Policy | None,
             target: str | None, names: list[str], loader: MixedLoader,
             history: list[dict[str, Any]], overhead: Mapping[str, int], done: int, ended: bool,
             rank: int, world: int, device: torch.device, run_key: dict[str, Any],
             seconds: float, train_seconds: float) -> dict[str, Any]:
    last = history[-1] if history else None
    fed = loader.fed_tokens
    weights = loader.current_weights()
    return {
        "format": SUMMARY_FORMAT,
        "policy": None if spec is None else spec.label,
        "settings": run_key["settings"],
        "loop": run_key["loop"],
        "target": target,
        "sources": names,
        "seed": cfg.seed,
        "proxy": proxy.model_dump(mode="json"),
        "steps": done,
        "steps_planned": proxy.steps,
        "stream_ended": ended,
        "tokens": int(fed.sum()),
        "tokens_by_source": {n: int(t) for n, t in zip(names, fed, strict=True)},
        "final_weights": {n: float(w) for n, w in zip(names, weights, strict=True)},
        "updates": 0 if pol is None else pol.updates,
        # DoReMi's output for a main run: the average of the weights over its updates
        "averaged_weights": ({n: float(w) for n, w in zip(names, pol.averaged_weights(),
                                                          strict=True)}
                             if isinstance(pol, DoReMi) else None),
        "val_loss": None if last is None else last["val_loss"],
        "val_loss_mean": None if last is None else last["val_loss_mean"],
        "target_val_loss": None if last is None or target is None else last["val_loss"][target],
        "history": history,
        "overhead_tokens": dict(overhead),
        "seconds": seconds,
        "train_seconds": train_seconds,
        "world_size": world,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }
