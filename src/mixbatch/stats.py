"""Per-source statistics of prepared token stores (what ``mixbatch inspect`` shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mixbatch.config import Config
from mixbatch.store import TokenStore, open_store
from mixbatch.store_meta import token_data_root

PERCENTILES = (50, 90, 99)


def second_stats(store: TokenStore) -> dict[str, Any] | None:
    """Summary of a store's second lengths (``None`` without them): the field, min, median,
    mean, p99 (lower value, as the token percentiles) and max."""
    if store.second_lengths is None:
        return None
    x = np.asarray(store.second_lengths)
    if not len(x):
        return {"field": store.second_field, "min": 0, "median": 0.0, "mean": 0.0, "p99": 0,
                "max": 0}
    return {"field": store.second_field, "min": int(x.min()), "median": float(np.median(x)),
            "mean": float(x.mean()), "p99": int(np.percentile(x, 99, method="lower")),
            "max": int(x.max())}


def store_stats(store: TokenStore) -> dict[str, Any]:
    """Files, documents, tokens, length percentiles and skips of a store; with ``second``
    (see :func:`second_stats`) when it has second lengths."""
    lengths = np.asarray(store.lengths)
    pct = (np.percentile(lengths, PERCENTILES, method="lower").astype(int).tolist()
           if len(lengths) else [0] * len(PERCENTILES))
    second = second_stats(store)
    return {
        "files": len(store.meta.get("files", [])),
        "documents": len(store),
        "tokens": store.num_tokens,
        "mean": float(lengths.mean()) if len(lengths) else 0.0,
        **{f"p{p}": v for p, v in zip(PERCENTILES, pct, strict=True)},
        "max": int(lengths.max()) if len(lengths) else 0,
        "skipped": dict(store.meta.get("skipped", {})),
        "tokenizer": store.meta["tokenizer"]["name"],
        "dtype": store.meta["dtype"],
        **({"second": second} if second is not None else {}),
    }


def open_stores(cfg: Config, verify: bool = False) -> dict[str, TokenStore]:
    """Every source's store; token data read in place must lie in its configured folder."""
    return {name: open_store(cfg.store_dir / name, verify=verify,
                             root=token_data_root(cfg, name)) for name in cfg.sources}


def config_stats(cfg: Config, verify: bool = False) -> dict[str, Any]:
    """``{"sources": {name: {...}}, "documents": N, "tokens": N}`` with each source's share."""
    stores = open_stores(cfg, verify)
    sources = {name: store_stats(s) for name, s in stores.items()}
    total = sum(s["tokens"] for s in sources.values())
    total_docs = sum(s["documents"] for s in sources.values())
    for s in sources.values():
        s["share"] = s["tokens"] / total if total else 0.0
        s["doc_share"] = s["documents"] / total_docs if total_docs else 0.0
    return {"store": str(cfg.store_dir), "sources": sources, "documents": total_docs,
            "tokens": total}


def plot_lengths(stores: dict[str, TokenStore], out: Path) -> Path:
    """Histogram of document lengths per source on log-spaced bins, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    longest = max((int(np.max(s.lengths)) for s in stores.values() if len(s)), default=1)
    bins = np.unique(np.geomspace(1, max(longest, 2) + 1, 60).astype(int))
    for name, s in stores.items():
        ax.hist(np.asarray(s.lengths), bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} ({len(s):,} docs)")
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    ax.set_title("Document length per source")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
