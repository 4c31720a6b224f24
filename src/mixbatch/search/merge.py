"""Data ablations by modular training and merging (Na et al. 2024, EMNLP, arXiv 2410.15661).

Na et al. ("Scalable Data Ablation Approximations for Language Models through Modular Training
and Merging", ``clarana/ez-data-ablations``) continue-train one model per equal-size "base
unit" of data from a shared seed model, and score a candidate mixture (a set of units) by the
perplexity of the **uniform parameter average** of its units' models. Their finding: that
merged model's perplexity is strongly correlated with the perplexity of a model trained on the
union of the units, so one model per unit scores every combination of units.

:func:`merge_ablation` reproduces the experiment on a config's sources, one unit per source:

1. a **seed** proxy trains ``seed_steps`` steps on the uniform mixture of every source;
2. from the seed's weights, one **unit** proxy per source trains ``steps`` steps on it alone;
3. each **subset** S of sources (all pairs plus a few triples by default, or ``subsets`` random
   ones) is scored on every source's held-out documents twice: *merged*, the loss of the
   uniform average of its members' unit models; *trained*, the loss of a proxy trained from
   the seed on the uniform mixture of S for ``steps · |S|`` steps (the same tokens per unit);
4. Pearson and Spearman correlations between merged and trained losses over the subsets, for
   the mean held-out loss and for each source's.

Mixture weights are token shares whatever the config's ``mixture.unit``. Losses are token-mean
cross entropy (nats/token). [paper] The exact correlation values were not retrieved (see the
research notes, §8).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixbatch.atomic import finite_or_none
from mixbatch.errors import ConfigError

__all__ = ["MergeReport", "SubsetScore", "average_states", "choose_subsets", "heldout_evaluator",
           "merge_ablation"]

SUBSET_SEED = 0


def choose_subsets(names: Sequence[str], n: int | None = None, seed: int = SUBSET_SEED,
                   triples: int | None = None) -> list[tuple[str, ...]]:
    """The subsets of sources to score (each of 2 or more sources, members in ``names`` order).

    ``n`` None: every pair, plus ``triples`` triples drawn at random (default: as many as there
    are sources, or all when there are fewer). ``n`` given: ``n`` distinct random subsets, each
    of a size drawn uniformly from 2..K, then its members uniformly. Seeded: the same arguments
    give the same subsets.
    """
    names = tuple(names)
    k = len(names)
    if k < 2:
        raise ConfigError(f"merge: needs at least 2 sources to combine, got {k}")
    rng = np.random.default_rng(seed)
    if n is None:
        pairs = list(itertools.combinations(names, 2))
        all_triples = list(itertools.combinations(names, 3))
        t = min(k if triples is None else int(triples), len(all_triples))
        picked = sorted(rng.choice(len(all_triples), size=t, replace=False).tolist()) if t else []
        return pairs + [all_triples[i] for i in picked]
    possible = 2 ** k - k - 1
    if n < 1 or n > possible:
        raise ConfigError(f"merge: --subsets must be 1..{possible} for {k} sources (the number "
                          f"of subsets of 2 or more), got {n}")
    chosen: dict[tuple[int, ...], None] = {}  # in the order drawn
    while len(chosen) < n:
        size = int(rng.integers(2, k + 1))
        chosen.setdefault(tuple(sorted(rng.choice(k, size=size, replace=False).tolist())))
    return [tuple(names[i] for i in members) for members in chosen]


def average_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Uniform parameter average of model state dicts (same keys and shapes)."""
    import torch

    if not states:
        raise ConfigError("average_states: no states to average")
    if any(list(s) != list(states[0]) for s in states[1:]):
        raise ConfigError("average_states: the models have different parameters")
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            total = sum((s[key].to(torch.float64) for s in states),
                        torch.zeros_like(first, dtype=torch.float64))
            out[key] = (total / len(states)).to(first.dtype)
        else:  # integer buffers are not averaged
            out[key] = first.clone()
    return out


