"""Population Based Training of mixtures on Ray Tune: ``mixbatch search pbt``.

"Population Based Training of Neural Networks" (Jaderberg et al. 2017) trains a population in
parallel and, every ``interval`` steps, lets the worse members *exploit* (copy the state and
hyperparameters of a better one: truncation selection, the bottom ``quantile`` copies a member
of the top ``quantile``) and *explore* (perturb the copied hyperparameters). Here the members
are proxy runs (:mod:`mixbatch.search.pbt_member`), the hyperparameters are the mixture
weights, and the scheduler is Ray Tune's ``PopulationBasedTraining`` in its synchronous form
(every member reaches step ``k * interval`` before any is exploited). Exploit copies model,
optimiser and the loader's exact state; explore perturbs the weights on the simplex
(:mod:`mixbatch.search.pbt_explore`); the copied member continues from the copied state under
its lineage's ``schedule:`` with the new weights as the open last stage.

The result is the winning member's (lowest mean held-out loss at the last step) weight
history as a mixbatch ``schedule:`` (``OUT/schedule.yaml``), a config that ``mixbatch stream``
replays exactly (``OUT/config.yaml``: the input config with that schedule and the proxy's batch
shape, paths made absolute) and ``OUT/pbt.json`` (settings, every member's final loss and
lineage, the winner's validation records and one digest per step it trained on).

**Deterministic** for a seed, as far as Ray allows: the starting weights come from ``seed``;
each synchronous round reseeds the donor choice (Ray draws it from Python's ``random``, saved
and restored around the round) and the explore draws from ``(seed, step)``; members train with
one torch thread, so on CPU the proxies are bit-identical run to run. What Ray leaves open:
losses that tie exactly are ordered by Tune's trial order; on a cluster the proxies' kernels
may differ by node (CUDA reductions, other CPUs).

**Resumable**: every round is recorded as it is decided (``OUT/pbt_rounds.json``, the members'
states under ``OUT/rounds/``) and ``resume=True`` (``--resume``) continues an interrupted
search from its last recorded round to the result of the uninterrupted one
(:mod:`mixbatch.search.pbt_state`, which also says why Tune's ``Tuner.restore`` is not used).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mixbatch.atomic import write_json, write_text
from mixbatch.checks import integer, positive_int, real
from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError
from mixbatch.search.pbt_state import RoundLog, identity

__all__ = ["Interrupt", "PBTResult", "PBTSettings", "add_pbt_parser", "run_pbt",
           "run_pbt_search"]


@dataclass(frozen=True)
class PBTSettings:
    """A PBT search: ``population`` members of ``steps`` proxy steps each, exploit/explore
    every ``interval`` steps. ``resample``: the share of explore steps that draw fresh weights
    instead of perturbing; ``quantile``: the share of the population that exploits (and the
    share it copies from); ``workers``: members training at a time (Ray CPUs, default
    ``min(population, cores)``)."""

    population: int
    interval: int
    steps: int
    seed: int = 0
    resample: float = 0.25
    quantile: float = 0.25
    workers: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        population = integer("--population", self.population, lo=1)
        if population < 2:
            raise ConfigError(f"--population: PBT needs at least 2 members (one to copy from, "
                              f"one to copy), got {population}")
        steps = integer("--steps", self.steps, lo=1)
        interval = integer("--interval", self.interval, lo=1)
        if interval >= steps:
            raise ConfigError(f"--interval: {interval} steps between exploits is not less than "
                              f"the run's {steps} steps: no member would ever be exploited")
        integer("--seed", self.seed)
        real("--resample", self.resample, lo=0.0, hi=1.0)
        real("--quantile", self.quantile, lo=0.0, hi=0.5, lo_open=True)
        if self.workers is not None:
            integer("--workers", self.workers, lo=1)

    @property
    def rounds(self) -> int:
        return math.ceil(self.steps / self.interval)


@dataclass
class PBTResult:
    names: list[str]
    winner: int
    val_loss: float  # the winner's mean held-out loss at the last step
    schedule: list[dict[str, Any]]  # the winner's `mixture.schedule`
    members: list[dict[str, Any]]  # member, val_loss, steps, stages (lineage)
    winner_record: dict[str, Any] = field(repr=False)  # stages, fed digests, history
    exploits: int = 0  # exploits in all (pbt.json lists them: step, member, copied_from)
    seconds: float = 0.0  # this run's (a resumed search: since the resume)
    paths: dict[str, str] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)  # steps the search was resumed from


@dataclass
class Interrupt:
    """Stop a search part way, as an interrupted one stops (tests of ``--resume``): ``member``
    raises on reaching step ``step`` (a member's failure), or, with ``member`` None, the driver
    stops every member once the round at ``step`` is recorded (as Ctrl-C does)."""

    step: int
    member: int | None = None


def _first_weights(cfg: Config) -> np.ndarray:
    """The config's mixture at step 0 (member 0 starts there)."""
    from mixbatch.loader.loader import MixedLoader

    return MixedLoader(cfg, rank=0, world_size=1).current_weights()


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def _start_ray(settings: PBTSettings) -> bool:
    from mixbatch.search.backends import check_ray

    ray = check_ray()
    if ray.is_initialized():
        return False
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        workers = settings.workers or min(settings.population, os.cpu_count() or 1)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return True


def _fit(setup: Any, settings: PBTSettings, log: RoundLog, storage: Path,
         halt_at: int | None) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, int]]]:
    """Run the population on Tune from ``log.step``; return ``(member, final checkpoint)`` per
    member and every exploit (``member`` copied ``copied_from``'s state of step ``step``).

    Raises:
        StateError: a member failed, or the run stopped before the last step (Ctrl-C): one
            line that says how far the record goes and how to resume.
    """
    from ray import tune

    from mixbatch.search.pbt_member import (
        CHECKPOINT_FILE,
        read_member_checkpoint,
        train_member,
    )
    from mixbatch.search.pbt_scheduler import mixture_pbt

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's old, quiet reporter at verbose 0
    scheduler, stop = mixture_pbt(settings, list(setup.cfg.sources), setup.inits, log, halt_at)
    trainable = tune.with_resources(tune.with_parameters(train_member, setup=setup), {"cpu": 1})
    name = f"pbt-from-step-{log.step}" if log.step else "pbt"
    shutil.rmtree(storage / name, ignore_errors=True)  # an earlier, interrupted attempt's
    tuner = tune.Tuner(
        trainable, param_space={"member": tune.grid_search(list(range(settings.population)))},
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"member_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0,
                                  stop=stop,
                                  failure_config=tune.FailureConfig(max_failures=0,
                                                                    fail_fast=True)))
    quiet = logging.getLogger("ray.tune")  # restarts warn of log files a checkpoint lacks
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        grid = tuner.fit()
    finally:
        quiet.setLevel(level)
    recorded = (f"{len(log.rounds)} of {settings.rounds - 1} rounds are recorded in {log.path}: "
                f"resume with `mixbatch search pbt CONFIG --out {log.out} --resume`")
    members: list[tuple[int, dict[str, Any]]] = []
    # grid order is member order; a member that never started (fail_fast) has no config
    results = [(int(r.config["member"]) if r.config else i, r) for i, r in enumerate(grid)]
    for me, r in results:
        if r.error is not None:
            raise StateError(f"search pbt: member {me} failed: {_one_line(r.error)}; "
                             f"{recorded}")
    for me, r in sorted(results, key=lambda x: x[0]):
        if r.checkpoint is not None:
            with r.checkpoint.as_directory() as d:
                members.append((me, read_member_checkpoint(Path(d) / CHECKPOINT_FILE)))
        if r.checkpoint is None or not (members[-1][1]["step"] >= settings.steps
                                        or r.metrics.get("stream_ended")):
            raise StateError(f"search pbt: interrupted (member {me} stopped before step "
                             f"{settings.steps}); {recorded}")
    return members, sorted(scheduler.exploits, key=lambda e: (e["step"], e["member"]))


