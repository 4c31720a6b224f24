from __future__ import annotations

import torch

from mixbatch.torch import per_source_grads


def test_per_source_grads_match_separate_backward_passes() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    src = torch.tensor([[0, 0, 1, 1, -1], [1, 0, 0, 2, 2]])
    token_loss = head(x).pow(2).sum(-1)
    grads, present = per_source_grads(token_loss, src, 4, head.parameters())
    assert present.tolist() == [True, True, True, False]
    assert grads.shape == (4, 4 * 3 + 3)
    assert torch.all(grads[3] == 0)
    for k in range(3):
        head.zero_grad()
        head(x).pow(2).sum(-1)[src == k].mean().backward()
        expect = torch.cat([head.weight.grad.reshape(-1), head.bias.grad.reshape(-1)])
        assert torch.allclose(grads[k], expect, atol=1e-6)
    # the training graph is untouched: a normal backward still works afterwards
    head.zero_grad()
    token_loss[src >= 0].mean().backward()
    assert head.weight.grad is not None