def heldout_evaluator(cfg: Any, proxy: Any
                      ) -> Callable[[dict[str, Any]], tuple[dict[str, float], float]]:
    """``evaluate(state) -> (loss per source, mean)`` on the held-out documents: the
    :class:`~mixbatch.proxy.trainer.Trainer` of a proxy run with ``state`` loaded, so the same
    rows, device, precision, threads and mean as :func:`~mixbatch.proxy.train_proxy`'s score."""
    from mixbatch.proxy.trainer import Trainer, torch_threads

    with Trainer(cfg, proxy) as trainer:
        trainer.eval_rows = trainer.heldout_rows()

    def score(state: dict[str, Any]) -> tuple[dict[str, float], float]:
        with torch_threads(proxy.threads):
            trainer.model.load_state_dict(state)
            return trainer.score()

    return score


@dataclass
class SubsetScore:
    """One subset's held-out losses: merged (parameter average) and trained (on the union)."""

    members: tuple[str, ...]
    merged: dict[str, float]
    merged_mean: float
    trained: dict[str, float]
    trained_mean: float
    trained_steps: int
    trained_tokens_by_source: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members),
                "merged": {"val_loss": self.merged, "mean": self.merged_mean},
                "trained": {"val_loss": self.trained, "mean": self.trained_mean,
                            "steps": self.trained_steps,
                            "tokens_by_source": self.trained_tokens_by_source}}


@dataclass
class MergeReport:
    """Everything :func:`merge_ablation` measured; ``to_dict`` is JSON-ready."""

    names: tuple[str, ...]
    seed_steps: int
    steps: int
    seed: dict[str, Any]  # the seed model: val_loss, mean
    units: dict[str, dict[str, Any]]  # per source: val_loss, mean, steps, tokens
    subsets: list[SubsetScore]
    correlations: dict[str, dict[str, float]]  # "mean" and each source: pearson, spearman
    proxy: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_seconds: float = 0.0  # summed over every proxy run
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return finite_or_none({
            "method": "Na et al. 2024, modular training and merging (arXiv 2410.15661)",
            "sources": list(self.names), "seed_steps": self.seed_steps, "steps": self.steps,
            "proxy": self.proxy, "seed": self.seed, "units": self.units,
            "subsets": [s.to_dict() for s in self.subsets],
            "correlations": self.correlations,
            "seconds": self.seconds, "train_seconds": self.train_seconds, "notes": self.notes,
        })


