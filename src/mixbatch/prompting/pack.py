"""Items into prompts under a token budget, with the shaping machinery's best-fit decreasing.

A prompt is a fixed part (instruction, examples: ``overhead`` tokens) and one line per item. Item
``i``'s line is ``width[i]`` tokens of the given tokenizer. :func:`pack_prompts` puts the items
into as few prompts as :func:`mixbatch.shape.bfd.best_fit_decreasing` finds with
``overhead + Σ width <= budget`` and at most ``max_items`` per prompt (a prompt with more is cut
into consecutive pieces), then orders each prompt's items by ``key`` (a permutation round's
random key), all vectorised.
"""

from __future__ import annotations

import numpy as np

from mixbatch.errors import ConfigError
from mixbatch.ranges import group_ranks
from mixbatch.shape.bfd import best_fit_decreasing

__all__ = ["pack_prompts"]


def pack_prompts(width: np.ndarray, budget: int, overhead: int, max_items: int | None,
                 key: np.ndarray) -> list[np.ndarray]:
    """Item indices per prompt, each prompt's items ordered by ``key``.

    Raises ``ConfigError`` when the fixed part leaves no room or an item does not fit alone
    (callers drop or reject such items first, see :func:`mixbatch.prompting.batch_prompt`)."""
    width = np.asarray(width, dtype=np.int64)
    capacity = budget - overhead
    if capacity < 1:
        raise ConfigError(f"budget: {budget} tokens leave no room for items after the "
                          f"instruction's {overhead}")
    if width.size == 0:
        return []
    if width.max() > capacity:
        i = int(np.argmax(width))
        raise ConfigError(f"item {i}: {int(width[i])} tokens, over the {capacity} tokens the "
                          f"budget leaves for items")
    bins, _, n_bins = best_fit_decreasing(np.maximum(width, 1), capacity)
    order = np.lexsort((key, bins))  # by prompt, then by this round's key
    counts = np.bincount(bins, minlength=n_bins)
    if max_items is not None:
        piece = group_ranks(counts) // max_items  # position within the prompt, cut every max_items
        sub = np.repeat(np.arange(n_bins), counts) * (width.size + 1) + piece
        _, counts = np.unique(sub, return_counts=True)
    return np.split(order, np.cumsum(counts)[:-1])
