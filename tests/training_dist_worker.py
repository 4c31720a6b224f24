"""Run by test_training_moe.py / test_training_noise.py as two gloo processes on loopback:
each rank computes its part of a global quantity on its rows of one shared synthetic batch."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from dist_common import exit_now, gather_to
from mixbatch.training.moe_balance import GlobalBalanceLoss
from mixbatch.training.noise import NoiseHookState, NoiseScale, noise_scale_hook


def shared_batch(seed: int, sizes: list[int], n_experts: int, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits and top-k choices of ``sum(sizes)`` tokens (the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(sum(sizes), n_experts, generator=g, dtype=torch.float64)
    return logits, logits.topk(k, dim=1).indices


def moe(rank: int, world: int, args: dict) -> dict:
    sizes, n = args["sizes"], args["n_experts"]
    logits, topk = shared_batch(args["seed"], [s for rs in sizes for s in rs], n, args["k"])
    # micro-batch j of rank r: rows of the concatenation in (micro-batch, rank) order
    bounds = torch.tensor([0] + [s for j in range(len(sizes[0])) for s in
                                 (sizes[r][j] for r in range(world))]).cumsum(0).tolist()
    mod = GlobalBalanceLoss(args["n_experts_on"][rank])
    losses, grads = [], []
    for j in range(len(sizes[0])):
        lo, hi = bounds[j * world + rank], bounds[j * world + rank + 1]
        x = logits[lo:hi].clone().requires_grad_(True)
        loss = mod(torch.softmax(x, dim=1), topk[lo:hi])
        loss.backward()
        losses.append(float(loss))
        grads.append(x.grad.tolist())
    return {"rank": rank, "losses": losses, "grads": grads, "counts": mod.counts.tolist()}


def gradients(seed: int, steps: int, batch: int, dim: int) -> torch.Tensor:
    """Per-example gradients (steps, batch, dim): mean ``G = 1/sqrt(dim)`` in every coordinate
    (|G|² = 1), standard deviation ``sigma`` (tr Σ = dim·sigma²)."""
    g = torch.Generator().manual_seed(seed)
    return dim ** -0.5 + 2.0 * torch.randn(steps, batch, dim, generator=g, dtype=torch.float64)


def noise(rank: int, world: int, args: dict) -> dict:
    """DDP on a linear loss whose per-example gradient is a given vector."""
    from torch.nn.parallel import DistributedDataParallel

    b = args["local_batch"]
    xs = gradients(args["seed"], args["steps"], b * world, args["dim"])
    model = torch.nn.Linear(args["dim"], 1, bias=False).double()
    ddp = DistributedDataParallel(model)
    state = NoiseHookState(NoiseScale(args["beta"]), b)
    ddp.register_comm_hook(state, noise_scale_hook)
    estimates = []
    for x in xs:
        ddp(x[rank * b:(rank + 1) * b]).mean().backward()
        estimates.append(state.finish_step())
        grad = model.weight.grad.tolist()
        ddp.zero_grad()
    return {"rank": rank, "estimates": estimates, "grad": grad}


def trainer(rank: int, world: int, args: dict) -> dict:
    """The proxy trainer on this rank with the noise scale on."""
    from mixbatch.config import load_config
    from mixbatch.proxy import ProxyConfig
    from mixbatch.proxy.trainer import Trainer

    with Trainer(load_config(args["config"]), ProxyConfig.from_dict(args["proxy"]),
                 distributed=True) as t:
        t.run()
        return {"rank": rank, "noise": t.noise_scale, "losses": t.losses(),
                "state": t.noise.state_dict() if t.noise else None}


def main() -> None:
    kind, args, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = {"moe": moe, "noise": noise, "trainer": trainer}[kind](rank, world, args)
    except Exception as e:  # the test reads the message
        result = {"rank": rank, "error": f"{type(e).__name__}: {e}"}
    gather_to(out, result)


if __name__ == "__main__":
    main()
    exit_now()