def merge_ablation(cfg: Any, proxy: Any = None, steps: int = 100, seed_steps: int | None = None,
                   subsets: int | Sequence[Sequence[str]] | None = None,
                   subset_seed: int = SUBSET_SEED, backend: str = "local", workers: int = 1,
                   ray_address: str | None = None, progress: bool = False) -> MergeReport:
    """Run the Na et al. experiment on ``cfg``'s sources (see the module docstring).

    Args:
        cfg: the mixbatch config (sources prepared, ``holdout`` > 0).
        proxy: a :class:`~mixbatch.proxy.ProxyConfig`; its ``steps`` is replaced by
            ``seed_steps`` for the seed, ``steps`` per unit and ``steps · |S|`` per subset.
        steps: training steps of each unit model (tokens per unit: steps x batch tokens).
        seed_steps: steps of the seed model on the uniform mixture (default ``steps``).
        subsets: None (every pair and a few triples), a number of random subsets, or the
            subsets themselves (lists of source names, each of 2 or more).
        backend, workers, ray_address: how the unit and subset runs are spread (as
            :func:`~mixbatch.search.runner.run_search`); the seed runs first, here.
        progress: a progress bar over the runs (stderr).

    Raises:
        ConfigError: ``holdout`` is 0, fewer than 2 sources, bad subsets.
        SearchRunError: a proxy run failed (its label says which).
    """
    from mixbatch.config import Unit
    from mixbatch.progress import RunProgress
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy.trainer import require_holdout
    from mixbatch.search.backends import ProxyTask, run_proxy_tasks
    from mixbatch.search.regress import correlations
    from mixbatch.search.runner import SearchRunError

    t0 = time.perf_counter()
    proxy = proxy if proxy is not None else ProxyConfig.demo()
    require_holdout(cfg, "merging ablations score held-out documents")
    if steps < 1 or (seed_steps is not None and seed_steps < 1):
        raise ConfigError(f"merge: steps must be >= 1, got steps={steps}, seed_steps={seed_steps}")
    seed_steps = steps if seed_steps is None else int(seed_steps)
    cfg = cfg.model_copy(update={"mixture": cfg.mixture.model_copy(update={"unit": Unit.TOKENS})})
    names = tuple(cfg.sources)
    if subsets is None or isinstance(subsets, int):
        chosen = choose_subsets(names, subsets, subset_seed)
    else:
        chosen = []
        for s in subsets:
            members = tuple(n for n in names if n in set(s))
            unknown = sorted(set(s) - set(names))
            if unknown or len(members) < 2 or len(members) != len(list(s)):
                raise ConfigError(f"merge: subset {list(s)} must name 2 or more distinct sources "
                                  f"of {', '.join(names)}")
            chosen.append(members)
    # one thread per run whenever runs share the machine: the same setting for every run, so
    # that the seed, units and subsets are trained alike
    if proxy.threads is None and (workers > 1 or backend == "ray"):
        proxy = proxy.model_copy(update={"threads": 1})

    def uniform(members: Sequence[str]) -> dict[str, float]:
        return {n: (1.0 if n in members else 0.0) for n in names}

    results: dict[Any, Any] = {}

    def run(tasks: list[Any], *where: Any) -> Iterator[tuple[Any, Any]]:
        for task, res, error in run_proxy_tasks(cfg, tasks, *where):
            if error is not None:
                raise SearchRunError(f"merge: {task.label} failed: {error}")
            results[task.key] = res
            yield task, res

    seed_task = ProxyTask("seed", "the seed model", proxy.model_copy(update={"steps": seed_steps}),
                          uniform(names), keep_state=True)
    [(_, seed_res)] = run([seed_task], "local", 1)  # first, here
    tasks = [ProxyTask(("unit", n), f"unit model {n}", proxy.model_copy(update={"steps": steps}),
                       uniform((n,)), seed_res.state, keep_state=True) for n in names]
    # longest first, so that the last runs to finish are short ones
    for members in sorted(chosen, key=len, reverse=True):
        tasks.append(ProxyTask(("subset", members), f"subset {'+'.join(members)}",
                               proxy.model_copy(update={"steps": steps * len(members)}),
                               uniform(members), seed_res.state))
    with RunProgress(len(tasks), progress) as bar:
        for task, res in run(tasks, backend, workers, ray_address):
            bar.advance(f"{task.label}: mean {res.val_loss_mean:.4f}")
    train_seconds = sum(r.seconds for r in results.values())

    score = heldout_evaluator(cfg, proxy)
    units = {n: results[("unit", n)] for n in names}
    scores = []
    for members in chosen:
        merged, merged_mean = score(average_states([units[n].state for n in members]))
        trained = results[("subset", members)]
        scores.append(SubsetScore(members, merged, merged_mean, dict(trained.val_loss),
                                  trained.val_loss_mean, trained.steps,
                                  dict(trained.train_tokens_by_source)))

    corr: dict[str, dict[str, float]] = {}
    for target in ("mean", *names):
        a, b = (np.array([(x.merged_mean, x.trained_mean) if target == "mean"
                          else (x.merged[target], x.trained[target]) for x in scores]).reshape(-1, 2).T)
        keep = np.isfinite(a) & np.isfinite(b)
        rho, r = correlations(a[keep], b[keep])
        corr[target] = {"pearson": r, "spearman": rho, "n": int(keep.sum())}
    notes = ([f"{len(chosen)} subsets: correlations need at least 3 (they are NaN)"]
             if len(chosen) < 3 else [])

    return MergeReport(
        names=names, seed_steps=seed_steps, steps=steps,
        seed={"val_loss": dict(seed_res.val_loss), "mean": seed_res.val_loss_mean,
              "steps": seed_res.steps},
        units={n: {"val_loss": dict(r.val_loss), "mean": r.val_loss_mean, "steps": r.steps,
                   "tokens": r.train_tokens} for n, r in units.items()},
        subsets=scores, correlations=corr,
        proxy=proxy.model_dump(mode="json"), seconds=time.perf_counter() - t0,
        train_seconds=train_seconds, notes=notes)