def _replay_config(cfg: Config, proxy: Any, schedule: list[dict[str, Any]]) -> Config:
    """The config the trainer runs with this schedule (the proxy's batch shape included)."""
    from mixbatch.proxy.trainer import Trainer
    from mixbatch.search.pbt_lineage import with_schedule

    with Trainer(with_schedule(cfg, schedule), proxy) as t:
        return t.cfg


def run_pbt_search(cfg: Config, proxy: Any, settings: PBTSettings, out: str | Path,
                   keep_checkpoints: bool = False, *, resume: bool = False,
                   interrupt: Interrupt | None = None) -> PBTResult:
    """Run a PBT search of mixtures (module docstring) and write its results under ``out``;
    with ``resume``, continue the interrupted search recorded there (the same config, proxy
    and settings) from its last recorded round, to the result the uninterrupted search gives.
    ``interrupt`` stops the search part way (:class:`Interrupt`; tests).

    Raises:
        ConfigError: bad settings, no held-out documents, an online policy in the config,
            Ray missing.
        StateError: a member failed or the search was interrupted (one line: how far the
            record goes, how to resume); ``resume`` without a search to resume in ``out``, one
            that finished, or one made with another config, proxy or settings (naming what
            differs); a fresh search where an unfinished one is recorded.
    """
    from mixbatch.proxy.trainer import require_holdout
    from mixbatch.search.pbt_explore import initial_population
    from mixbatch.search.pbt_lineage import absolute_dump, schedule_block, write_replay_config
    from mixbatch.search.pbt_member import MemberSetup

    t0 = time.perf_counter()
    require_holdout(cfg, "PBT scores members on held-out documents")
    if cfg.mixture.policy is not None:
        raise ConfigError("mixture.policy: PBT sets the mixture weights itself; remove the "
                          "online policy from the config")
    proxy = proxy.model_copy(update={"steps": settings.steps, "threads": proxy.threads or 1})
    names = list(cfg.sources)
    out = Path(out)
    ident = identity(absolute_dump(cfg), proxy.model_dump(mode="json"), settings)
    if resume:
        log = RoundLog.for_resume(out, ident)
        log.resumed()
    else:
        log = RoundLog.start(out, ident, initial_population(
            names, _first_weights(cfg), settings.population,
            np.random.default_rng(settings.seed)))
    inits = log.initial_weights
    weights, starts = log.restart()
    fault = None if interrupt is None or interrupt.member is None else \
        (interrupt.member, interrupt.step)
    setup = MemberSetup(cfg, proxy, settings.interval, weights, str(log.rounds_dir.resolve()),
                        starts, fault)
    storage = out / "ray"
    started = _start_ray(settings)
    try:
        members, exploits = _fit(setup, settings, log, storage, None if interrupt is None or
                                 interrupt.member is not None else interrupt.step)
    finally:
        if started:
            import ray

            ray.shutdown()
    final = max(m["step"] for _, m in members)
    score = [(m["history"][-1]["val_loss_mean"] if m["step"] == final else math.inf, i)
             for i, m in members]
    best_score, winner = min(score)
    rec = dict(members)[winner]
    schedule = schedule_block(rec["stages"])
    rows = [{"member": i, "val_loss": m["history"][-1]["val_loss_mean"], "steps": m["step"],
             "stages": m["stages"]} for i, m in members]
    paths = {"schedule": str(out / "schedule.yaml"), "config": str(out / "config.yaml"),
             "report": str(out / "pbt.json")}
    head = (f"chosen by mixbatch search pbt: member {winner} of {settings.population}, "
            f"{settings.steps} steps, exploit/explore every {settings.interval}, seed "
            f"{settings.seed}; held-out mean loss {best_score:.6g}")
    write_text(paths["schedule"], "".join(f"# {ln}\n" for ln in head.splitlines())
               + yaml.safe_dump({"mixture": {"unit": cfg.mixture.unit.value,
                                             "schedule": schedule}}, sort_keys=False))
    write_replay_config(_replay_config(cfg, proxy, schedule), paths["config"],
                        head + f"\nreplay: mixbatch stream {paths['config']} --steps "
                               f"{rec['step']}")
    result = PBTResult(names, winner, float(best_score), schedule, rows,
                       {k: rec[k] for k in ("stages", "fed", "history", "step")},
                       exploits=len(exploits), seconds=time.perf_counter() - t0, paths=paths,
                       resumed_at=list(log.data["resumed_at"]))
    write_json(paths["report"], {
        "settings": {**settings.__dict__, "proxy": proxy.model_dump(mode="json")},
        "names": names, "initial_weights": inits, "winner": winner, "val_loss": best_score,
        "schedule": schedule, "members": rows, "winner_record": result.winner_record,
        "exploits": exploits, "resumed_at": result.resumed_at, "seconds": result.seconds})
    log.finish(paths)
    if not keep_checkpoints:
        shutil.rmtree(storage, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _probability(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value!r}")
    return v


def add_pbt_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pbt`` on ``mixbatch search``'s subcommands."""
    from mixbatch.cli_common import add_common
    from mixbatch.proxy_args import add_proxy_arguments
    from mixbatch.search.cli import PROXY_BASE

    sp = subparsers.add_parser("pbt", help="Population Based Training of the mixture on Ray "
                                           "Tune: a schedule that stream replays")
    sp.add_argument("config", help="config whose sources (prepared, holdout > 0) the members "
                                   "train on; member 0 starts on its mixture")
    sp.add_argument("--population", type=positive_int, metavar="N",
                    help="members (at least 2; required unless --resume)")
    sp.add_argument("--interval", type=positive_int, metavar="STEPS",
                    help="proxy steps between two exploit/explore rounds (< --steps; required "
                         "unless --resume)")
    sp.add_argument("--out", required=True, metavar="DIR",
                    help="schedule.yaml, config.yaml (replay with stream) and pbt.json; "
                         "pbt_rounds.json and rounds/ while it runs")
    sp.add_argument("--resume", action="store_true",
                    help="continue the interrupted search in DIR from its last recorded round "
                         "(settings and proxy as recorded; flags given must match them)")
    sp.add_argument("--seed", type=int, default=None,
                    help="starting weights and explore draws (default 0)")
    sp.add_argument("--resample", type=_probability, default=None, metavar="P",
                    help="share of explores that draw fresh weights (default 0.25)")
    sp.add_argument("--quantile", type=_probability, default=None, metavar="Q",
                    help="share of members that copy a better one (default 0.25)")
    sp.add_argument("--workers", type=positive_int, default=None,
                    help="members training at a time (default: population, at most the cores)")
    sp.add_argument("--ray-address", metavar="ADDR", default=None,
                    help="an existing Ray cluster (default: start a local one); members then "
                         "need the store at the same path on every node")
    sp.add_argument("--keep-checkpoints", action="store_true",
                    help="keep Tune's member checkpoints under DIR/ray")
    add_common(sp, progress=False)
    add_proxy_arguments(sp, base=PROXY_BASE)
    sp.set_defaults(func=run_pbt)
    return sp


def search_of_args(args: argparse.Namespace) -> tuple[Config, Any, PBTSettings]:
    """The config, proxy and settings of ``search pbt``'s flags; with ``--resume`` the
    settings and proxy recorded in ``--out``, overridden by the flags given (a difference is
    then refused by :func:`run_pbt_search`, naming it)."""
    from mixbatch.config import load_config
    from mixbatch.proxy_args import proxy_from_args
    from mixbatch.search.cli import proxy_of_args
    from mixbatch.search.pbt_state import STATE_FILE

    cfg = load_config(args.config)
    given = {k: getattr(args, k) for k in ("population", "interval", "seed", "resample",
                                           "quantile") if getattr(args, k) is not None}
    if args.resume:
        saved = RoundLog.read(args.out)
        if saved is None:
            raise StateError(f"{args.out}: no PBT search to resume (no {STATE_FILE}); start "
                             "one without --resume")
        ident = saved.data["identity"]
        proxy = proxy_from_args(args, ident["proxy"])  # flags given override the record
        values = {**ident["settings"], **given}
    else:
        for flag in ("population", "interval"):
            if flag not in given:
                raise ConfigError(f"--{flag}: required to start a search (only --resume reads "
                                  f"it from {args.out})")
        proxy = proxy_of_args(args)
        values = {"seed": 0, "resample": 0.25, "quantile": 0.25, **given}
    settings = PBTSettings(**{**values, "steps": proxy.steps}, workers=args.workers,
                           ray_address=args.ray_address)
    return cfg, proxy, settings


def run_pbt(args: argparse.Namespace) -> int:
    """``mixbatch search pbt``: run (or resume), print the members and the winner's
    schedule."""
    from rich.console import Console
    from rich.table import Table

    cfg, proxy, settings = search_of_args(args)
    res = run_pbt_search(cfg, proxy, settings, args.out, keep_checkpoints=args.keep_checkpoints,
                         resume=args.resume)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    members = Table(title=f"search pbt: {settings.population} members x {settings.steps} "
                          f"steps, every {settings.interval} steps",
                    caption=f"{res.exploits} exploits in all; {res.seconds:.1f}s"
                            + (f" (resumed from step {res.resumed_at[-1]})" if res.resumed_at
                               else ""))
    for c in ("member", "held-out mean loss", "stages", "copies"):
        members.add_column(c, justify="right")
    for m in sorted(res.members, key=lambda m: m["val_loss"]):
        copies = sum(1 for s in m["stages"] if s["copied_from"] != s["member"])
        mark = " (winner)" if m["member"] == res.winner else ""
        members.add_row(f"{m['member']}{mark}", f"{m['val_loss']:.4f}", str(len(m["stages"])),
                        str(copies))
    out.print(members)
    sched = Table(title=f"winner's schedule → {res.paths['schedule']}",
                  caption=f"replay: mixbatch stream {res.paths['config']} --steps "
                          f"{res.winner_record['step']}; report {res.paths['report']}")
    sched.add_column("until step", justify="right")
    for n in res.names:
        sched.add_column(n, justify="right")
    for s in res.schedule:
        sched.add_row(str(s.get("until_step", "end")), *(f"{s['weights'][n]:.3f}"
                                                          for n in res.names))
    out.print(sched)
    return 0
