"""Train a proxy model with an online mixture policy in the loop.

:func:`train_online` is a run of the one proxy trainer with the policy's hooks; without a
policy it is exactly a :func:`~mixbatch.proxy.train_proxy` run. Before each backward: the
batch's per-source training loss and, when ``policy.due(k + 1)``, the policy's feedback at these
parameters (:mod:`mixbatch.online.feedback`); after the update, when due: ``policy.observe``
and ``loader.set_weights(policy.weights())`` (integrated from the planner's current counts: no
jump, exact prefixes). ``resume=True`` continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mixbatch.audit.log import log_header
from mixbatch.audit.stream import objectives_header
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
from mixbatch.online import checkpoint, feedback
from mixbatch.online.feedback import HeadInput, rank_rows, source_sums
from mixbatch.online.probes import probe_graph
from mixbatch.online.reference import reference_model
from mixbatch.online.runfiles import RunFiles
from mixbatch.online.splits import eval_rows, heldout_split
from mixbatch.proxy.evaluate import EvalRows, autocast, global_means
from mixbatch.proxy.hooks import chain_hooks
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


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity outside torch.distributed)."""
    box = [obj]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


class _PolicyHooks(Hooks):
    """The online part of each step: the batch's per-source train loss, the policy's feedback
    and update when due, the run files, checkpoints. Built with the policy (run-length defaults)
    and what its feedback needs: Skill-It's graph (probe runs unless given; rank 0's) and rows,
    DoReMi's reference model, the target's development rows."""

    def __init__(self, t: Trainer, spec: PolicySpec | None, target: str | None,
                 run_path: Path | None, log: Callable[[str], None] | None) -> None:
        self.t, self.spec = t, spec
        self.pol: Policy | None = None
        self.reference: ProxyLM | None = None
        self.target_rows: EvalRows | None = None
        self.groups: dict[str, EvalRows] = {}
        self.capture: HeadInput | None = None
        self.overhead = {"reference": 0, "probes": 0}  # tokens spent on other runs
        self.last_fed = t.loader.fed_tokens.copy()  # tokens per source at the last feedback
        self.weights_log: list[np.ndarray] = []
        self.train_log: list[np.ndarray] = []
        self.updates: list[tuple[int, list[float]]] = []
        self.due, self.fb = False, {}
        self.train_means = self.train_counts = torch.zeros(0)
        self.files = RunFiles(None, t.names)  # nothing written until train_online sets them
        self.ckpt_path = None if run_path is None else run_path / checkpoint.CHECKPOINT_FILE
        self.checkpoint_every, self.end = None, t.proxy.steps
        proxy, loader, seq_len, steps = t.proxy, t.loader, t.cfg.batch.seq_len, t.proxy.steps
        splits = heldout_split(loader)
        t.eval_rows = {n: rank_rows(r, t.rank, t.world_size) for n, r in eval_rows(
            loader, splits, t.names, "val", seq_len, proxy.eval_tokens).items()}
        if spec is not None:
            settings, groups = spec.policy_settings(steps), []
            if spec.name is PolicyName.SKILLIT:
                if spec.eval_groups() is EvalGroups.TARGET and target is None:
                    raise ConfigError("mixture.policy.eval: 'target' needs a target: give --target "
                                      "SOURCE, or use eval: all")
                groups = [target] if spec.eval_groups() is EvalGroups.TARGET else t.names
                dev = eval_rows(loader, splits, groups, "dev", seq_len, proxy.eval_tokens)
                if "graph" not in settings:
                    graph, self.overhead["probes"] = probe_graph(
                        t, dev, spec.probe_steps_for(steps), run_path, log)
                    settings["graph"] = _broadcast(graph.tolist())
                elif len(settings["graph"][0]) != len(groups):
                    raise ConfigError(f"mixture.policy.graph: has {len(settings['graph'][0])} "
                                      f"columns, but the evaluation groups are {groups} (eval: "
                                      f"{spec.eval_groups().value})")
                self.groups = {g: rank_rows(r, t.rank, t.world_size) for g, r in dev.items()}
            try:
                self.pol = make_policy(spec.name, len(t.names), **settings)
            except ConfigError as e:
                raise ConfigError(f"mixture.policy: {e}") from None
            if self.pol.needs & {"excess_loss", "ref_loss"}:
                self.reference, self.overhead["reference"] = reference_model(
                    t, spec.loop_options(steps)["reference_steps"], spec.reference, run_path, log)
            if "target_grad" in self.pol.needs:
                assert target is not None  # one batch's worth of development tokens at most
                rows = eval_rows(loader, splits, [target], "dev", seq_len,
                                 min(proxy.eval_tokens, t.cfg.batch.step_positions))
                self.target_rows = rank_rows(rows[target], t.rank, t.world_size)
            if "grads" in self.pol.needs and spec.grads is GradScope.HEAD:
                self.capture = HeadInput(t.model)
        # where and how fast it runs may change on resume; what it computes may not
        self.run_key = {
            "proxy": proxy.model_dump(mode="json", exclude={"threads", "device", "eval_batch_rows",
                                                            "co2_g_per_kwh"}),
            "policy": None if spec is None else spec.label,
            "settings": None if self.pol is None else self.pol.settings_dict(),
            "loop": None if spec is None else spec.loop_options(steps),
            "target": target}

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        self.files.close()

    def before_forward(self, step: Step) -> None:
        self.files.audit(step, int(self.t.loader.step), self.t.rank)
        self.due = self.pol is not None and self.pol.due(step.done)

    def before_backward(self, step: Step) -> None:
        out, k_src = step.out, len(self.t.names)
        assert out is not None and out.losses is not None and out.mask is not None
        self.train_means, self.train_counts = global_means(
            *source_sums(out.losses, step.src, out.mask, k_src))
        self.fb = self._feedback(step, out.losses, out.mask, k_src) if self.due else {}

    def _feedback(self, step: Step, losses: torch.Tensor, mask: torch.Tensor, k_src: int
                  ) -> dict[str, Any]:
        """What the policy needs, measured on this step's batch at the current parameters."""
        t, pol, spec = self.t, self.pol, self.spec
        assert pol is not None and spec is not None
        needs = pol.needs
        fb: dict[str, Any] = {"observed": (self.train_counts > 0).numpy()}
        if "train_loss" in needs:
            fb["train_loss"] = self.train_means.numpy()
        if self.reference is not None:
            with torch.no_grad(), autocast(t.device, t.amp):
                ref = self.reference(step.ids, step.labels, step.pos, **step.model_inputs()).losses
            assert ref is not None
            excess = (losses.detach() - ref).clamp(min=0)  # DoReMi clips per token
            fb["excess_loss"] = global_means(*source_sums(excess, step.src, mask, k_src))[0].numpy()
            if "ref_loss" in needs:
                fb["ref_loss"] = global_means(*source_sums(ref, step.src, mask, k_src))[0].numpy()
        full = spec.name is PolicyName.DGA and spec.grads is GradScope.FULL
        cosine = spec.name is PolicyName.DGA and spec.normalize_grads  # rows to unit norm
        unit = (lambda g: F.normalize(g, dim=-1)) if cosine else (lambda g: g)
        if "grads" in needs:
            if full:
                sums = feedback.full_grad_sums(t.model, losses, mask, step.src, k_src)
            else:
                assert self.capture is not None and self.capture.value is not None
                sums = feedback.head_grad_sums(t.model, self.capture.value, step.labels, step.src,
                                               k_src)
            fb["grads"] = unit(global_means(*sums)[0]).numpy()
        if "target_grad" in needs:
            assert self.target_rows is not None
            s, c = feedback.target_grad_sums(t.model, self.target_rows, t.device,
                                             t.proxy.eval_batch_rows, t.amp, full)
            fb["target_grad"] = unit(global_means(s[None], c)[0])[0].numpy()
        return fb

    def after_update(self, step: Step, record: dict[str, Any] | None) -> None:
        t, done = self.t, step.done
        if self.due:
            assert self.pol is not None
            if "eval_loss" in self.pol.needs:
                self.fb["eval_loss"] = t.loss_means(self.groups)[0].numpy()
            fed = t.loader.fed_tokens
            self.pol.observe(Feedback(step=done, tokens=int(fed.sum()),
                                      counts=fed - self.last_fed, **self.fb))
            self.last_fed = fed.copy()
            new = self.pol.weights()
            t.loader.set_weights(new)
            self.updates.append((done, new.tolist()))
            self.files.update(done, new)
        means, counts = self.train_means.numpy(), self.train_counts.numpy()
        self.files.step(step.index, step.weights, step.fed, int(t.loader.fed_tokens.sum()),
                        float(np.nansum(means * counts) / max(counts.sum(), 1)), means, record,
                        t.noise_scale[-1] if t.noise is not None else None)
        self.weights_log.append(step.weights)
        self.train_log.append(means)
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.end:
            self.save(done)

    def save(self, step: int) -> None:
        """Save the run's state at ``step`` (every rank sums the tokens trained; rank 0 saves)."""
        if self.ckpt_path is None:
            return
        self.files.flush()  # the files hold every whole row up to the checkpoint's step
        state = self.t.state_dict()
        if self.t.rank == 0:
            checkpoint.save_torch({
                "format": checkpoint.CHECKPOINT_FORMAT, "step": step, "run": self.run_key, **state,
                "policy": None if self.pol is None else self.pol.state_dict(),
                "overhead": self.overhead, "fed_at_feedback": self.last_fed.tolist()},
                self.ckpt_path)

    def start(self, resume: bool) -> int | None:
        """The checkpoint's step, loaded when ``resume`` finds one; else None (a fresh start)."""
        if not (resume and self.ckpt_path is not None and self.ckpt_path.exists()):
            if self.pol is not None:
                self.t.loader.set_weights(self.pol.weights())
            return None
        ck = checkpoint.load_checkpoint(self.ckpt_path)
        checkpoint.check_same_run(ck["run"], self.run_key, self.ckpt_path)
        self.t.load_state_dict(ck)
        if self.pol is not None:
            self.pol.load_state_dict(ck["policy"])
        self.overhead = {k: v + int(ck["overhead"].get(k, 0)) for k, v in self.overhead.items()}
        self.last_fed = np.asarray(ck["fed_at_feedback"], dtype=np.int64)
        return int(ck["step"])


