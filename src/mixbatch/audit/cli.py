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

out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


# ---------------------------------------------------------------------------------------------
# report, seen
# ---------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from mixbatch.audit.report import write_report
    from mixbatch.audit.trace import log_files, read_trace

    cfg = None
    if args.config:
        from mixbatch.config import load_config

        cfg = load_config(args.config)
    paths = [p for item in args.run_or_log for p in log_files(item)]
    trace = read_trace(paths, cfg)
    first = Path(args.run_or_log[0])
    dest = Path(args.out) if args.out else (first if first.is_dir() else
                                            first.with_name(first.stem + "-report"))
    data = write_report(trace, dest)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
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
    return 0


def cmd_seen(args: argparse.Namespace) -> int:
    from mixbatch.audit.seen import SeenTotals, seen_spans

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
    if args.json:  # spans on stdout without --out: the totals go to stderr then
        (sys.stdout if args.out else sys.stderr).write(json.dumps(summary, indent=1) + "\n")
        return 0
    if args.out:
        ended = ("" if totals.last_step >= args.step else
                 f" (the log ends at step {totals.last_step})")
        table = Table(title=f"seen by step {args.step}{ended} → {args.out}")
        for c in ("source", "documents", "tokens", "spans"):
            table.add_column(c, justify="left" if c == "source" else "right")
        for n, s in summary["sources"].items():
            table.add_row(n, "-" if s["documents"] is None else f"{s['documents']:,}",
                          f"{s['tokens']:,}", f"{s['spans']:,}")
        out.print(table)
    return 0


def add_audit_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``audit report|seen|tokenizer|dedup`` on the main command."""
    p = subparsers.add_parser("audit", help="what a run fed (report, seen), what a tokenizer "
                                            "reveals of its training mix, duplicates")
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    sp = sub.add_parser("report", help="realised vs target mixture, deviation, epochs, padding, "
                                       "ranks: PNGs and one HTML page")
    sp.add_argument("run_or_log", nargs="+", metavar="RUN_OR_LOG",
                    help="an audit log (stream --emit), or a run folder; several: one per rank")
    sp.add_argument("--config", default=None, help="check the log belongs to this config")
    sp.add_argument("--out", default=None, metavar="DIR",
                    help="where the report goes (default: LOG-report/ beside the log, or the run "
                         "folder)")
    sp.add_argument("--json", action="store_true", help="print the report's numbers as JSON")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("seen", help="documents and token spans fed by step T (streams the log)")
    sp.add_argument("log", metavar="LOG")
    sp.add_argument("--step", type=int, required=True, metavar="T", help="steps 0..T inclusive")
    sp.add_argument("--source", default=None, metavar="S", help="only this source")
    sp.add_argument("--out", default=None, metavar="F.jsonl",
                    help="write the spans here and print a table (default: spans to stdout)")
    sp.add_argument("--json", action="store_true", help="print the totals as JSON")
    sp.set_defaults(func=cmd_seen)

    return p
