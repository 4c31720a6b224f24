"""Train a proxy model with an online mixture policy in the loop.

:func:`train_online` is a run of the one proxy trainer (:class:`mixbatch.proxy.Trainer`) with
the policy's hooks (:class:`_PolicyHooks`); without a policy it is exactly a
:func:`~mixbatch.proxy.train_proxy` run, the same model after every step. In each step ``k``
(``k`` steps done before it) the hooks add, around the trainer's forward, backward and update:

- before the backward: the per-source training loss of the batch (always, for the log) and,
  when ``policy.due(k + 1)``, what the policy needs at these parameters: train loss, DoReMi's
  excess loss (a reference forward), per-source gradients and the target's development
  gradient (DGA, FLAD) (:mod:`mixbatch.online.feedback`);
- after the update, when due: Skill-It's evaluation losses, ``policy.observe`` with
  ``step = k + 1``, and ``loader.set_weights(policy.weights())``, from whose current counts
  the planner integrates the new weights (no jump, exact prefixes); then the run files and
  periodic checkpoints.

Feedback is summed over ranks, so every rank holds the same policy state and weights. DoReMi's
reference model and Skill-It's probe runs are computed on every rank (or read from the run
folder's cache); the skills graph is then taken from rank 0. ``resume=True`` restores model,
optimiser, loader and policy from ``RUN_DIR/checkpoint.pt``: the continued run is identical to
an uninterrupted one (on CPU, bit for bit, with the same thread count). The policy replaces the
config's static mixture from step 0 with its initial weights (uniform unless ``initial``).
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
from mixbatch.lock import FolderLock
from mixbatch.mixture.policies import DoReMi, Feedback, Policy, PolicyName, make_policy
from mixbatch.mixture.policies.spec import (
    NEEDS_TARGET,
    EvalGroups,
    GradScope,
    PolicySpec,
    parse_policy,
)
from mixbatch.online.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    check_same_run,
    load_checkpoint,
    save_torch,
)
from mixbatch.online.feedback import (
    HeadInput,
    full_grad_sums,
    head_grad_sums,
    rank_rows,
    source_sums,
    target_grad_sums,
)
from mixbatch.online.probes import probe_graph
from mixbatch.online.reference import reference_model
from mixbatch.online.runfiles import RunFiles
from mixbatch.online.splits import HeldoutSplit, eval_rows, heldout_split
from mixbatch.proxy.evaluate import EvalRows, global_means
from mixbatch.proxy.model import ProxyLM
from mixbatch.proxy.settings import ProxyConfig
from mixbatch.proxy.trainer import Hooks, Step, Trainer, cpu_state, require_holdout

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


def _build_policy(spec: PolicySpec, t: Trainer, splits: dict[str, HeldoutSplit],
                  init_state: dict[str, torch.Tensor], run_path: Path | None,
                  log: Callable[[str], None] | None) -> tuple[Policy, _Signals]:
    """The policy with the run-length defaults, and what its feedback needs: Skill-It's graph
    (probe runs unless given) and evaluation rows, DoReMi's reference model, the target's
    development rows. Reference and probe runs are computed on every rank (or read from the
    run folder's cache); the graph is then taken from rank 0."""
    cfg, proxy, loader, device = t.cfg, t.proxy, t.loader, t.device
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
            scratch = ProxyLM(t.model_cfg).to(device)
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
            cfg, proxy, t.model_cfg, spec.loop_options(steps)["reference_steps"], spec.reference,
            run_path, device, log)
    if "target_grad" in sig.needs:
        assert target is not None
        # one batch's worth of development tokens (at most eval_tokens): its gradient costs
        # about one training step's forward
        budget = min(proxy.eval_tokens, cfg.batch.batch_size * seq_len)
        rows = eval_rows(loader, splits, [target], "dev", seq_len, budget)
        sig.target_rows = rank_rows(rows[target], rank, world)
    return pol, sig


