"""``mixbatch audit report|seen|tokenizer|dedup``: what a run fed, what a tokenizer reveals,
duplicates across sources. Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mixbatch.checks import positive_int
from mixbatch.cli_common import add_common

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


# ---------------------------------------------------------------------------------------------
# report, seen
# ---------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from mixbatch.audit.report import build_report
    from mixbatch.audit.trace import log_files, run_weights

    cfg = None
    if args.config:
        from mixbatch.config import load_config

        cfg = load_config(args.config)
    paths = [p for item in args.run_or_log for p in log_files(item)]
    folders = [Path(item) for item in args.run_or_log if Path(item).is_dir()]
    weights = run_weights(folders[0]) if folders else None  # a training run's weights.csv
    first = Path(args.run_or_log[0])
    dest = Path(args.out) if args.out else (first / "audit-report" if first.is_dir() else
                                            first.with_name(first.stem + "-report"))
    data, trace = build_report(paths, dest, cfg, weights)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
        return 0
    if data.get("kind") == "series":
        out.print(_series_table(data, len(paths)))
        return 0
    table = Table(title=f"audit report: {len(paths)} log(s), steps {data['first_step']}.."
                  f"{data['last_step']}", caption=f"padding {data['padding_fraction']:.2%} · "
                  f"page {data['html']}")
    for c in ("source", f"target ({trace.unit})", "tokens share", "samples share",
              f"max |dev| ({trace.unit})", "epochs"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for n, s in data["sources"].items():
        table.add_row(n, f"{s['target']:.4%}", f"{s['tokens_share']:.4%}",
                      f"{s['samples_share']:.4%}", f"{s['max_abs_prefix_deviation']:.2f}",
                      "-" if s["epochs"] is None else f"{s['epochs']:.3f}")
    out.print(table)
    if "objectives" in data:
        out.print(_objectives_table(data["objectives"]))
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.4%}"


def _series_table(data: dict[str, Any], logs: int) -> Table:
    table = Table(title=f"audit report (series): {logs} log(s), steps {data['first_step']}.."
                  f"{data['last_step']}", caption=f"{data['windows']:,} windows · page "
                                                  f"{data['html']}")
    for c in ("source", "target (windows)", "share", "max |dev| (windows)", "epochs",
              "series drawn"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for n, s in data["sources"].items():
        table.add_row(n, _pct(s["target"]), _pct(s["share"]),
                      f"{s['max_abs_prefix_deviation']:.2f}",
                      "-" if s["epochs"] is None else f"{s['epochs']:.3f}",
                      f"{s['series_drawn']:,} / {s['series_count']:,}")
    return table


def _objectives_table(od: dict[str, Any]) -> Table:
    table = Table(title=f"objectives: {od['rows']:,} rows",
                  caption=None if od["weights_known"] else "target unknown: give --config")
    for c in ("objective", "target (rows)", "rows share", "tokens share", "max |dev| (rows)"):
        table.add_column(c, justify="left" if c == "objective" else "right")
    for n, o in od["objectives"].items():
        dev = o["max_abs_prefix_deviation"]
        table.add_row(n, _pct(o["target"]), _pct(o["rows_share"]), _pct(o["tokens_share"]),
                      "-" if dev is None else f"{dev:.2f}")
    return table


def cmd_seen(args: argparse.Namespace) -> int:
    from mixbatch.audit.seen import SeenTotals, seen_spans
    from mixbatch.audit.trace import is_series_header, peek_header

    if is_series_header(peek_header(args.log)):
        return _seen_windows(args)
    totals = SeenTotals()
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for name, doc, a, e in seen_spans(args.log, args.step, args.source, totals):
            sink.write(json.dumps({"source": name, "doc": doc, "start": a, "end": e},
                                  separators=(",", ":")) + "\n")
    finally:
        if args.out:
            sink.close()
    summary: dict[str, Any] = {"step": args.step, "last_step_in_log": totals.last_step,
                               "sources": {n: {"documents": totals.documents.get(n),
                                               "tokens": totals.tokens.get(n, 0),
                                               "spans": totals.spans.get(n, 0)}
                                           for n in totals.tokens}}
    return _seen_totals(args, totals.last_step, summary, ("documents", "tokens", "spans"))


def _seen_windows(args: argparse.Namespace) -> int:
    """``audit seen`` on a series log: one line per window fed (source, series, window, and
    its values' span in the series)."""
    from mixbatch.audit.seen import SeenWindows, seen_windows

    totals = SeenWindows()
    sink = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for name, series, w, a, e in seen_windows(args.log, args.step, args.source, totals):
            sink.write(json.dumps({"source": name, "series": series, "window": w, "start": a,
                                   "end": e}, separators=(",", ":")) + "\n")
    finally:
        if args.out:
            sink.close()
    summary: dict[str, Any] = {"step": args.step, "last_step_in_log": totals.last_step,
                               "sources": {n: {"windows": totals.windows[n],
                                               "distinct_windows": totals.distinct.get(n),
                                               "series": totals.series.get(n, 0)}
                                           for n in totals.windows}}
    return _seen_totals(args, totals.last_step, summary,
                        ("windows", "distinct_windows", "series"))


def _seen_totals(args: argparse.Namespace, last_step: int, summary: dict[str, Any],
                 columns: tuple[str, ...]) -> int:
    """The totals of ``audit seen``: JSON (stderr when the lines went to stdout), or a table
    when the lines went to ``--out``."""
    if args.json:  # lines on stdout without --out: the totals go to stderr then
        (sys.stdout if args.out else sys.stderr).write(json.dumps(summary, indent=1) + "\n")
        return 0
    if args.out:
        ended = "" if last_step >= args.step else f" (the log ends at step {last_step})"
        table = Table(title=f"seen by step {args.step}{ended} → {args.out}")
        for c in ("source", *columns):
            table.add_column(c, justify="left" if c == "source" else "right")
        for n, s in summary["sources"].items():
            table.add_row(n, *("-" if s[c] is None else f"{s[c]:,}" for c in columns))
        out.print(table)
    return 0


def add_audit_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``audit report|seen|tokenizer|dedup`` on the main command."""
    p = subparsers.add_parser("audit", help="what a run fed (report, seen), what a tokenizer "
                                            "reveals of its training mix, duplicates")
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    sp = sub.add_parser("report", help="realised vs target mixture, deviation, epochs, padding, "
                                       "ranks, objectives; series: windows per series: PNGs "
                                       "and one HTML page")
    sp.add_argument("run_or_log", nargs="+", metavar="RUN_OR_LOG",
                    help="an audit log (stream --emit), or a run folder; several: one per rank")
    sp.add_argument("--config", default=None, help="check the log belongs to this config (and "
                                                   "take the objectives' weights from it when "
                                                   "the log has none)")
    sp.add_argument("--out", default=None, metavar="DIR",
                    help="where the report goes (default: LOG-report/ beside the log, or "
                         "RUN/audit-report/)")
    sp.add_argument("--json", action="store_true", help="print the report's numbers as JSON")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("seen", help="documents and token spans (series: windows) fed by step T "
                                     "(streams the log)")
    sp.add_argument("log", metavar="LOG", help="an audit log (stream --emit, or a run's)")
    sp.add_argument("--step", type=int, required=True, metavar="T", help="steps 0..T inclusive")
    sp.add_argument("--source", default=None, metavar="S", help="only this source")
    sp.add_argument("--out", default=None, metavar="F.jsonl",
                    help="write the spans here and print a table (default: spans to stdout)")
    sp.add_argument("--json", action="store_true", help="print the totals as JSON")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_seen)

    _add_more(sub)
    return p


# ---------------------------------------------------------------------------------------------
# tokenizer, dedup
# ---------------------------------------------------------------------------------------------
def cmd_tokenizer(args: argparse.Namespace) -> int:
    from mixbatch.atomic import atomic_path
    from mixbatch.audit.bpe_files import load_bpe
    from mixbatch.audit.tokenizer_mix import config_samples, infer_mixture
    from mixbatch.config import load_config
    from mixbatch.errors import ConfigError

    if args.plot and not Path(args.plot).parent.is_dir():
        raise ConfigError(f"--plot: no folder {Path(args.plot).parent} for {args.plot}")
    cfg = load_config(args.config)
    bpe = load_bpe(args.tokenizer, args.pattern)
    if len(bpe.merges) < args.merges:
        warn(f"{args.tokenizer}: {len(bpe.merges):,} merges, fewer than --merges "
             f"{args.merges:,}: all are used")
    samples = config_samples(cfg, args.sample_bytes, seed=cfg.seed)
    if not 0 < args.stable_tol < 1:
        raise ConfigError(f"--stable-tol: must be within (0, 1), got {args.stable_tol}")
    res = infer_mixture(bpe, samples, merges=args.merges, per_step=args.per_step,
                        per_pass=args.per_pass, max_passes=args.max_passes,
                        stable_passes=args.stable_passes or 0, stable_tol=args.stable_tol)
    data = res.to_dict()
    if res.solution.stopped == "stable":
        warn(f"stopped on stable shares ({args.stable_passes} passes within "
             f"{args.stable_tol:g}): rows may still be violated; the shares are not the exact "
             "LP's optimum")
    elif not res.solution.converged:
        warn(f"the LP did not converge in {args.max_passes} passes (rows still violated): the "
             "proportions are those of the last pass; raise --max-passes")
    if args.plot:
        from mixbatch.audit.report import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(res.names) + 2), 3.4))
        ax.bar(res.names, res.solution.proportions)
        ax.set_ylabel("share of training bytes")
        ax.set_title(f"inferred mixture of {Path(args.tokenizer).name} "
                     f"({res.solution.merges_used:,} merges)")
        fig.tight_layout()
        with atomic_path(args.plot) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        data["plot"] = args.plot
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
        return 0
    table = Table(title=f"mixture inferred from {args.tokenizer}",
                  caption=f"{data['merges_used']:,} of {data['merges_asked']:,} merges used · "
                          f"{data['constraints']:,} constraints · {data['passes']} passes · "
                          f"residual (total slack) {data['residual']:.4g}"
                          + ("" if data["converged"] else " · NOT converged"))
    for c in ("category", "share of bytes", "sample bytes"):
        table.add_column(c, justify="left" if c == "category" else "right")
    for n, v in data["proportions"].items():
        table.add_row(n, f"{v:.2%}", f"{data['sample_bytes'][n]:,}")
    out.print(table)
    return 0


def warn(msg: str) -> None:
    """One line on stderr: a result that stands, with something the user must know."""
    sys.stderr.write(f"mixbatch: warning: {msg}\n")


def cmd_dedup(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mixbatch.config import format_validation_error, load_config
    from mixbatch.dedup import DedupConfig, find_duplicates, source_texts
    from mixbatch.errors import ConfigError

    cfg = load_config(args.config)
    dc = getattr(cfg, "dedup", None) or DedupConfig()
    over: dict[str, Any] = {}
    if args.scope:
        over["scope"] = args.scope
    if args.threshold is not None or args.num_perm is not None or dc.near is None:
        near = dict(dc.near.model_dump()) if dc.near is not None else {}
        if args.threshold is not None:
            near["threshold"] = args.threshold
        if args.num_perm is not None:
            near["num_perm"] = args.num_perm
        over["near"] = None if args.no_near else near
    try:
        dc = DedupConfig.model_validate({**dc.model_dump(), **over})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "dedup (config and options)")) from None
    for name, src in cfg.sources.items():
        if src.is_token_data:
            raise ConfigError(f"sources.{name}: token data has no text to compare")
    dups, _ = find_duplicates({n: source_texts(cfg, n) for n in cfg.sources}, dc)
    wanted = dups.example_ids(args.examples)
    shown: dict[int, str] = {}
    if wanted:  # a second pass for the few texts shown, instead of holding every text
        g = 0
        for n in cfg.sources:
            for t in source_texts(cfg, n):
                if g in wanted:
                    shown[g] = t
                g += 1
    data = dups.report(examples=args.examples, texts=shown)
    data["settings"] = dc.model_dump(mode="json")
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
        return 0
    table = Table(title=f"duplicates ({dc.scope.value})")
    for c in ("source", "documents", "exact", "near", *dups.names):
        table.add_column(c, justify="left" if c == "source" else "right")
    for n, s in data["sources"].items():
        table.add_row(n, f"{s['documents']:,}", f"{s['exact_duplicates']:,}",
                      f"{s['near_duplicates']:,}", *(f"{data['overlap'][n][m]:,}"
                                                     for m in dups.names))
    out.print(table)
    out.print("overlap: documents of the row's source that have a duplicate in the column's")
    for ex in data["examples"]:
        out.print(f"  {ex['reason']}: {ex['dropped']['source']}#{ex['dropped']['doc']} "
                  f"= {ex['kept']['source']}#{ex['kept']['doc']}  "
                  f"{ex['dropped'].get('text', '')[:60]!r}")
    return 0


def _add_more(sub: Any) -> None:
    sp = sub.add_parser("tokenizer", help="infer a BPE tokenizer's training mixture over the "
                                          "config's sources (Hayase et al. 2024)")
    sp.add_argument("tokenizer", metavar="TOKENIZER",
                    help="tokenizer.json, merges.txt (or a folder with vocab.json + merges.txt), "
                         "a SentencePiece BPE .model, or a tiktoken ranks file")
    sp.add_argument("--config", required=True, help="its sources are the categories")
    sp.add_argument("--merges", type=positive_int, default=30_000, metavar="N",
                    help="use the first N merges (default %(default)s)")
    sp.add_argument("--sample-bytes", type=positive_int, default=10 << 20, metavar="B",
                    help="text per category (default 10 MiB)")
    sp.add_argument("--pattern", default=None, help="split regex of a tiktoken file (default: "
                                                    "GPT-2 / cl100k / o200k by vocabulary size)")
    sp.add_argument("--per-step", type=positive_int, default=10, metavar="K",
                    help="violated rows added per merge and pass (default %(default)s)")
    sp.add_argument("--per-pass", type=positive_int, default=5000, metavar="R",
                    help="rows added per pass before the LP is solved again (default "
                         "%(default)s)")
    sp.add_argument("--max-passes", type=positive_int, default=10_000, metavar="P",
                    help="stop after P solve passes; the output says whether it converged "
                         "(default %(default)s)")
    sp.add_argument("--stable-passes", type=positive_int, default=None, metavar="K",
                    help="also stop once the shares moved by at most --stable-tol over K passes "
                         "that together replayed every merge, and one more sweep of every merge "
                         "(its rows added and solved) moves them by at most that too (default: "
                         "off, the exact LP; beyond about 5,000 merges the exact LP can take "
                         "hours)")
    sp.add_argument("--stable-tol", type=float, default=1e-4, metavar="E",
                    help="largest share change that counts as stable (default %(default)s)")
    sp.add_argument("--plot", default=None, metavar="F.png", help="bar chart of the proportions")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_tokenizer)

    sp = sub.add_parser("dedup", help="exact and near duplicates within and across sources")
    sp.add_argument("config", help="the YAML config whose sources are compared")
    sp.add_argument("--scope", choices=("global", "local"), default=None,
                    help="global: across all sources (a copy in an earlier source wins); "
                         "local: inside each source only (default: the config's dedup.scope, "
                         "else global)")
    sp.add_argument("--threshold", type=float, default=None, help="near: Jaccard threshold")
    sp.add_argument("--num-perm", type=int, default=None, help="near: MinHash permutations")
    sp.add_argument("--no-near", action="store_true", help="exact duplicates only")
    sp.add_argument("--examples", type=int, default=5, help="example pairs to show")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    add_common(sp, progress=False)
    sp.set_defaults(func=cmd_dedup)
