"""Skill-It's skills graph from short one-source probe runs, cached in the run folder.

Skill-It (Chen et al. 2023, Section 3 and Appendix: "estimating the skills graph") measures how
training on skill ``i`` alone changes the loss on evaluation group ``j``: from one starting
model ``f_0``, one probe per source trains ``H`` steps on that source only, and

    A_ij = (L_j(f_0) − L_j(f_{H,i})) / L_j(f_0)

(:func:`mixbatch.mixture.policies.estimate_graph`). Here ``f_0`` is the online run's own
initial model (same shape and seed), each probe is :func:`mixbatch.proxy.train_proxy` with the
run's optimiser over ``H`` steps and weights ``{source_i: 1}``, and ``L_j`` is the loss on the
*development* rows of group ``j`` (:mod:`mixbatch.online.splits`). The graph is cached as
``RUN_DIR/skillit_graph.json`` with a key of everything it depends on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from mixbatch.atomic import json_digest, write_json
from mixbatch.mixture.policies import estimate_graph
from mixbatch.online.reference import config_key
from mixbatch.proxy.evaluate import EvalRows, eval_sums
from mixbatch.proxy.train import train_proxy
from mixbatch.proxy.trainer import Trainer, cpu_state

__all__ = ["GRAPH_FILE", "probe_graph"]

GRAPH_FILE = "skillit_graph.json"


def probe_graph(t: Trainer, rows: Mapping[str, EvalRows], steps: int, run_dir: Path | None,
                log: Callable[[str], None] | None = None) -> tuple[np.ndarray, int]:
    """The ``K × M`` graph (rows: the sources; columns: ``rows``' groups) from the trainer's
    untrained model, and the training tokens spent on probes in this call (0: cached)."""
    cfg, proxy, init_state, names = t.cfg, t.proxy, cpu_state(t.model), t.names
    probe = proxy.model_copy(update={"steps": steps, "warmup": min(proxy.warmup, steps // 4),
                                     "eval_every": None, "eval_tokens": 2})
    key = json_digest({"config": config_key(cfg), "proxy": probe.model_dump(mode="json"),
                       "groups": list(rows), "docs": [rows[g].docs.tolist() for g in rows],
                       "init": json_digest([float(v.double().sum()) for v in init_state.values()])})
    cache = None if run_dir is None else run_dir / GRAPH_FILE
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return np.array(saved["graph"], dtype=np.float64), 0
    if log is not None:
        log(f"skillit: {len(names)} probe runs of {steps} steps each to estimate the skills graph")
    model = t.new_model().to(t.device)  # a scratch model of the run's shape

    def losses(state: dict) -> np.ndarray:
        model.load_state_dict(state)
        sums, counts = eval_sums(model, rows, t.device, proxy.eval_batch_rows, None)
        return (sums / counts.clamp(min=1)).numpy()

    before, after, spent = losses(init_state), [], 0
    for n in names:
        r = train_proxy(cfg, probe, weights={n: 1.0}, init_state=init_state)
        spent += r.train_tokens
        after.append(losses(r.state))
    graph = estimate_graph(before, np.stack(after))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"key": key, "sources": names, "groups": list(rows),
                           "probe_steps": steps, "before": before.tolist(),
                           "after": [a.tolist() for a in after], "graph": graph.tolist()})
    return graph, spent