class _PolicyHooks(Hooks):
    """The online part of each step of the trainer: the per-source train loss of the batch, the
    policy's feedback and update when due, the run files, periodic checkpoints."""

    def __init__(self, t: Trainer, pol: Policy | None, sig: _Signals | None,
                 capture: HeadInput | None, files: RunFiles, last_fed: np.ndarray,
                 checkpoint: Callable[[int], None], checkpoint_every: int | None,
                 end: int) -> None:
        self.t, self.pol, self.sig, self.capture, self.files = t, pol, sig, capture, files
        self.last_fed = last_fed  # tokens per source at the last feedback
        self.checkpoint, self.checkpoint_every, self.end = checkpoint, checkpoint_every, end
        self.weights_log: list[np.ndarray] = []
        self.train_log: list[np.ndarray] = []
        self.updates: list[tuple[int, list[float]]] = []
        self.due = False
        self.fb: dict[str, Any] = {}
        self.train_means = self.train_counts = torch.zeros(0)

    def before_forward(self, step: Step) -> None:
        planned = step.planned
        self.files.audit(planned.plan.select_rows(planned.rows), planned.index, self.t.rank)
        self.due = self.pol is not None and self.pol.due(step.done)

    def before_backward(self, step: Step) -> None:
        out = step.out
        assert out is not None and out.losses is not None and out.mask is not None
        self.train_means, self.train_counts = global_means(
            *source_sums(out.losses, step.src, out.mask, len(self.t.names)))
        self.fb = {}
        if self.due:
            assert self.sig is not None
            self.fb = _batch_feedback(self.sig, self.t, step, self.train_means,
                                      self.train_counts, self.capture)

    def after_update(self, step: Step, record: dict[str, Any] | None) -> None:
        t, done = self.t, step.done
        if self.due:
            assert self.pol is not None and self.sig is not None
            if "eval_loss" in self.sig.needs:
                self.fb["eval_loss"] = t.loss_means(self.sig.groups)[0].numpy()
            fed = t.loader.fed_tokens
            self.pol.observe(Feedback(step=done, tokens=int(fed.sum()),
                                      counts=fed - self.last_fed, **self.fb))
            self.last_fed = fed.copy()
            new = self.pol.weights()
            t.loader.set_weights(new)
            self.updates.append((done, new.tolist()))
            self.files.update(done, new)
        tm = self.train_means.numpy()
        counts = self.train_counts.numpy()
        train_mean = float(np.nansum(tm * counts) / max(counts.sum(), 1))
        self.files.step(step.index, step.weights, step.fed, int(t.loader.fed_tokens.sum()),
                        train_mean, tm, None if record is None else record["val_loss"],
                        None if record is None else record["val_loss_mean"])
        self.weights_log.append(step.weights)
        self.train_log.append(tm)
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.end:
            self.checkpoint(done)


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
    require_holdout(cfg, "online runs report held-out loss and some policies steer by it")
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
    run_path = Path(run_dir) if run_dir is not None else None
    files: RunFiles | None = None
    capture: HeadInput | None = None
    with Trainer(cfg, proxy, distributed=True) as t:
        proxy, loader, rank, world = t.proxy, t.loader, t.rank, t.world_size
        steps = proxy.steps
        init_state = cpu_state(t.model)
        splits = heldout_split(loader)
        t.eval_rows = {n: rank_rows(r, rank, world) for n, r in eval_rows(
            loader, splits, names, "val", t.cfg.batch.seq_len, proxy.eval_tokens).items()}
        pol: Policy | None = None
        sig: _Signals | None = None
        overhead = {"reference": 0, "probes": 0}
        if spec is not None:
            pol, sig = _build_policy(spec, t, splits, init_state, run_path, log)
            overhead = dict(sig.overhead)
            if "grads" in sig.needs and spec.grads is GradScope.HEAD:
                capture = HeadInput(t.model)
        # where and how fast it runs may change on resume; what it computes may not
        run_key = {"proxy": proxy.model_dump(mode="json",
                                             exclude={"threads", "device", "eval_batch_rows"}),
                   "policy": None if spec is None else spec.label,
                   "settings": None if pol is None else pol.settings_dict(),
                   "loop": None if spec is None else spec.loop_options(steps),
                   "target": target}
        start = 0
        last_fed = loader.fed_tokens.copy()
        ckpt_path = None if run_path is None else run_path / CHECKPOINT_FILE
        resumed = bool(resume and ckpt_path is not None and ckpt_path.exists())
        if resumed:
            assert ckpt_path is not None
            ck = load_checkpoint(ckpt_path)
            check_same_run(ck["run"], run_key, ckpt_path)
            t.load_state_dict(ck)
            if pol is not None:
                pol.load_state_dict(ck["policy"])
            start = int(ck["step"])
            t.history = list(ck["history"])
            overhead = {k: overhead[k] + int(ck["overhead"].get(k, 0)) for k in overhead}
            last_fed = np.asarray(ck["fed_at_feedback"], dtype=np.int64)
        elif pol is not None:
            loader.set_weights(pol.weights())
        # one run per folder: a second `train --out` on it is refused, naming this process
        lock = (FolderLock(run_path, "run folder").acquire()
                if run_path is not None and rank == 0 else None)
        try:
            files = RunFiles(run_path, names, rank, world, start if resumed else None, audit)
            if files.torn and log is not None:
                log("resume: dropped torn last lines (the run was killed while writing them): "
                    + ", ".join(f"{f} {n}" for f, n in files.torn.items()))
            end = steps if stop_at is None else max(start, min(stop_at, steps))

            def checkpoint(step: int) -> None:
                if ckpt_path is None:
                    return
                files.flush()  # the files hold every whole row up to the checkpoint's step
                state = t.state_dict()  # on every rank: it sums the tokens trained over ranks
                if rank == 0:
                    save_torch({"format": CHECKPOINT_FORMAT, "step": step, "run": run_key,
                                **state, "policy": None if pol is None else pol.state_dict(),
                                "history": t.history, "overhead": overhead,
                                "fed_at_feedback": hooks.last_fed.tolist()}, ckpt_path)

            hooks = _PolicyHooks(t, pol, sig, capture, files, last_fed, checkpoint,
                                 checkpoint_every, end)
            done, ended = t.run(start, end, hooks, proxy.eval_every or max(1, steps // 10))
            if done > start or not resumed:
                checkpoint(done)
            summary = _summary(t, spec, pol, target, t.history, overhead, done, ended, run_key,
                               time.perf_counter() - t_start)
            summary["torn_lines"] = files.torn
            files.summary(summary)
        finally:
            if capture is not None:
                capture.close()
            if files is not None:
                files.close()
            if lock is not None:
                lock.release()
        k_src = len(names)
        return OnlineResult(
            summary=summary, weights=np.array(hooks.weights_log).reshape(-1, k_src),
            train_loss=np.array(hooks.train_log).reshape(-1, k_src), updates=hooks.updates,
            history=copy.deepcopy(t.history), state=cpu_state(t.model))


def _batch_feedback(sig: _Signals, t: Trainer, step: Step, train_means: torch.Tensor,
                    train_counts: torch.Tensor, capture: HeadInput | None) -> dict[str, Any]:
    """The feedback measured on this step's batch at the current parameters (before the update)."""
    assert step.out is not None and step.out.losses is not None and step.out.mask is not None
    model, device, amp = t.model, t.device, t.amp
    losses, mask, labels, src = step.out.losses, step.out.mask, step.labels, step.src
    k_src = len(train_means)
    needs = sig.needs
    fb: dict[str, Any] = {"observed": (train_counts > 0).numpy()}
    if "train_loss" in needs:
        fb["train_loss"] = train_means.numpy()
    if sig.reference is not None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.bfloat16,
                                             enabled=amp is not None):
            ref = sig.reference(step.ids, labels, step.pos).losses
        assert ref is not None
        excess = (losses.detach() - ref).clamp(min=0)  # DoReMi clips per token
        fb["excess_loss"] = global_means(*source_sums(excess, src, mask, k_src))[0].numpy()
        if "ref_loss" in needs:
            fb["ref_loss"] = global_means(*source_sums(ref, src, mask, k_src))[0].numpy()
    full = sig.spec.name is PolicyName.DGA and sig.spec.grads is GradScope.FULL
    if "grads" in needs:
        if full:
            sums = full_grad_sums(model, losses, mask, src, k_src)
        else:
            assert capture is not None and capture.value is not None
            sums = head_grad_sums(model, capture.value, labels, src, k_src)
        grads = global_means(*sums)[0]
        if sig.spec.name is PolicyName.DGA and sig.spec.normalize_grads:
            grads = _unit(grads)
        fb["grads"] = grads.numpy()
    if "target_grad" in needs:
        assert sig.target_rows is not None
        s, c = target_grad_sums(model, sig.target_rows, device, t.proxy.eval_batch_rows, amp,
                                full)
        tg = global_means(s[None], c)[0]
        if sig.spec.name is PolicyName.DGA and sig.spec.normalize_grads:
            tg = _unit(tg)
        fb["target_grad"] = tg[0].numpy()
    return fb


def _summary(t: Trainer, spec: PolicySpec | None, pol: Policy | None, target: str | None,
             history: list[dict[str, Any]], overhead: Mapping[str, int], done: int, ended: bool,
             run_key: dict[str, Any], seconds: float) -> dict[str, Any]:
    cfg, proxy, loader, names = t.cfg, t.proxy, t.loader, t.names
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
        "holdout": cfg.holdout,
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
        "train_seconds": t.train_seconds,
        "world_size": t.world_size,
        "device": t.device_name,
    }
