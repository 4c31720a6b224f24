"""What a run fed, step by step, rebuilt from its audit log(s): the numbers behind the report.

:func:`read_trace` streams one or more logs (one per rank, or one rank's log) once and keeps
O(steps x sources) numbers, never the rows themselves:

- tokens and samples (documents started) per step and source, and per rank and source;
- the target weights per step (the logs' step records; else the summary's final target);
- padding and truncation per step, grouped by the step's row length (its *bucket*);
- compute cost per rank and step (cost(s) = s + s²/(6·d_model) per piece, as the balancer).

The realised mixture after step t is c_i(t) / Σ_j c_j(t); the target integrated over the
schedule is W_i(t) = Σ_{s≤t} w_i(s) · U(s), with U(s) the units (tokens or samples) the step
fed; the prefix deviation is c_i(t) − W_i(t) (the design's invariant 1 bounds it by one unit).

A run that replays hard batches logs each replay as a record naming the step it repeats
(:mod:`mixbatch.audit.log`). The per-step figures above are the stream's (every batch once);
``replayed_tokens`` / ``replayed_samples`` count what the replays trained again (each rank's
rows of the repeated step, once per replay), so the mixture is given both ways: without
replays (the stream) and with them (every token trained).

Rows that carry an ``objective`` (a config with ``objectives:``) are also counted per step and
objective (:mod:`mixbatch.audit.report_objectives`); a series stream's log is read by
:func:`mixbatch.audit.trace_series.read_series_trace`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.audit.log import TornTail, config_identity, iter_log, summary_path
from mixbatch.audit.report_objectives import ObjectiveCounter, ObjectiveTrace
from mixbatch.errors import ConfigError, DataError


@dataclass
class RunTrace:
    """Per-step numbers of a run (``steps`` ascending; arrays are ``[steps, sources]``)."""

    names: list[str]
    steps: np.ndarray
    tokens: np.ndarray
    samples: np.ndarray
    pad: np.ndarray  # padding positions per step (the logged rows)
    positions: np.ndarray  # rows x row length per step (the logged rows)
    seq_len: np.ndarray  # the step's row length (its bucket)
    truncated: np.ndarray  # tokens dropped per step (global step; -1 when not logged)
    weights: np.ndarray | None  # target weights per step, None when the log has none
    rank_tokens: np.ndarray  # [ranks, sources]
    rank_cost: np.ndarray  # [ranks, steps]
    ranks: list[int]
    unit: str
    documents: list[int] | None  # documents per source that the run could draw (no holdout)
    header: dict[str, Any] | None
    summary: dict[str, Any] | None
    logs: list[Path] = field(default_factory=list)
    world_size: int = 1
    global_cost: np.ndarray | None = None  # whole step's cost, from step records
    replays: int = 0  # training steps that retrained a kept batch
    replayed_tokens: np.ndarray | None = None  # [sources], tokens those replays trained
    replayed_samples: np.ndarray | None = None  # [sources], documents started in them
    objectives: ObjectiveTrace | None = None  # rows and tokens per objective (`objectives:`)

    @property
    def units(self) -> np.ndarray:
        """Realised units per step and source (tokens or samples, as the run's mixture)."""
        return self.samples if self.unit == "samples" else self.tokens

    def target_weights(self) -> np.ndarray:
        """Target weights per step: logged, else the summary's final target, else uniform."""
        if self.weights is not None:
            return self.weights
        k = len(self.names)
        if self.summary and "sources" in self.summary:
            w = np.array([self.summary["sources"].get(n, {}).get("target", 0.0)
                          for n in self.names], dtype=np.float64)
            if w.sum() > 0:
                return np.broadcast_to(w / w.sum(), (len(self.steps), k))
        return np.full((len(self.steps), k), 1.0 / k)

    def cumulative(self, by: str) -> np.ndarray:
        return np.cumsum(self.samples if by == "samples" else self.tokens, axis=0)

    def shares(self, by: str) -> np.ndarray:
        """Realised share per source after each step (``by``: tokens or samples)."""
        c = self.cumulative(by).astype(np.float64)
        tot = c.sum(axis=1, keepdims=True)
        return np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)

    def integrated_target(self) -> np.ndarray:
        """W_i(t) = Σ_{s≤t} w_i(s) · U(s) in the run's unit."""
        w = self.target_weights()
        u = self.units.sum(axis=1, keepdims=True).astype(np.float64)
        return np.cumsum(w * u, axis=0)

    def deviation(self) -> np.ndarray:
        """Prefix deviation c_i(t) − W_i(t) per step and source, in the run's unit."""
        return np.cumsum(self.units, axis=0) - self.integrated_target()

    def epochs(self) -> np.ndarray | None:
        """Epochs per source after each step (documents started / documents), or None."""
        if not self.documents:
            return None
        d = np.maximum(np.asarray(self.documents, dtype=np.float64), 1.0)
        return np.cumsum(self.samples, axis=0) / d

    def padding_by_bucket(self) -> dict[int, float]:
        out = {}
        for w in np.unique(self.seq_len):
            m = self.seq_len == w
            pos = self.positions[m].sum()
            out[int(w)] = float(self.pad[m].sum() / pos) if pos else 0.0
        return out

    def balance_kind(self) -> str:
        """What :meth:`rank_balance` measures with the logs given."""
        if len(self.ranks) > 1:
            return "largest rank cost / mean rank cost"
        if self.global_cost is not None and self.world_size > 1:
            return (f"rank {self.ranks[0]}'s cost / mean rank cost (the other ranks' logs were "
                    "not given)")
        return "one rank"

    def rank_balance(self) -> np.ndarray:
        """Per step: the largest rank cost over the mean rank cost (1.0 = perfect)."""
        if len(self.ranks) > 1:
            c = self.rank_cost
            mean = c.mean(axis=0)
            return np.divide(c.max(axis=0), mean, out=np.ones_like(mean), where=mean > 0)
        if self.global_cost is not None and self.world_size > 1:
            mean = self.global_cost / self.world_size
            return np.divide(self.rank_cost[0], mean, out=np.ones_like(mean), where=mean > 0)
        return np.ones(len(self.steps))

    def replay_mixture(self) -> dict[str, Any]:
        """The mixture without replays (the stream: every batch once) and with them (every
        token trained), as shares of tokens and of samples per source."""
        k = len(self.names)
        rt = self.replayed_tokens if self.replayed_tokens is not None else np.zeros(k, np.int64)
        rs = self.replayed_samples if self.replayed_samples is not None else np.zeros(k, np.int64)
        out: dict[str, Any] = {"replays": self.replays}
        for label, extra_t, extra_s in (("without_replays", 0, 0), ("with_replays", rt, rs)):
            t = self.tokens.sum(axis=0) + extra_t
            s = self.samples.sum(axis=0) + extra_s
            out[label] = {n: {"tokens": int(t[i]), "samples": int(s[i]),
                              "tokens_share": float(t[i] / t.sum()) if t.sum() else 0.0,
                              "samples_share": float(s[i] / s.sum()) if s.sum() else 0.0}
                          for i, n in enumerate(self.names)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report's numbers, final values per source (JSON-ready)."""
        sh_t, sh_s = self.shares("tokens"), self.shares("samples")
        dev = self.deviation()
        ep = self.epochs()
        tw = self.target_weights()
        tot_pos = self.positions.sum()
        out: dict[str, Any] = {
            "logs": [str(p) for p in self.logs], "unit": self.unit,
            "steps": len(self.steps),
            "first_step": int(self.steps[0]) if len(self.steps) else 0,
            "last_step": int(self.steps[-1]) if len(self.steps) else -1,
            "ranks": self.ranks, "world_size": self.world_size,
            "weights_logged": self.weights is not None,
            "padding_fraction": float(self.pad.sum() / tot_pos) if tot_pos else 0.0,
            "padding_by_bucket": {str(k): v for k, v in self.padding_by_bucket().items()},
            "truncated_tokens": int(self.truncated.sum()) if (self.truncated >= 0).all() else None,
            "rank_balance_kind": self.balance_kind(),
            "rank_cost_imbalance": {"max": float(self.rank_balance().max(initial=1.0)),
                                    "mean": float(self.rank_balance().mean())
                                    if len(self.steps) else 1.0},
            "sources": {},
            "mixture_replays": self.replay_mixture(),
        }
        if self.objectives is not None:
            out["objectives"] = self.objectives.to_dict(self.names)
        integ = self.integrated_target()
        for i, n in enumerate(self.names):
            last_w = integ[-1] if len(self.steps) else np.zeros(len(self.names))
            out["sources"][n] = {
                "tokens": int(self.tokens[:, i].sum()), "samples": int(self.samples[:, i].sum()),
                "tokens_share": float(sh_t[-1, i]) if len(self.steps) else 0.0,
                "samples_share": float(sh_s[-1, i]) if len(self.steps) else 0.0,
                "target": float(last_w[i] / last_w.sum()) if last_w.sum() else 0.0,
                "target_last_step": float(tw[-1, i]) if len(self.steps) else 0.0,
                "max_abs_prefix_deviation": float(np.abs(dev[:, i]).max(initial=0.0)),
                "epochs": float(ep[-1, i]) if ep is not None and len(self.steps) else None,
                "ranks": {str(r): int(self.rank_tokens[j, i]) for j, r in enumerate(self.ranks)},
            }
        return out


def is_series_header(header: dict[str, Any] | None) -> bool:
    """Whether a log's header is a series stream's (:mod:`mixbatch.series.stream`)."""
    return header is not None and str(header.get("audit_log", "")).startswith("series/")


def peek_header(path: str | Path) -> dict[str, Any] | None:
    """The header line of an audit log, or None when it has none (a training run's log)."""
    for kind, rec in iter_log(path, TornTail()):
        return rec if kind == "header" else None
    return None


def log_files(run_or_log: str | Path) -> list[Path]:
    """The audit logs of a run folder (``audit.jsonl``, ``audit.rank<R>.jsonl``) or one log."""
    p = Path(run_or_log)
    if p.is_dir():
        logs = sorted(q for q in p.glob("audit*.jsonl"))
        if not logs:
            raise DataError(f"{p}: no audit log in this folder (audit*.jsonl); run `mixbatch "
                            "stream CONFIG --emit F.jsonl` or `mixbatch train` with its audit log")
        return logs
    if not p.is_file():
        raise DataError(f"{p}: no such audit log or run folder")
    return [p]


def _load_summary(path: Path) -> dict[str, Any] | None:
    s = summary_path(path)
    if not s.is_file():
        return None
    try:
        data = json.loads(s.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{s}: unreadable summary ({e})") from None
    return data if isinstance(data, dict) else None


def run_weights(folder: Path) -> dict[str, dict[int, float]] | None:
    """Target weights per step from a training run folder's ``weights.csv`` (``step``,
    ``weight_<source>``, ...), or None when the folder has none."""
    path = Path(folder) / "weights.csv"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return None
    head = lines[0].split(",")
    cols = {h.removeprefix("weight_"): i for i, h in enumerate(head) if h.startswith("weight_")}
    out: dict[str, dict[int, float]] = {n: {} for n in cols}
    for k, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        f = line.split(",")
        try:
            step = int(f[0])
            for n, i in cols.items():
                out[n][step] = float(f[i])
        except (ValueError, IndexError):
            raise DataError(f"{path}:{k}: not a weights row (step, weight_<source>, ...)") from None
    return out


def read_trace(paths: list[Path], cfg: Any = None,
               weights_by_source: dict[str, dict[int, float]] | None = None) -> RunTrace:
    """Stream the logs once into a :class:`RunTrace` (checked against ``cfg`` when given);
    ``weights_by_source`` (a training run's :func:`run_weights`) gives the target weights per
    step when the logs have no step records."""
    headers: list[dict[str, Any]] = []
    names: list[str] | None = None
    per_step: dict[int, dict[str, Any]] = {}
    rank_tok: dict[int, dict[str, int]] = {}
    cost: dict[tuple[int, int], float] = {}
    ranks_seen: set[int] = set()
    d_model = 4096
    step_recs: dict[tuple[int, int], dict[str, Any]] = {}
    index: dict[str, int] = {}
    replayed: dict[tuple[int, int], int] = {}  # (train step, rank) -> step repeated
    objectives = ObjectiveCounter()
    for path in paths:
        header = None
        for kind, rec in iter_log(path):
            if kind == "window" or (kind == "header" and is_series_header(rec)):
                raise DataError(f"{path}: a series stream's log where a text stream's was "
                                "expected (logs of different runs?)")
            if kind == "header":
                header = rec
                headers.append(rec)
                d_model = int(rec.get("d_model", d_model))
                if names is None:
                    names = list(rec["sources"])
                    index = {n: i for i, n in enumerate(names)}
                elif list(rec["sources"]) != names:
                    raise DataError(f"{path}: sources {rec['sources']} differ from "
                                    f"{paths[0]}'s {names}: logs of different runs")
                continue
            if kind == "step":
                step_recs[(int(rec["step"]), int(rec["rank"]))] = rec
                continue
            if kind == "replay":
                replayed[(int(rec["train_step"]), int(rec["rank"]))] = int(rec["replay_of"])
                continue
            segs = rec["segments"]
            key = (int(rec["step"]), int(rec["rank"]))
            acc = per_step.get(key[0])
            if acc is None:
                acc = per_step[key[0]] = {"pad": 0, "rows": 0, "tok": {}, "smp": {}}
            acc["pad"] += int(rec["pad"])
            acc["rows"] += 1
            tok, smp = acc["tok"], acc["smp"]
            rtok = rank_tok.setdefault(key[1], {})
            c = 0.0
            for name, _doc, a, e in segs:
                if name not in index:
                    if header is not None:
                        raise DataError(f"{path}: step {rec['step']}: source {name!r} is not "
                                        f"among the log's sources {names}")
                    index[name] = len(index)
                n = e - a
                tok[name] = tok.get(name, 0) + n
                rtok[name] = rtok.get(name, 0) + n
                if a == 0 and e > 0:
                    smp[name] = smp.get(name, 0) + 1
                c += n + n * n / (6.0 * d_model)
            cost[key] = cost.get(key, 0.0) + c
            ranks_seen.add(key[1])
            objectives.add(key[0], rec)
    if names is None:
        names = sorted(index, key=index.__getitem__)
    if not per_step:
        raise DataError(f"{paths[0]}: the audit log holds no rows")
    header = headers[0] if headers else None
    summary = _load_summary(paths[0])
    if cfg is not None:
        _check_config(paths[0], header, names, cfg)

    k = len(names)
    steps = np.array(sorted(per_step), dtype=np.int64)
    pos = {int(s): j for j, s in enumerate(steps)}
    ranks = sorted(ranks_seen)
    rpos = {r: j for j, r in enumerate(ranks)}
    t = len(steps)
    tokens = np.zeros((t, k), dtype=np.int64)
    samples = np.zeros((t, k), dtype=np.int64)
    for s_, acc in per_step.items():
        for name, v in acc["tok"].items():
            tokens[pos[s_], index[name]] = v
        for name, v in acc["smp"].items():
            samples[pos[s_], index[name]] = v
    rank_tokens = np.zeros((len(ranks), k), dtype=np.int64)
    for r, d in rank_tok.items():
        for name, v in d.items():
            rank_tokens[rpos[r], index[name]] = v
    rank_cost = np.zeros((len(ranks), t))
    for (s_, r), v in cost.items():
        rank_cost[rpos[r], pos[s_]] = v

    default_len = int(header["seq_len"]) if header else 0
    seq_len = np.full(t, default_len, dtype=np.int64)
    truncated = np.full(t, -1, dtype=np.int64)
    weights = np.zeros((t, k)) if step_recs else None
    global_cost = np.zeros(t) if step_recs else None
    seen_w = np.zeros(t, dtype=bool)
    for (s, r), rec in step_recs.items():
        if s not in pos:
            continue
        j = pos[s]
        if r in rpos and "cost" in rec:  # counts end tokens too, as the balancer
            rank_cost[rpos[r], j] = float(rec["cost"])
        seq_len[j] = int(rec.get("seq_len", default_len))
        truncated[j] = int(rec.get("truncated", 0))
        if weights is not None and len(rec["weights"]) == k:
            weights[j] = rec["weights"]
            seen_w[j] = True
        if global_cost is not None:
            global_cost[j] = float(rec.get("global_cost", 0.0))
    if weights is not None and not seen_w.all():
        weights = None  # a log that mixes steps with and without records: use the summary
    if (weights is None and weights_by_source and all(n in weights_by_source for n in names)
            and all(int(s_) in weights_by_source[n] for n in names for s_ in steps)):
        weights = np.array([[weights_by_source[n][int(s_)] for n in names] for s_ in steps])
    if not default_len and (seq_len == 0).any():
        # no header and no step records: the longest logged row is the row length
        seq_len[:] = max(int(tokens.sum(axis=1).max(initial=0)), 1)
    pad = np.array([per_step[int(s)]["pad"] for s in steps], dtype=np.int64)
    positions = np.array([per_step[int(s)]["rows"] for s in steps], dtype=np.int64) * seq_len
    unit = (header or {}).get("unit") or (summary or {}).get("unit") or "tokens"
    documents = list(header["documents"]) if header and "documents" in header else None
    if documents is None and summary and "sources" in summary:
        docs = []
        for n in names:
            s = summary["sources"].get(n, {})
            ep = s.get("epochs") or 0.0
            docs.append(round(s.get("documents", 0) / ep) if ep > 0 else 0)
        documents = docs if all(docs) else None
    world = int((header or summary or {}).get("world_size", len(ranks)))
    rep_t, rep_s = _replayed(paths, replayed, index)
    obj = objectives.finish(paths[0], steps, names, header, cfg, len(ranks) >= world)
    return RunTrace(names, steps, tokens, samples, pad, positions, seq_len, truncated, weights,
                    rank_tokens, rank_cost, ranks, unit, documents, header, summary,
                    list(paths), world, global_cost,
                    len({t for t, _ in replayed}), rep_t, rep_s, obj)


def _replayed(paths: list[Path], replayed: dict[tuple[int, int], int],
              index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and samples per source that the replays trained again: each replay record
    ``(train step, rank) -> step`` counts that rank's rows of that step once. A second pass over
    the logs, only for the repeated steps (so a run without replays costs nothing)."""
    k = len(index)
    tok = np.zeros(k, dtype=np.int64)
    smp = np.zeros(k, dtype=np.int64)
    if not replayed:
        return tok, smp
    times = Counter((j, r) for (_, r), j in replayed.items())  # (step, rank) -> replays
    found: set[tuple[int, int]] = set()
    for path in paths:
        for kind, rec in iter_log(path):
            key = (int(rec["step"]), int(rec["rank"])) if kind == "row" else None
            if key not in times:
                continue
            found.add(key)
            for name, _doc, a, e in rec["segments"]:
                tok[index[name]] += times[key] * (e - a)
                if a == 0 and e > 0:
                    smp[index[name]] += times[key]
    missing = sorted(set(times) - found)
    if missing:
        j, r = missing[0]
        raise DataError(f"{paths[0]}: a replay of step {j} (rank {r}), whose rows are not in "
                        "the log(s)")
    return tok, smp


def _check_config(path: Path, header: dict[str, Any] | None, names: list[str], cfg: Any) -> None:
    """Refuse a log written under another config (one line naming what differs)."""
    declared = list(cfg.sources)
    if header is not None and list(header["sources"]) != declared:
        raise ConfigError(f"{path}: the log's sources {header['sources']} are not the config's "
                          f"{declared}: a log from another config")
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ConfigError(f"{path}: source(s) {unknown} are not in the config ({declared}): a "
                          "log from another config")
    if header is not None and header.get("identity") != config_identity(cfg):
        raise ConfigError(f"{path}: written under another config (seed, sources or batch "
                          f"settings differ: identity {header.get('identity')} vs "
                          f"{config_identity(cfg)})")
