from __future__ import annotations

import copy

import pytest
import torch

from mixbatch.errors import ConfigError
from mixbatch.training.ghost_bn import GhostBatchNorm
from mixbatch.training.lamb import Lamb
from test_mixup_parity import _import_anchor


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64)),
            torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))]  # zero norm: ratio 1


@pytest.mark.parametrize("kw", [{}, {"trust_clip": True}, {"always_adapt": True}])
def test_lamb_matches_timm(kw: dict) -> None:
    timm_lamb = _import_anchor("timm.optim.lamb").Lamb
    ours, theirs = _params(0), _params(0)

    def groups(ps):
        return [{"params": ps[:1], "weight_decay": 0.05}, {"params": ps[1:], "weight_decay": 0.0}]

    a = Lamb(groups(ours), lr=0.01, **kw)
    b = timm_lamb(groups(theirs), lr=0.01, max_grad_norm=None, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ours]
        for ps, opt in ((ours, a), (theirs, b)):
            for p, gr in zip(ps, grads, strict=True):
                p.grad = gr.clone()
            opt.step()
    for x, y in zip(ours, theirs, strict=True):
        assert torch.allclose(x, y, atol=1e-12)


def test_lamb_step_is_trust_ratio_times_lr() -> None:
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # ‖x‖ = 5
    p.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    Lamb([p], lr=0.1, weight_decay=0.0, always_adapt=True).step()
    # first step: r = g/(|g| + eps) ≈ sign(g), ‖u‖ ≈ sqrt(2): the step is lr·5 along -sign(g)/sqrt(2)
    assert torch.allclose(p.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64)
                          - 0.1 * 5 / 2**0.5 * torch.tensor([1.0, -1.0], dtype=torch.float64),
                          atol=1e-5)
    with pytest.raises(ConfigError, match=r"lamb\.lr"):
        Lamb([p], lr=0.0)


def test_ghost_bn_is_batchnorm_per_chunk() -> None:
    x = torch.randn(12, 3, 5, generator=torch.Generator().manual_seed(0))
    ghost = GhostBatchNorm(3, ghost_batch_size=4)
    with torch.no_grad():
        ghost.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ghost.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    ref = torch.nn.BatchNorm1d(3)
    ref.load_state_dict(ghost.state_dict())
    y = ghost(x)
    want = torch.cat([ref(c) for c in x.split(4)])  # three updates of the reference's stats
    assert torch.allclose(y, want, atol=1e-5)
    # one ghost batch = the whole batch: plain BatchNorm, running statistics included
    whole, plain = GhostBatchNorm(3, 12), torch.nn.BatchNorm1d(3)
    assert torch.allclose(whole(x), plain(x), atol=1e-5)
    assert torch.allclose(whole.running_var, plain.running_var, atol=1e-6)
    assert torch.allclose(whole.running_mean, plain.running_mean, atol=1e-6)
    whole.eval()
    plain.eval()
    assert torch.allclose(whole(x), plain(x), atol=1e-5)
    with pytest.raises(ConfigError, match="does not split into ghost batches of 5"):
        GhostBatchNorm(3, 5)(x)


def test_proxy_trainer_with_lamb_learns_and_resumes(tmp_path) -> None:
    from mixbatch.proxy.trainer import Trainer
    from test_loader import _cfg
    from test_online import _tiny

    cfg = _cfg(tmp_path)
    proxy = _tiny(steps=8, optimizer="lamb", eval_every=None)
    with Trainer(cfg, proxy) as t:
        assert isinstance(t.opt, Lamb)
        t.run(0, 4)
        state = copy.deepcopy(t.state_dict())  # the optimiser's state is updated in place
        t.run(4, 8)
        losses = t.losses()
    assert losses[-1] < losses[0]
    with Trainer(cfg, proxy) as again:
        again.load_state_dict(state)
        again.run(4, 8)
        assert again.losses() == losses[4:]
