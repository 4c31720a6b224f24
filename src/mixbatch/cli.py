"""The ``mixbatch`` command: a thin layer over the library.

Exit codes: 0 success, 1 bad data or store, 2 bad config or arguments, 130 interrupted.
A :class:`~mixbatch.errors.MixbatchError` is printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mixbatch import __version__
from mixbatch.checks import positive_int
from mixbatch.cli_common import (
    QUIET_HELP,
    VERBOSE_HELP,
    add_common,
    check_local_paths,
    progress_enabled,
)
from mixbatch.errors import ConfigError, MixbatchError
from mixbatch.logs import setup_logging

log = logging.getLogger("mixbatch.cli")

# piped output gets a wide console, so tables are not cut to 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {value!r}")
    return i, n


def _skips_line(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "-"


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
def cmd_prepare(args: argparse.Namespace) -> int:
    from mixbatch.config import load_config
    from mixbatch.io import OnError
    from mixbatch.prepare import prepare

    cfg = load_config(args.config)
    report = prepare(cfg, workers=args.workers, shard=args.shard, force=args.force,
                     on_error=OnError(args.on_error) if args.on_error else None,
                     progress=progress_enabled(args), backend=args.backend,
                     ray_address=args.ray_address)
    table = Table(title=f"prepare → {cfg.store_dir}")
    for col in ("source", "status", "files", "documents", "tokens", "skipped"):
        table.add_column(col, justify="right" if col in ("files", "documents", "tokens") else "left")
    for r in report.sources.values():
        status = r.status if r.status != "partial" else f"partial {r.units_done}/{r.units_total}"
        table.add_row(r.name, status, f"{r.files:,}", f"{r.documents:,}", f"{r.tokens:,}",
                      _skips_line(r.skipped))
    out.print(table)
    for r in report.sources.values():
        for reason, examples in r.examples.items():
            for ex in examples:
                err.print(f"skipped ({reason}): {ex}")
    rate = report.tokens / report.seconds if report.seconds else 0
    out.print(f"{report.units_run} work units in {report.seconds:.1f}s"
              + (f" ({rate / 1e6:.2f}M tokens/s overall)" if report.units_run else ""))
    return 0


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def stats_table(stats: dict, title: str) -> Table:
    table = Table(title=title)
    cols = ("source", "files", "documents", "tokens", "share", "p50", "p90", "p99", "max",
            "skipped")
    for c in cols:
        table.add_column(c, justify="left" if c in ("source", "skipped") else "right")
    for name, s in stats["sources"].items():
        table.add_row(name, f"{s['files']:,}", f"{s['documents']:,}", f"{s['tokens']:,}",
                      f"{s['share']:.1%}", f"{s['p50']:,}", f"{s['p90']:,}", f"{s['p99']:,}",
                      f"{s['max']:,}", _skips_line(s["skipped"]))
    table.add_row("total", "", f"{stats['documents']:,}", f"{stats['tokens']:,}", "100.0%",
                  "", "", "", "", "", style="bold")
    return table


def second_table(stats: dict) -> Table | None:
    """Second lengths (2-D bucketing) of the sources that have them; ``None`` if none has."""
    rows = {name: s["second"] for name, s in stats["sources"].items() if s.get("second")}
    if not rows:
        return None
    table = Table(title="second lengths")
    for c in ("source", "field", "min", "median", "mean", "p99", "max"):
        table.add_column(c, justify="left" if c in ("source", "field") else "right")
    for name, s in rows.items():
        table.add_row(name, str(s["field"]), f"{s['min']:,}", f"{s['median']:,.1f}",
                      f"{s['mean']:,.1f}", f"{s['p99']:,}", f"{s['max']:,}")
    return table


def cmd_inspect(args: argparse.Namespace) -> int:
    from mixbatch.config import load_config
    from mixbatch.stats import config_stats, open_stores, plot_lengths

    cfg = load_config(args.config)
    stats = config_stats(cfg, verify=args.verify)
    if args.plot:
        path = plot_lengths(open_stores(cfg), Path(args.plot))
        stats["plot"] = str(path)
    if args.json:
        sys.stdout.write(json.dumps(stats, indent=1) + "\n")
    else:
        out.print(stats_table(stats, f"store {stats['store']}"))
        second = second_table(stats)
        if second is not None:
            out.print(second)
        if args.plot:
            out.print(f"length histogram: {stats['plot']}")
    return 0


# ---------------------------------------------------------------------------------------------
# tokenizer train
# ---------------------------------------------------------------------------------------------
def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from mixbatch.config import load_config
    from mixbatch.tokenizer_training import train_from_config

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    path, n_docs = train_from_config(cfg, args.vocab_size, Path(args.out),
                                     max_docs=args.max_docs)
    out.print(f"trained a byte-level BPE of {args.vocab_size:,} tokens on {n_docs:,} documents "
              f"in {time.perf_counter() - t0:.1f}s → {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# stream
# ---------------------------------------------------------------------------------------------
def cmd_stream(args: argparse.Namespace) -> int:
    from mixbatch.audit.stream import run_stream
    from mixbatch.config import load_config

    cfg = load_config(args.config)
    summary = run_stream(cfg, args.steps, args.rank, args.world_size, args.state_in,
                         args.state_out, args.emit, progress_enabled(args), args.save_every)
    cut = summary.get("log_cut")
    if cut:
        err.print(f"{args.emit}: cut back to step {summary['first_step']} of the state: "
                  f"{cut['records']} record(s) written after it"
                  + (f", a torn last line of {cut['torn_bytes']} bytes" if cut["torn_bytes"]
                     else ""), markup=False, soft_wrap=True)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        return 0
    if summary.get("kind") == "series":
        from mixbatch.series.stream import series_table

        out.print(series_table(summary))
        return 0
    out.print(stream_table(summary))
    return 0


def stream_table(summary: dict) -> Table:
    unit = summary["unit"]
    first, last = summary["first_step"], summary["first_step"] + summary["steps"] - 1
    table = Table(title=f"stream: mixture of steps 0 to {last:,} (the whole stream); this call "
                  f"ran steps {first:,} to {last:,} (rank {summary['rank']} of "
                  f"{summary['world_size']})",
                  caption=("realised: what the planner decided, in its unit; shares: what "
                           "reached rows (differ by the packing window and truncation)\n"
                           f"largest prefix deviation {summary['max_prefix_deviation']:.2f} {unit}"
                           + (f" (bound: one piece, at most {summary['max_unit_length']:,} tokens)"
                              if unit == "tokens" else "")
                           + f" · padding {summary['padding_fraction']:.2%}"
                           + (f" · second-length padding {summary['second_padding_fraction']:.2%}"
                              if "second_padding_fraction" in summary else "")
                           + f" · truncated {summary['truncated_tokens']:,} tokens"
                           + (f" · skipped {summary['skipped_documents']:,} documents"
                              if summary.get("skipped_documents") else "")
                           + f" · {summary['pieces_per_document']:.2f} pieces/document"
                           + " · tokens/step {min:,}/{mean:,.0f}/{max:,}".format(
                               **summary["tokens_per_step"])
                           + f" · rank cost max/mean {summary['rank_cost_imbalance']['max']:.3f}"
                           + f" · this call {summary['tokens_per_second'] / 1e6:.2f}M tokens/s"
                           + (" · stream ended" if summary["ended"] else "")))
    for c in ("source", f"target ({unit})", f"realised ({unit})", "samples share",
              "tokens share", "documents", "tokens", "epochs"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for name, s in summary["sources"].items():
        table.add_row(name, f"{s['target']:.4%}", f"{s['realised']:.4%}",
                      f"{s['samples_share']:.2%}", f"{s['tokens_share']:.2%}",
                      f"{s['documents']:,}", f"{s['tokens']:,}", f"{s['epochs']:.3f}")
    return table


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from mixbatch.audit import summary_path
    from mixbatch.audit.stream import run_stream
    from mixbatch.config import load_config
    from mixbatch.demo import DEMO_STAGE_STEPS, build_corpus, demo_config
    from mixbatch.prepare import prepare
    from mixbatch.stats import config_stats, open_stores, plot_lengths

    work = Path(args.workdir).resolve()
    t0 = time.perf_counter()
    out.rule("[bold]mixbatch demo")
    out.print(f"1. building the built-in corpus in {work / 'corpus'}")
    corpus = build_corpus(work / "corpus", max_bytes=args.max_bytes)
    table = Table(title="built-in corpus")
    for c in ("domain", "what", "documents", "bytes", "origin"):
        table.add_column(c, justify="right" if c in ("documents", "bytes") else "left")
    for d in corpus:
        table.add_row(d.name, d.description, f"{d.documents:,}", f"{d.bytes:,}", d.origin)
    out.print(table)
    config_path = work / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(corpus, work / "store"), sort_keys=False))
    out.print(f"2. config written to {config_path}")
    cfg = load_config(config_path)
    out.print("3. mixbatch prepare (byte tokenizer, all cores)")
    report = prepare(cfg, workers=args.workers, progress=progress_enabled(args))
    out.print(f"   {report.documents:,} documents, {report.tokens:,} tokens in "
              f"{report.seconds:.1f}s")
    out.print("4. mixbatch inspect")
    stats = config_stats(cfg)
    out.print(stats_table(stats, f"store {stats['store']}"))
    plot = plot_lengths(open_stores(cfg), work / "lengths.png")
    state = work / "state.json"
    audit = work / "audit.jsonl"
    out.print(f"5. mixbatch stream, stage 1 (code-heavy): steps 0-{DEMO_STAGE_STEPS - 1}, "
              f"state saved to {state}")
    s1 = run_stream(cfg, DEMO_STAGE_STEPS, 0, 1, None, str(state), str(audit), False)
    out.print(stream_table(s1))
    out.print(f"6. resume from {state} at world size 2 and run stage 2 (annealing on prose)")
    s2 = run_stream(cfg, DEMO_STAGE_STEPS, 0, 2, str(state), str(state), str(audit), False)
    out.print(stream_table(s2))
    from mixbatch.demo.search import demo_search

    t_search = time.perf_counter()
    search = demo_search(cfg, stats, work, config_path, progress=progress_enabled(args))
    steps = 100
    out.print(f"11. mixbatch stream: {steps} steps with the chosen mixture ({search['config']})")
    s3 = run_stream(load_config(search["config"]), steps, 0, 1, None, None, None, False)
    out.print(stream_table(s3))
    out.print(f"\ndone in {time.perf_counter() - t0:.1f}s (search "
              f"{time.perf_counter() - t_search:.1f}s). Outputs:\n"
              f"  corpus  {work / 'corpus'}\n  config  {config_path}\n"
              f"  stores  {cfg.store_dir}\n  plot    {plot}\n  state   {state}\n"
              f"  audit   {audit} (one line per row fed; the run's summary in "
              f"{summary_path(audit).name})\n"
              f"  search  {search['design']} (design), {search['results']} (proxy runs),\n"
              f"          {search['mixture']} (chosen mixture), {search['config']} (config with "
              f"it),\n          {search['plots']} (plots)")
    return 0


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
CONFIG_HELP = "the YAML config file (README: Configuration)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixbatch", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"mixbatch {__version__}",
                   help="print the version and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    p.add_argument("-q", "--quiet", action="count", default=0, help=QUIET_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("prepare", help="tokenise every source into token stores")
    sp.add_argument("config", help=CONFIG_HELP)
    sp.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    sp.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                    help="prepare only the I-th of N slices of the input; a plain run merges")
    sp.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sp.add_argument("--on-error", choices=("fail", "skip"), default=None,
                    help="override every source's on_error")
    sp.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="run the work units in a local process pool or as Ray tasks")
    sp.add_argument("--ray-address", default=None,
                    help="with --backend ray: the cluster to join (default: a local instance)")
    add_common(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("inspect", help="per-source documents, tokens and length percentiles")
    sp.add_argument("config", help=CONFIG_HELP)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--plot", metavar="FILE.png", help="draw the length histogram per source")
    sp.add_argument("--verify", action="store_true", help="hash every store file in full")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_inspect)

    tp = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(
        dest="tokenizer_command", required=True, metavar="ACTION")
    sp = tp.add_parser("train", help="train a byte-level BPE on the configured sources")
    sp.add_argument("config", help=CONFIG_HELP)
    sp.add_argument("--vocab-size", type=positive_int, required=True,
                    help="tokens in the trained vocabulary (the 256 bytes included)")
    sp.add_argument("--out", required=True, metavar="PATH", help="where to write tokenizer.json")
    sp.add_argument("--max-docs", type=positive_int, default=None, help="train on at most N documents")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_tokenizer_train)

    sp = sub.add_parser("stream", help="run the loader without a model and report the mixture")
    sp.add_argument("config", help=CONFIG_HELP)
    sp.add_argument("--steps", type=positive_int, required=True,
                    help="global steps to run (after a resume: from the state's step)")
    sp.add_argument("--rank", type=int, default=None,
                    help="this process's rank (default 0, or torch.distributed's)")
    sp.add_argument("--world-size", type=int, default=None,
                    help="ranks sharing each global step (default 1, or torch.distributed's)")
    sp.add_argument("--state-in", metavar="F", help="resume from a saved state")
    sp.add_argument("--state-out", metavar="F", help="save the state at the end (atomically)")
    sp.add_argument("--save-every", type=positive_int, default=None, metavar="N",
                    help="also save the state every N steps; resume with --state-in F: the "
                    "--emit log is cut back to the state's step")
    sp.add_argument("--emit", metavar="F.jsonl", help="write the audit log (one line per row)")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_common(sp)
    sp.set_defaults(func=cmd_stream)

    from mixbatch.audit.cli import add_audit_parsers
    from mixbatch.online.cli import add_online_parsers
    from mixbatch.search.cli import add_search_parsers

    add_search_parsers(sub)
    add_online_parsers(sub)
    add_audit_parsers(sub)

    sp = sub.add_parser("demo", help="the main job end to end on the built-in corpus: prepare, "
                        "inspect, stream a two-stage schedule, a small mixture search")
    sp.add_argument("--workdir", default="demo-out",
                    help="folder for the corpus, config, stores and outputs (default: demo-out)")
    sp.add_argument("--max-bytes", type=positive_int, default=4 << 20, help="text per domain")
    sp.add_argument("--workers", type=positive_int, default=None,
                    help="processes for prepare (default: all cores)")
    add_common(sp)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        t0 = time.perf_counter()
        log.info("%s: started", args.command)
        check_local_paths(args)
        code = func(args)
        log.info("%s finished in %.1f s (exit %d)", args.command, time.perf_counter() - t0, code)
        return code
    except MixbatchError as e:
        print_error(e)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # disk full, no permission, ...: one line naming the path
        err.print(f"mixbatch: error: {os_error_line(e)}", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("mixbatch: interrupted", markup=False)
        return 130


#: what to do about an OS error, by errno
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or write somewhere else, then run again "
                  "(finished work is kept)",
    errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
    errno.EACCES: "permission denied: make it writable/readable for this user or choose "
                  "another path",
    errno.EPERM: "operation not permitted: check the owner and permissions of the path",
    errno.EROFS: "the filesystem is read-only: write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, a file was expected: give a file path",
    errno.ENAMETOOLONG: "a name is too long (at most 255 bytes per name): use a shorter one",
    errno.EEXIST: "it already exists and is in the way: move it or choose another path",
    errno.ENOENT: "it does not exist: check the path",
    errno.EIO: "the device reported an I/O error: check the disk",
}


def print_error(e: BaseException) -> None:
    """``mixbatch: error: ...`` on stderr, one line per problem the error names."""
    for line in str(e).splitlines() or [type(e).__name__]:
        if line.strip():
            err.print(f"mixbatch: error: {line}", markup=False, soft_wrap=True)


def os_error_line(e: OSError) -> str:
    """One line for an OS error: the path(s), the system's words, and what to do."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e)
    hint = _OS_HINTS.get(e.errno or -1, "")
    return (f"{where}: " if where else "") + what + (f"; {hint}" if hint else "")


def _exit() -> None:  # pragma: no cover
    sys.exit(main())


__all__ = ["ConfigError", "build_parser", "main"]
