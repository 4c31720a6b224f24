from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixbatch.errors import ConfigError, StateError
from mixbatch.training.moe_balance import GlobalBalanceLoss, expert_counts, micro_balance_loss
from test_torch import _free_port
from training_dist_worker import shared_batch

WORKER = Path(__file__).with_name("training_dist_worker.py")


def run_gloo(tmp_path: Path, kind: str, args: dict) -> list[dict]:
    out = tmp_path / f"{kind}.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2"}
    cmd = [sys.executable, str(WORKER), kind, json.dumps(args), str(out)]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    return json.loads(out.read_text())


def test_uniform_routing_gives_one_and_skew_more() -> None:
    n = 4
    gates = torch.full((8, n), 1 / n)
    topk = torch.arange(8).remainder(n).reshape(8, 1)
    assert float(micro_balance_loss(gates, topk, n)) == pytest.approx(1.0)
    skew = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert float(micro_balance_loss(skew, torch.zeros(8, 1, dtype=torch.long), n)) == \
        pytest.approx(4 * 0.7)


def test_global_accumulates_micro_batches_and_differs_from_micro() -> None:
    logits, topk = shared_batch(1, [6, 6], 4, 2)
    gates = torch.softmax(logits, dim=1)
    mod = GlobalBalanceLoss(4)
    first = mod(gates[:6], topk[:6])
    assert float(first) == pytest.approx(float(micro_balance_loss(gates[:6], topk[:6], 4)))
    second = mod(gates[6:], topk[6:])
    f = expert_counts(topk, 4) / topk.numel()  # the whole step's selections
    assert float(second) == pytest.approx(float(4 * (f * gates[6:].mean(0)).sum()))
    assert float(second) != pytest.approx(float(micro_balance_loss(gates[6:], topk[6:], 4)))
    state = mod.state_dict()
    again = GlobalBalanceLoss(4)
    again.load_state_dict(state)  # resume inside a step: the counts so far come back
    assert torch.equal(again.counts, mod.counts)
    mod.new_step()
    assert float(mod.counts.sum()) == 0
    with pytest.raises(StateError, match="saved counts for 4 experts"):
        GlobalBalanceLoss(5).load_state_dict(state)


def test_bad_shapes_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"gates must be \(tokens, 4\)"):
        micro_balance_loss(torch.zeros(3, 5), torch.zeros(3, 1, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match=r"expert indices must be in \[0, 4\)"):
        micro_balance_loss(torch.zeros(3, 4), torch.full((3, 1), 4), 4)


def test_gloo_global_loss_equals_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    sizes = [[5, 3], [7, 4]]  # rank 0's and rank 1's two micro-batches: unequal on purpose
    args = {"seed": 7, "sizes": sizes, "n_experts": 6, "n_experts_on": [6, 6], "k": 2}
    ranks = run_gloo(tmp_path, "moe", args)
    logits, topk = shared_batch(7, [s for rs in sizes for s in rs], 6, 2)
    one = GlobalBalanceLoss(6)
    lo = 0
    for j in range(2):
        hi = lo + sizes[0][j] + sizes[1][j]
        x = logits[lo:hi].clone().requires_grad_(True)
        loss = one(torch.softmax(x, dim=1), topk[lo:hi])
        loss.backward()
        assert (ranks[0]["losses"][j] + ranks[1]["losses"][j]) / 2 == pytest.approx(loss.item())
        # data-parallel averaging of each rank's gradient gives the one-process gradient
        grad = torch.cat([torch.tensor(r["grads"][j], dtype=torch.float64) / 2 for r in ranks])
        assert torch.allclose(grad, x.grad, atol=1e-12)
        lo = hi
    assert ranks[0]["counts"] == ranks[1]["counts"] == one.counts.tolist()


def test_gloo_expert_count_mismatch_is_one_error(tmp_path: Path) -> None:
    args = {"seed": 7, "sizes": [[3], [3]], "n_experts": 4, "n_experts_on": [4, 5], "k": 1}
    ranks = run_gloo(tmp_path, "moe", args)
    for r in ranks:
        assert "ranks disagree on the expert count" in r["error"]
