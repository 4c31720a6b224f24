"""``mixbatch stream``: run the loader without a model, log what it feeds, and summarise it.

A stream resumes the way a training run does. With ``save_every`` the loader's state is saved
(atomically) every that many steps, after the audit log has been flushed and ``fsync``-ed up to
that step, so the log on disk never falls behind a saved state. A resumed run cuts the log back
to the state's step (:func:`mixbatch.audit.log.cut_log`) before it appends: whatever point a
kill interrupted, the resumed log equals an uninterrupted run's, row for row.

The final state is saved before the summary is written; a failed save (disk full, no
permission) leaves the previous state file whole, so the work up to its step is kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.atomic import write_text
from mixbatch.errors import ConfigError
from mixbatch.series.config import is_series_config
from mixbatch.series.stream import run_series_stream

__all__ = ["run_stream", "save_loader_state", "stream_summary"]


def save_loader_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a loader state atomically (fsync, then rename): the old file or the new one."""
    write_text(path, json.dumps(state, indent=1) + "\n")


def run_steps(loader: Any, steps: int, feed: Callable[[Any], tuple[int, int]], writer: Any,
              state_out: str | None, save_every: int | None,
              progress: bool) -> tuple[int, int, float]:
    """Take ``steps`` steps of ``loader``, ``feed(step)`` building each batch and logging it
    (it returns the step's rows and real tokens); save the state every ``save_every`` steps
    and at the end (the log synced first: it may run ahead of the state, never behind); the
    writer is closed in any case. Returns (steps done, tokens fed, seconds)."""
    from mixbatch.progress import RateProgress

    def save() -> None:
        if writer is not None:
            writer.sync()
        save_loader_state(loader.state_dict(), state_out)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    fed = done = 0
    try:
        with RateProgress("streaming", total=steps, enabled=progress) as bar:
            for step in loader.steps(steps):
                rows, n_real = feed(step)
                fed += n_real
                bar.add(rows, n_real)
                bar.advance()
                done += 1
                if save_every is not None and done % save_every == 0 and done < steps:
                    save()
        if state_out:
            save()
    finally:
        if writer is not None:
            writer.close()
    return done, fed, time.perf_counter() - t0


def run_stream(cfg: Any, steps: int, rank: int | None, world_size: int | None,
               state_in: str | None, state_out: str | None, emit: str | None, progress: bool,
               save_every: int | None = None) -> dict[str, Any]:
    """Run the loader without a model for ``steps`` steps; return the summary that ``stream``
    prints (with ``log_cut``: what a resume cut from the log, if anything)."""
    from mixbatch.audit.log import AuditWriter, cut_log, log_header
    from mixbatch.loader.loader import MixedLoader, load_state

    if save_every is not None and (save_every < 1 or not state_out):
        raise ConfigError("--save-every: needs --state-out and a number of steps >= 1")
    if is_series_config(cfg):  # (context, horizon) windows, logged as (source, window)
        return run_series_stream(cfg, steps, rank, world_size, state_in, state_out, emit,
                                 progress, save_every)
    loader = MixedLoader(cfg, rank=rank, world_size=world_size)
    if state_in:
        loader.load_state_dict(load_state(state_in))
    first = loader.step
    cut = cut_log(emit, first) if emit and state_in else None
    writer = (AuditWriter(emit, loader.names, append=bool(state_in),
                          header={**log_header(loader), **objectives_header(loader)})
              if emit else None)

    def feed(step: Any) -> tuple[int, int]:
        n_real = int((loader.batch_of(step)["source_ids"] >= 0).sum())
        if writer is not None:
            writer.write_step(step, loader.rank)
        return len(step.rows), n_real

    done, fed, seconds = run_steps(loader, steps, feed, writer, state_out, save_every, progress)
    summary = stream_summary(loader, first, done, fed, seconds)
    if writer is not None:
        writer.write_summary(summary)
    if cut is not None and (cut.records or cut.torn_bytes):
        summary["log_cut"] = {"records": cut.records, "torn_bytes": cut.torn_bytes}
    return summary


def objectives_header(loader: Any) -> dict[str, Any]:
    """What the header adds under ``objectives:``: ``{"objectives": {"names", "weights"}}``,
    the denoisers and the exact weights the loader mixes them with (the report's target);
    nothing without objectives."""
    stage = getattr(loader, "objectives", None)
    if stage is None:
        return {}
    return {"objectives": {"names": list(stage.names),
                           "weights": [float(x) for x in stage.mixer.weights]}}


def stream_summary(loader: Any, first: int, done: int, fed: int, seconds: float) -> dict[str, Any]:
    """The mixture, padding, truncation and speed of a stream (what ``stream`` reports)."""
    planner = loader.feed.planner
    counts = planner.counts.astype(float)
    target = planner.target
    docs = loader.fed_docs.astype(float)
    toks = loader.fed_tokens.astype(float)
    sources = {}
    for i, name in enumerate(loader.names):
        sources[name] = {
            "target": float(target[i] / target.sum()) if target.sum() else 0.0,
            "realised": float(counts[i] / counts.sum()) if counts.sum() else 0.0,
            "samples_share": float(docs[i] / docs.sum()) if docs.sum() else 0.0,
            "tokens_share": float(toks[i] / toks.sum()) if toks.sum() else 0.0,
            "documents": int(docs[i]), "tokens": int(toks[i]),
            "epochs": float(loader.feed.consumed[i] / max(loader.feed.orders[i].n_docs, 1)),
        }
    longest = int(max(int(np.max(s.lengths)) for s in loader.stores))
    last = first + done - 1
    scope = {
        "stream": f"steps 0 to {last:,} of the whole stream (the loader's counters resume "
                  "with its state): sources, padding, truncation, pieces, tokens per step, "
                  "rank cost",
        "call": f"steps {first:,} to {last:,} of this call: seconds, tokens_per_second, "
                "tokens_fed_this_rank",
        "realised": "the planner's count in its unit (documents' tokens, or documents) for the "
                    "decisions made so far; samples_share and tokens_share count what reached "
                    "rows (a packing window holds decided documents not yet placed; truncated "
                    "tokens and end-of-document tokens are not counted; a document's last "
                    "token repeated before an end token that opens a row, in concat and bfd, "
                    "counts twice), so the two differ by at most that window, the truncation "
                    "and those repeats",
    }
    return {
        "scope": scope,
        "unit": loader.cfg.mixture.unit.value, "steps": done, "first_step": first,
        "rank": loader.rank, "world_size": loader.world_size, "sources": sources,
        "max_prefix_deviation": loader.feed.max_deviation,
        "max_document_length": longest,
        # the planner's unit in token mode: a piece of at most piece_len tokens of a document
        "max_unit_length": min(longest, loader.feed.piece_len or 1 << 62),
        **loader.stats.summary(), "tokens_fed_this_rank": fed,
        "seconds": seconds, "tokens_per_second": fed / seconds if seconds else 0.0,
        "ended": loader.feed.ended,
    }
