"""Batched prompting: packing under a token budget, answer parsing, permutation voting, early
stopping, bad input, and the simulated position-biased model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mixbatch.errors import ConfigError
from mixbatch.prompting import (
    BatchPromptSettings,
    PositionBiasedModel,
    batch_prompt,
    format_prompt,
    pack_prompts,
    parse_answers,
)
from mixbatch.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
LABELS = ["yes", "no"]


def _items(n: int, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    rng = np.random.default_rng(seed)
    items = [f"claim {i}: " + "w" * int(rng.integers(5, 60)) for i in range(n)]
    return items, {t: LABELS[i % 3 == 0] for i, t in enumerate(items)}


def _answer_all(truth: dict[str, str], wrong_at: int | None = None, confident: bool = True,
                seen: list[str] | None = None):
    """A model that answers every item right, except the item at position ``wrong_at``."""
    def model(prompt: str) -> str:
        if seen is not None:
            seen.append(prompt)
        out = []
        for n, text in re.findall(r"^Data (\d+): (.*)$", prompt, re.MULTILINE):
            label = truth[text]
            if wrong_at is not None and int(n) == wrong_at:
                label = "no" if label == "yes" else "yes"
            out.append(f"Data {n}: {label} ({'confident' if confident else 'not confident'})")
        return "\n".join(out)
    return model


def test_pack_respects_budget_and_item_cap_and_orders_by_key() -> None:
    rng = np.random.default_rng(1)
    width = rng.integers(1, 50, 300)
    key = rng.random(300)
    prompts = pack_prompts(width, budget=200, overhead=40, max_items=7, key=key)
    flat = np.concatenate(prompts)
    assert sorted(flat.tolist()) == list(range(300))  # every item exactly once
    assert all(width[p].sum() <= 160 and len(p) <= 7 for p in prompts)
    assert all((np.diff(key[p]) > 0).all() for p in prompts)
    uncapped = pack_prompts(width, budget=200, overhead=40, max_items=None, key=key)
    assert len(uncapped) <= int(np.ceil(width.sum() / 160)) + 1  # best-fit decreasing is tight
    with pytest.raises(ConfigError, match="budget: 30 tokens leave no room"):
        pack_prompts(width, budget=30, overhead=40, max_items=None, key=key)


def test_parse_answers() -> None:
    got = parse_answers("Data 1: yes (confident)\n data 2 : no (Not Confident)\nData 3: maybe\n"
                        "Data 9: yes (confident)\nData 4: yes\nData 4: no", count=4)
    assert got == {1: ("yes", True), 2: ("no", False), 3: ("maybe", False)}


def test_prompts_fit_the_budget_and_each_item_is_asked_once_per_round() -> None:
    items, truth = _items(120)
    seen: list[str] = []
    s = BatchPromptSettings(budget=600, rounds=3, early_stop=False)
    r = batch_prompt(items, _answer_all(truth, seen=seen), TOK, "Is it true?", s, LABELS)
    assert r.calls == len(seen) and r.prompt_tokens == sum(len(p.encode()) for p in seen)
    assert max(len(p.encode()) for p in seen) <= 600
    asked = [t for p in seen for t in re.findall(r"^Data \d+: (.*)$", p, re.MULTILINE)]
    assert sorted(asked) == sorted(items * 3)
    assert r.answers == [truth[t] for t in items] and r.rounds_used.tolist() == [3] * 120


def test_permutation_voting_corrects_a_position_error() -> None:
    """The model always gets the 2nd item of a prompt wrong: one round keeps those errors, a
    vote over rounds in new orders removes them."""
    items, truth = _items(60)
    model = _answer_all(truth, wrong_at=2, confident=False)
    one = batch_prompt(items, model, TOK, "Is it true?",
                       BatchPromptSettings(budget=400, rounds=1, early_stop=False), LABELS)
    many = batch_prompt(items, model, TOK, "Is it true?",
                        BatchPromptSettings(budget=400, rounds=7, early_stop=False), LABELS)
    wrong_one = sum(a != truth[t] for a, t in zip(one.answers, items, strict=True))
    wrong_many = sum(a != truth[t] for a, t in zip(many.answers, items, strict=True))
    assert wrong_one == one.calls  # one wrong item per prompt
    assert wrong_many < wrong_one / 3


def test_early_stopping_drops_settled_items() -> None:
    items, truth = _items(80)
    s = BatchPromptSettings(budget=500, rounds=6, confident_rounds=2)
    r = batch_prompt(items, _answer_all(truth), TOK, "Is it true?", s, LABELS)
    full = batch_prompt(items, _answer_all(truth), TOK, "Is it true?",
                        BatchPromptSettings(budget=500, rounds=6, early_stop=False), LABELS)
    assert r.rounds_used.tolist() == [2] * 80  # confident and equal twice: done
    assert r.calls * 3 == full.calls and r.answers == full.answers
    unsure = batch_prompt(items, _answer_all(truth, confident=False), TOK, "Is it true?", s, LABELS)
    assert unsure.rounds_used.tolist() == [6] * 80  # never confident: every round


def test_items_over_the_budget_fail_or_are_skipped_and_counted() -> None:
    items, truth = _items(10)
    items[4] = "z" * 500
    truth[items[4]] = "yes"
    s = BatchPromptSettings(budget=300, rounds=1)
    with pytest.raises(ConfigError, match=r"^item 4: \d+ tokens, over the \d+ tokens the budget"):
        batch_prompt(items, _answer_all(truth), TOK, "Is it true?", s)
    r = batch_prompt(items, _answer_all(truth), TOK, "Is it true?",
                     BatchPromptSettings(budget=300, rounds=1, on_error="skip"))
    assert r.skipped == [4] and r.answers[4] is None
    assert all(r.answers[i] == truth[items[i]] for i in range(10) if i != 4)


def test_invalid_and_missing_answers_are_counted() -> None:
    items, _ = _items(6)
    r = batch_prompt(items, lambda p: "Data 1: perhaps (confident)", TOK, "Q?",
                     BatchPromptSettings(budget=4000, rounds=1), LABELS)
    assert r.invalid == 1 and r.missing == 5 and r.answers == [None] * 6


@pytest.mark.parametrize(("settings", "message"), [
    ({"budget": 0}, "budget"), ({"rounds": 0}, "rounds"), ({"max_items": 0}, "max_items"),
    ({"unconfident_weight": 2.0}, "unconfident_weight"), ({"on_error": "ignore"}, "on_error"),
    ({"budget": 20}, "budget: 20 tokens leave no room"),
])
def test_bad_settings(settings: dict, message: str) -> None:
    items, truth = _items(3)
    with pytest.raises(ConfigError, match=message):
        batch_prompt(items, _answer_all(truth), TOK, "Is it true?", BatchPromptSettings(**settings))


def test_same_seed_same_run_and_the_simulated_model_is_position_biased() -> None:
    items, truth = _items(90)
    s = BatchPromptSettings(budget=800, rounds=4)
    a = batch_prompt(items, PositionBiasedModel(truth, LABELS, seed=3), TOK, "Q?", s, LABELS)
    b = batch_prompt(items, PositionBiasedModel(truth, LABELS, seed=3), TOK, "Q?", s, LABELS)
    assert a.votes == b.votes and a.calls == b.calls
    model = PositionBiasedModel(truth, LABELS, first=1.0, last=0.0, confident_right=1.0,
                                confident_wrong=0.0)
    out = parse_answers(model(format_prompt("Q?", items[:11])), 11)
    right = [out[n][0] == truth[items[n - 1]] for n in range(1, 12)]
    assert right[0] and not right[-1]  # always right first, always wrong last
    assert all(out[n][1] == right[n - 1] for n in range(1, 12))  # confident exactly when right
