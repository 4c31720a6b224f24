"""Each source's held-out documents, split once into a validation half and a development half.

The objective of an online run is held-out loss (on the target, or on every source), and some
policies steer by held-out loss or gradients themselves (Skill-It's evaluation groups, the
target gradient of DGA and FLAD). If both used the same documents, a policy would be scored on
the text it was tuned on. So the held-out documents of each source (``MixedLoader.heldout()``,
a fixed keyed order) are dealt alternately: positions 0, 2, 4, ... are *validation* documents,
only ever used to report losses, and positions 1, 3, 5, ... are *development* documents, which
feedback may read. Neither half is ever trained on.

Evaluation rows spread their token budget over the documents (the first ``budget / n`` tokens of
each of the ``n`` documents), so that the loss of a source is measured on many of its documents
even when a few of them are long enough to fill the budget alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.loader.loader import MixedLoader
from mixbatch.proxy.evaluate import EvalRows, build_eval_rows

__all__ = ["HeldoutSplit", "eval_rows", "heldout_split"]


@dataclass(frozen=True)
class HeldoutSplit:
    """Store indices of one source's validation and development documents."""

    val: np.ndarray
    dev: np.ndarray


def heldout_split(loader: MixedLoader) -> dict[str, HeldoutSplit]:
    """The split of every source (see the module docstring)."""
    return {n: HeldoutSplit(h[0::2].copy(), h[1::2].copy()) for n, h in loader.heldout().items()}


def _spread(store, docs: np.ndarray, seq_len: int, max_tokens: int, eod_id: int,
            pad_id: int) -> EvalRows:
    """Rows of at most ``max_tokens`` tokens spread evenly over ``docs``: the first
    ``max_tokens / len(docs)`` tokens of each (at least one row's worth), so that a few long
    documents do not fill the whole budget."""
    per_doc = max(seq_len, -(-max_tokens // len(docs)))
    parts: list[EvalRows] = []
    left = max_tokens
    for d in docs:
        if left < 2:
            break
        part = build_eval_rows(store, np.asarray([d]), seq_len, min(per_doc, left), eod_id,
                               pad_id)
        parts.append(part)
        left -= part.tokens
    return EvalRows(np.concatenate([p.input_ids for p in parts]),
                    np.concatenate([p.labels for p in parts]),
                    np.concatenate([p.position_ids for p in parts]),
                    np.concatenate([p.docs for p in parts]))


def eval_rows(loader: MixedLoader, splits: dict[str, HeldoutSplit], names: list[str], part: str,
              seq_len: int, max_tokens: int) -> dict[str, EvalRows]:
    """Packed evaluation rows of ``part`` (``"val"`` or ``"dev"``) for the sources ``names``:
    about ``max_tokens`` tokens per source, spread evenly over its documents of that part.

    Raises ``ConfigError`` when a source has no document in that part (too few held out)."""
    stores = dict(zip(loader.names, loader.stores, strict=True))
    out = {}
    for n in names:
        docs = getattr(splits[n], part)
        if len(docs) == 0:
            held = len(splits[n].val) + len(splits[n].dev)
            raise ConfigError(
                f"holdout: source {n!r} has {held} held-out document(s); online runs need at "
                f"least 2 (one for validation, one for the policy's feedback): raise `holdout:`")
        out[n] = _spread(stores[n], docs, seq_len, max_tokens, loader.eod_id, loader.pad_id)
    return out
