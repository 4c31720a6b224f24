"""The ``train`` and ``report`` commands (wired into ``mixbatch`` by :func:`add_online_parsers`).

``mixbatch train CONFIG --steps N [--policy NAME] [--out RUN_DIR] [--seed S] [--target SOURCE]
[--proxy PROXY.yaml|KEY=VALUE ...]`` (the proxy flags of :mod:`mixbatch.proxy_args`, as for
``search run``) trains the proxy model (:func:`mixbatch.online.train_online`) with the config's
``mixture.policy`` (or ``--policy``; ``--policy none`` for the static mixture) and writes the run
folder. A config without held-out documents (``holdout: 0``, the default) holds out
``DEFAULT_HOLDOUT`` (5%) of each source's documents for this run and says so: an online run
reports held-out loss and some policies steer by it. The steps show on a
:class:`~mixbatch.progress.StepProgress` line (``--progress``; default: on a terminal).
``mixbatch report RUN_DIR`` draws a run folder (:func:`mixbatch.online.report.write_report`).

Errors are :class:`~mixbatch.errors.MixbatchError`: the ``mixbatch`` entry point prints them
one line per problem and exits with their code (2 for a bad config or option). :func:`main` does the same
for these two commands alone (``python -m mixbatch.online.cli``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixbatch.checks import positive_int
from mixbatch.cli_common import add_common, check_local_paths, progress_mode
from mixbatch.errors import MixbatchError
from mixbatch.proxy_args import add_proxy_arguments

__all__ = ["DEFAULT_HOLDOUT", "add_online_parsers", "cmd_report", "cmd_train", "main"]

#: the held-out fraction `mixbatch train` uses when the config holds no documents out
DEFAULT_HOLDOUT = 0.05


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(highlight=False, stderr=stderr, width=None if stream.isatty() else 160)


def cmd_train(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mixbatch.config import load_config
    from mixbatch.mixture.policies.spec import PolicySpec
    from mixbatch.online.loop import resolve_policy, train_online
    from mixbatch.online.report import cost_lines
    from mixbatch.progress import StepProgress
    from mixbatch.proxy.progress import ProgressHooks
    from mixbatch.proxy_args import proxy_from_args

    cfg = load_config(args.config)
    if args.seed is not None:
        cfg = cfg.model_copy(update={"seed": args.seed})
    proxy = proxy_from_args(args, {"seed": cfg.seed})  # wrong settings: refused before any note
    err = _console(stderr=True)
    if cfg.holdout <= 0:
        cfg = cfg.model_copy(update={"holdout": DEFAULT_HOLDOUT})
        err.print(f"holdout: the config holds no documents out; holding out {DEFAULT_HOLDOUT:.0%} "
                  f"of each source's documents (at most holdout_max = {cfg.holdout_max}) for "
                  "validation and the policies' feedback (set `holdout:` to choose)", markup=False,
                  soft_wrap=True)
    names = list(cfg.sources)
    config_spec = resolve_policy(cfg, None, names)  # checks mixture.policy in any case
    policy: PolicySpec | None = config_spec
    if args.policy is not None:
        chosen = resolve_policy(cfg, args.policy, names, "--policy")
        # --policy naming the configured policy keeps its settings; another one, its defaults
        same = chosen is not None and config_spec is not None and chosen.name is config_spec.name
        policy = config_spec if same else chosen
    label = "static" if policy is None else policy.label
    run_dir = Path(args.out) if args.out else (
        Path("runs") / f"{Path(args.config).stem}-{label}-s{cfg.seed}")
    with StepProgress(proxy.steps, progress_mode(args), label="train") as line:
        result = train_online(cfg, proxy, policy or "none", target=args.target,
                              run_dir=run_dir, resume=args.resume,
                              checkpoint_every=args.checkpoint_every, audit=not args.no_audit,
                              log=line.say, extra_hooks=ProgressHooks(line))
    s = result.summary
    out = _console()
    table = Table(title=f"train: {s['policy'] or 'static mixture'}, {s['steps']} steps, "
                        f"{s['tokens']:,} tokens → {run_dir}")
    for c in ("source", "final weight", "tokens fed", "validation loss"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for n in s["sources"]:
        val = s["val_loss"][n] if s["val_loss"] else float("nan")
        table.add_row(n + (" (target)" if n == s["target"] else ""),
                      f"{s['final_weights'][n]:.4f}", f"{s['tokens_by_source'][n]:,}",
                      f"{val:.4f}")
    out.print(table)
    extra = {k: v for k, v in s["overhead_tokens"].items() if v}
    out.print(f"{s['updates']} policy updates; mean validation loss {s['val_loss_mean']:.4f}"
              + (f"; target {s['target']}: {s['target_val_loss']:.4f}" if s["target"] else "")
              + (f"; extra tokens {extra}" if extra else "")
              + f"; {s['seconds']:.1f}s")
    for key, line in cost_lines(s).items():
        out.print(f"{key}: {line}", markup=False, soft_wrap=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mixbatch.online.report import write_report

    paths = write_report(args.run_dir, args.out)
    out = _console()
    for key, path in paths.items():
        out.print(f"{key:10s} {path}")
    return 0


def add_online_parsers(subparsers: Any) -> None:
    """Register ``train`` and ``report`` on the ``mixbatch`` command's subparsers."""
    from mixbatch.mixture.policies.spec import policy_choices

    sp = subparsers.add_parser("train", help="train the proxy model with an online mixture policy")
    sp.add_argument("config", help="the YAML config (sources prepared; README: Configuration)")
    sp.add_argument("--policy", default=None, metavar="NAME",
                    help=f"{policy_choices()}, or none for the static mixture (default: the "
                         "config's mixture.policy)")
    sp.add_argument("--out", default=None, metavar="RUN_DIR",
                    help="run folder (default runs/<config>-<policy>-s<seed>)")
    sp.add_argument("--seed", type=int, default=None,
                    help="data order and model initialisation (default: the config's seed)")
    sp.add_argument("--target", default=None, metavar="SOURCE",
                    help="the source whose held-out loss is the objective")
    sp.add_argument("--resume", action="store_true",
                    help="continue from RUN_DIR/checkpoint.pt when it exists")
    sp.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="K",
                    help="also save the checkpoint every K steps")
    sp.add_argument("--no-audit", action="store_true", help="do not write audit.jsonl")
    add_proxy_arguments(sp, base="ProxyConfig's defaults (the batch shape from the config's "
                                 "batch:, seed: the run's seed)", steps_required=True)
    add_common(sp)
    sp.set_defaults(func=cmd_train)

    sp = subparsers.add_parser("report", help="plots and an HTML page of an online run folder")
    sp.add_argument("run_dir", metavar="RUN_DIR", help="the run folder that train wrote (--out)")
    sp.add_argument("--out", default=None, metavar="DIR", help="where to write (default RUN_DIR)")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixbatch", description="online mixture policies")
    add_online_parsers(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` or ``report`` as ``mixbatch`` would: one-line errors, their exit codes."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        check_local_paths(args)
        return func(args)
    except MixbatchError as e:
        from mixbatch.cli import print_error

        print_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