def train_online(cfg: Config, proxy: ProxyConfig | None = None, policy: Any = None, *,
                 target: str | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, stop_at: int | None = None,
                 checkpoint_every: int | None = None, audit: bool = True,
                 log: Callable[[str], None] | None = None,
                 extra_hooks: Hooks | None = None) -> OnlineResult:
    """Train a proxy on ``cfg``'s sources with an online policy choosing the mixture.

    Args:
        cfg: the config (sources prepared, ``holdout`` > 0). Its ``seed`` orders the data.
        proxy: model and optimiser; ``proxy.eval_every`` defaults to ten validations a run.
        policy: ``None``: ``cfg.mixture.policy``; ``"none"``: the config's static mixture; or a
            policy name, a ``mixture.policy`` mapping, a :class:`PolicySpec`.
        target: the source whose held-out loss is the objective (DGA and FLAD need one).
        run_dir: where the run's files go (``mixbatch.online.runfiles``); None writes nothing.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists.
        stop_at: stop after this many steps done (the schedule still spans ``proxy.steps``).
        checkpoint_every: also checkpoint every this many steps (always at the end of a call).
        audit: write the audit log of the rows fed.
        log: called with progress lines (reference training, probes).
        extra_hooks: more trainer hooks, called after the policy's at each point of a step
            (``mixbatch train``'s progress line: :class:`mixbatch.proxy.progress.ProgressHooks`).

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
    with Trainer(cfg, proxy, distributed=True) as t:
        hooks = _PolicyHooks(t, spec, target, run_path, log)
        loader, steps, pol = t.loader, t.proxy.steps, hooks.pol
        resumed_at = hooks.start(resume)
        start = resumed_at or 0
        # one run per folder: a second `train --out` on it is refused, naming this process
        lock = (FolderLock(run_path, "run folder").acquire()
                if run_path is not None and t.rank == 0 else None)
        try:
            files = hooks.files = RunFiles(run_path, names, t.rank, t.world_size, resumed_at,
                                           audit, noise=t.noise is not None,
                                           stream_step=None if resumed_at is None
                                           else int(loader.step),
                                           header={**log_header(loader),
                                                   **objectives_header(loader)})
            if files.torn and log is not None:
                log("resume: dropped torn last lines (the run was killed while writing them): "
                    + ", ".join(f"{f} {n}" for f, n in files.torn.items()))
            hooks.checkpoint_every = checkpoint_every
            hooks.end = end = steps if stop_at is None else max(start, min(stop_at, steps))
            done, ended = t.run(start, end, chain_hooks(hooks, extra_hooks),
                                t.proxy.eval_every or max(1, steps // 10))
            if done > start or resumed_at is None:
                hooks.save(done)
            fed, last = loader.fed_tokens, t.history[-1] if t.history else None
            summary = {
                "format": SUMMARY_FORMAT, **{k: hooks.run_key[k] for k in ("policy", "settings", "loop")},
                "target": target, "sources": names, "seed": cfg.seed, "holdout": cfg.holdout,
                "proxy": t.proxy.model_dump(mode="json"), "steps": done, "steps_planned": steps,
                "stream_ended": ended, "tokens": int(fed.sum()),
                "tokens_by_source": dict(zip(names, map(int, fed), strict=True)),
                "final_weights": dict(zip(names, map(float, loader.current_weights()), strict=True)),
                "updates": 0 if pol is None else pol.updates,
                # DoReMi's output for a main run: the average of the weights over its updates
                "averaged_weights": dict(zip(names, map(float, pol.averaged_weights()), strict=True))
                if isinstance(pol, DoReMi) else None,
                "target_val_loss": None if last is None or target is None
                else last["val_loss"][target],
                **t.report(), "overhead_tokens": dict(hooks.overhead),
                "seconds": time.perf_counter() - t_start, "torn_lines": files.torn}
            files.summary(summary)
        finally:
            hooks.close()
            if lock is not None:
                lock.release()
        return OnlineResult(
            summary=summary, weights=np.array(hooks.weights_log).reshape(-1, len(names)),
            train_loss=np.array(hooks.train_log).reshape(-1, len(names)), updates=hooks.updates,
            history=copy.deepcopy(t.history), state=cpu_state(t.model))
