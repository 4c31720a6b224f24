"""Batched prompting with permutation voting and early stopping.

Paper: Lin, Diesendruck, Du, Abraham, "BatchPrompt: Accomplish more with less" (ICLR 2024).

*BatchPrompt* puts many items into one prompt (here: as many as fit ``budget`` tokens of a given
tokenizer, at most ``max_items``; :func:`~mixbatch.prompting.pack.pack_prompts`). A model answers
items differently depending on where they sit in the prompt, so *Batch Permutation and
Ensembling* (BPE) asks ``rounds`` times, each round with the items in a new random order (and so
in new prompts and positions), and takes a vote per item::

    answer_i = argmax_y Σ_r w_{r,i} · [y_{r,i} = y],   w = 1 if confident else unconfident_weight

(``unconfident_weight = 1``, the default, is the paper's plain majority vote). *Self-reflection-
guided EArly Stopping* (SEAS) asks the model to mark each answer "confident" or "not confident";
an item whose last ``confident_rounds`` answers are the same label, all confident, leaves the
vote, so later rounds pack fewer items into fewer, shorter prompts. Round 0 keeps the items'
own order; round ``r`` orders them by a key drawn from ``(seed, r)``, so a run is reproducible.

The prompt is the instruction, a line saying how to answer, then one line per item,
``Data <n>: <text>`` (newlines inside an item become spaces). The model (any callable, text in,
text out) answers one line per item, ``Data <n>: <label> (confident)`` or ``... (not
confident)``. Answers outside ``labels`` (when given), repeated or missing are counted and cast
no vote. An item too long for the budget on its own is an error, or with ``on_error: skip``
counted in ``skipped`` and left unanswered. The packing counts each line's tokens separately (a
bound for tokenizers that merge across lines, exact for the byte tokenizer); ``prompt_tokens``
counts the prompts as sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mixbatch.checks import boolean, integer, real
from mixbatch.errors import ConfigError
from mixbatch.io.formats import OnError
from mixbatch.prompting.pack import pack_prompts
from mixbatch.tokenizer import Tokenizer

__all__ = ["BatchPromptResult", "BatchPromptSettings", "batch_prompt", "format_prompt",
           "parse_answers"]

ANSWER_FORMAT = ('Answer each item on its own line as "Data <n>: <label> (confident)" or '
                 '"Data <n>: <label> (not confident)".')
_LINE = re.compile(r"^\s*Data\s+(\d+)\s*:\s*(.*?)\s*(?:\((not confident|confident)\))?\s*$",
                   re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class BatchPromptSettings:
    """Settings (see the module docstring).

    Attributes:
        budget: tokens per prompt (instruction and item lines).
        max_items: items per prompt at most (``None``: as many as fit).
        rounds: voting rounds (permutations), 1 for plain BatchPrompt.
        early_stop: SEAS on or off.
        confident_rounds: consecutive confident, equal answers that stop an item.
        unconfident_weight: a "not confident" answer's vote (confident ones count 1).
        seed: the permutation rounds' seed.
        on_error: ``fail`` or ``skip`` for an item over the budget.
    """

    budget: int = 2048
    max_items: int | None = None
    rounds: int = 5
    early_stop: bool = True
    confident_rounds: int = 2
    unconfident_weight: float = 1.0
    seed: int = 0
    on_error: OnError | str = OnError.FAIL

    def check(self) -> BatchPromptSettings:
        integer("budget", self.budget, lo=1)
        if self.max_items is not None:
            integer("max_items", self.max_items, lo=1)
        integer("rounds", self.rounds, lo=1)
        boolean("early_stop", self.early_stop)
        integer("confident_rounds", self.confident_rounds, lo=1)
        real("unconfident_weight", self.unconfident_weight, lo=0.0, hi=1.0)
        integer("seed", self.seed, lo=0)
        try:
            object.__setattr__(self, "on_error", OnError(self.on_error))
        except ValueError:
            raise ConfigError(f"on_error: expected 'fail' or 'skip', got {self.on_error!r}"
                              ) from None
        return self


@dataclass
class BatchPromptResult:
    """Per item: the voted ``answers`` (``None`` when no vote), every ``votes`` entry
    ``(round, label, confident)``, and ``rounds_used``; for the run: model ``calls``,
    ``prompt_tokens`` and ``response_tokens`` (of the given tokenizer), ``skipped`` items,
    ``invalid`` and ``missing`` answers."""

    answers: list[str | None]
    votes: list[list[tuple[int, str, bool]]]
    rounds_used: np.ndarray
    calls: int = 0
    prompt_tokens: int = 0
    response_tokens: int = 0
    skipped: list[int] = field(default_factory=list)
    invalid: int = 0
    missing: int = 0


def _line(n: int, text: str) -> str:
    return f"Data {n}: {' '.join(text.split())}\n"


def format_prompt(instruction: str, texts: Sequence[str]) -> str:
    """The prompt for ``texts`` in this order, numbered from 1."""
    head = f"{instruction.rstrip()}\n{ANSWER_FORMAT}\n"
    return head + "".join(_line(n, t) for n, t in enumerate(texts, start=1))


def parse_answers(response: str, count: int) -> dict[int, tuple[str, bool]]:
    """``{n: (label, confident)}`` for the lines ``Data <n>: ...`` with ``1 <= n <= count``;
    a number answered twice keeps neither (it is ambiguous)."""
    out: dict[int, tuple[str, bool]] = {}
    twice: set[int] = set()
    for m in _LINE.finditer(response):
        n = int(m.group(1))
        if not 1 <= n <= count:
            continue
        if n in out:
            twice.add(n)
        out[n] = (m.group(2), (m.group(3) or "").lower() == "confident")
    for n in twice:
        del out[n]
    return out


def _vote(votes: list[tuple[int, str, bool]], unconfident_weight: float) -> str | None:
    score: dict[str, float] = {}
    for _, label, confident in votes:  # first seen wins a tie (dicts keep insertion order)
        score[label] = score.get(label, 0.0) + (1.0 if confident else unconfident_weight)
    return max(score, key=score.__getitem__) if score else None


def _settled(votes: list[tuple[int, str, bool]], k: int) -> bool:
    last = votes[-k:]
    return len(last) == k and all(c for _, _, c in last) and len({lab for _, lab, _ in last}) == 1


def batch_prompt(items: Sequence[str], model: Callable[[str], str], tokenizer: Tokenizer,
                 instruction: str, settings: BatchPromptSettings | None = None,
                 labels: Sequence[str] | None = None) -> BatchPromptResult:
    """Answer ``items`` with batched prompts, permutation voting and early stopping."""
    s = (settings or BatchPromptSettings()).check()
    n = len(items)
    head = format_prompt(instruction, [])
    digits = len(str(max(n, 1) if s.max_items is None else min(s.max_items, max(n, 1))))
    _, lens = tokenizer.encode_batch([head, *(_line(10 ** digits - 1, t) for t in items)])
    overhead, width = int(lens[0]), lens[1:].astype(np.int64)
    capacity = s.budget - overhead
    if capacity < 1:
        raise ConfigError(f"budget: {s.budget} tokens leave no room for items after the "
                          f"instruction's {overhead}")
    result = BatchPromptResult([None] * n, [[] for _ in range(n)], np.zeros(n, dtype=np.int64))
    too_long = np.flatnonzero(width > capacity)
    if too_long.size and s.on_error is OnError.FAIL:
        i = int(too_long[0])
        raise ConfigError(f"item {i}: {int(width[i])} tokens, over the {capacity} tokens the "
                          f"budget leaves for items ({len(too_long)} such items; on_error: skip "
                          "counts and skips them)")
    result.skipped = too_long.tolist()
    active = np.flatnonzero(width <= capacity)
    allowed = None if labels is None else set(labels)
    for r in range(s.rounds):
        if active.size == 0:
            break
        key = (np.arange(active.size, dtype=np.float64) if r == 0
               else np.random.default_rng([s.seed, r]).random(active.size))
        for prompt_items in pack_prompts(width[active], s.budget, overhead, s.max_items, key):
            ids = active[prompt_items]
            prompt = format_prompt(instruction, [items[i] for i in ids])
            response = model(prompt)
            _, used = tokenizer.encode_batch([prompt, response])
            result.calls += 1
            result.prompt_tokens += int(used[0])
            result.response_tokens += int(used[1])
            answers = parse_answers(response, len(ids))
            for pos, i in enumerate(ids, start=1):
                got = answers.get(pos)
                if got is None:
                    result.missing += 1
                elif allowed is not None and got[0] not in allowed:
                    result.invalid += 1
                else:
                    result.votes[i].append((r, got[0], got[1]))
        result.rounds_used[active] += 1
        if s.early_stop:
            keep = [not _settled(result.votes[i], s.confident_rounds) for i in active]
            active = active[np.array(keep, dtype=bool)]
    result.answers = [_vote(v, s.unconfident_weight) for v in result.votes]
    for i in result.skipped:
        result.answers[i] = None
    return result
