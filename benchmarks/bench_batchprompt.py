"""Batched prompting against one item per prompt, with a simulated position-biased model.

Items are short synthetic claims (``--items``, 20 to 120 bytes) with a yes/no answer; the
instruction with its worked examples is ``--instruction-bytes`` long (as a few-shot prompt is).
The model is :class:`mixbatch.prompting.PositionBiasedModel`: right with probability falling
linearly from ``--first`` (first item of a prompt) to ``--last`` (last item), "confident" with
probability 0.8 when right and 0.2 when wrong. Token counts are of the byte tokenizer. Methods:

- ``single``: one item per prompt (SinglePrompt);
- ``batch``: as many items as fit ``--budget`` tokens, one round (plain BatchPrompt);
- ``bpe``: ``--rounds`` permutation rounds, majority vote;
- ``bpe+seas``: the same, with early stopping after 2 confident equal answers.

Reported per seed: accuracy, model calls and prompt tokens (and their ratio to ``single``).
Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_batchprompt.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header
from mixbatch.prompting import BatchPromptSettings, PositionBiasedModel, batch_prompt
from mixbatch.tokenizer import ByteTokenizer

LABELS = ["yes", "no"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--instruction-bytes", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--first", type=float, default=0.95)
    ap.add_argument("--last", type=float, default=0.6)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print(header("bench_batchprompt: batched prompts, permutation voting, early stopping",
                 ["numpy"], {"settings": f"{args.items} items, budget {args.budget} tokens, "
                             f"instruction {args.instruction_bytes} bytes, {args.rounds} rounds, "
                             f"accuracy {args.first} -> {args.last} by position"}))
    methods = {
        "single": BatchPromptSettings(budget=args.budget, max_items=1, rounds=1, early_stop=False),
        "batch": BatchPromptSettings(budget=args.budget, rounds=1, early_stop=False),
        "bpe": BatchPromptSettings(budget=args.budget, rounds=args.rounds, early_stop=False),
        "bpe+seas": BatchPromptSettings(budget=args.budget, rounds=args.rounds),
    }
    instruction = ("Answer yes or no for each claim. " * 200)[: args.instruction_bytes]
    print()
    print("| seed | method | accuracy | calls | prompt tokens | calls / single | tokens / single |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        items = [f"claim {seed}-{i}: " + "".join(rng.choice(list("abcdefgh "), rng.integers(8, 110)))
                 for i in range(args.items)]
        truth = {t: LABELS[int(rng.integers(0, 2))] for t in items}
        base = None
        for name, settings in methods.items():
            model = PositionBiasedModel(truth, LABELS, first=args.first, last=args.last, seed=seed)
            r = batch_prompt(items, model, ByteTokenizer(), instruction,
                             BatchPromptSettings(**{**vars(settings), "seed": seed}), LABELS)
            acc = float(np.mean([a == truth[t] for a, t in zip(r.answers, items, strict=True)]))
            base = base or (r.calls, r.prompt_tokens)
            print(f"| {seed} | {name} | {acc:.3f} | {r.calls} | {r.prompt_tokens} | "
                  f"{r.calls / base[0]:.3f} | {r.prompt_tokens / base[1]:.3f} |")


if __name__ == "__main__":
    main()
