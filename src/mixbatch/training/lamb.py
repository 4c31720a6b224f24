"""LAMB, the layer-wise adaptive large-batch optimiser ("Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", You et al., Algorithm 2).

Per parameter tensor ``x`` with gradient ``g`` at step ``t``:

    m ← β1·m + (1 − β1)·g,      v ← β2·v + (1 − β2)·g²
    r = (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + ε)
    u = r + λ·x
    x ← x − η · (‖x‖ / ‖u‖) · u          (trust ratio 1 where either norm is 0)

As in timm's ``Lamb`` (whose defaults these are: β = (0.9, 0.999), ε = 1e-6, λ = 0.01) the trust
ratio applies only to tensors with weight decay unless ``always_adapt``, and ``trust_clip``
caps it at 1 (LAMBC). Global gradient clipping is left to the caller
(``torch.nn.utils.clip_grad_norm_``, as the proxy trainer does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from mixbatch.checks import real

__all__ = ["Lamb"]


class Lamb(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, trust_clip: bool = False,
                 always_adapt: bool = False) -> None:
        real("lamb.lr", lr, lo=0, lo_open=True)
        real("lamb.beta1", betas[0], lo=0, hi=1, hi_open=True)
        real("lamb.beta2", betas[1], lo=0, hi=1, hi_open=True)
        real("lamb.eps", eps, lo=0, lo_open=True)
        real("lamb.weight_decay", weight_decay, lo=0)
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "trust_clip": trust_clip,
                                  "always_adapt": always_adapt})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                u = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if decay != 0:
                    u.add_(p, alpha=decay)
                ratio = torch.ones((), dtype=p.dtype, device=p.device)
                if decay != 0 or group["always_adapt"]:
                    w_norm, u_norm = p.norm(), u.norm()
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, ratio)
                    if group["trust_clip"]:
                        ratio = ratio.clamp(max=1.0)
                p.add_(u * ratio, alpha=-group["lr"])
        return loss
