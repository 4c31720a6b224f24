"""A simulated model whose accuracy depends on where an item sits in the prompt.

It reads a :func:`~mixbatch.prompting.batchprompt.format_prompt` prompt and answers each
``Data <n>: <text>`` line: right with probability ``acc(p) = first − (first − last)·p/(m − 1)``
for the ``p``-th of ``m`` items (0-based; ``first`` for a prompt of one item), otherwise one of the
other labels at random; it says "confident" with probability ``confident_right`` when right and
``confident_wrong`` when wrong. Its draws are seeded by ``seed`` and the prompt's text, so the
same prompt gets the same answer. It stands in for a model in tests and benchmarks: the
position effect is what permutation voting averages out, and the confidence signal is what
early stopping reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PositionBiasedModel"]

_ITEM = re.compile(r"^Data (\d+): (.*)$", re.MULTILINE)


@dataclass
class PositionBiasedModel:
    """``truth`` maps an item's text to its right label (whitespace runs count as one space, as
    in the prompt)."""

    truth: Mapping[str, str]
    labels: Sequence[str]
    first: float = 0.95
    last: float = 0.6
    confident_right: float = 0.8
    confident_wrong: float = 0.2
    seed: int = 0
    calls: int = 0

    def __post_init__(self) -> None:
        self._truth = {" ".join(text.split()): label for text, label in self.truth.items()}

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        found = _ITEM.findall(prompt)
        m = len(found)
        digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
        pos = np.arange(m)
        acc = self.first - (self.first - self.last) * pos / max(m - 1, 1)
        right = rng.random(m) < acc
        confident = rng.random(m) < np.where(right, self.confident_right, self.confident_wrong)
        other = rng.integers(0, len(self.labels) - 1, m)
        lines = []
        for k, (n, text) in enumerate(found):
            truth = self._truth[text]
            if right[k]:
                label = truth
            else:
                wrong = [lab for lab in self.labels if lab != truth]
                label = wrong[int(other[k]) % len(wrong)]
            mark = "confident" if confident[k] else "not confident"
            lines.append(f"Data {n}: {label} ({mark})")
        return "\n".join(lines)
