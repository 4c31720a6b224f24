"""Mixed precision as a proxy option (``ProxyConfig.bf16``, :func:`amp_dtype`): bfloat16 autocast
on CPUs when asked, float32 parameters, optimiser state and loss, one clear error for a device
that cannot do it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixbatch.errors import ConfigError
from mixbatch.proxy.evaluate import amp_dtype
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from test_loader import _cfg
from test_online import _tiny

CPU = torch.device("cpu")


def test_amp_dtype_on_cpu() -> None:
    assert amp_dtype(CPU, None) is None  # auto: CPUs stay float32
    assert amp_dtype(CPU, False) is None
    assert amp_dtype(CPU, True) is torch.bfloat16


def test_amp_dtype_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    assert amp_dtype(gpu, None) is torch.bfloat16 and amp_dtype(gpu, True) is torch.bfloat16
    assert amp_dtype(gpu, False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: False)
    assert amp_dtype(gpu, None) is None  # auto: float32 where the GPU has no bf16
    with pytest.raises(ConfigError, match=r"proxy.bf16: true .* Old GPU cannot do bfloat16"):
        amp_dtype(gpu, True)


def test_amp_dtype_without_cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda *_: False)
    with pytest.raises(ConfigError, match="cpu cannot do bfloat16"):
        amp_dtype(CPU, True)
    assert amp_dtype(CPU, None) is None


class _Dtypes(Hooks):
    def __init__(self) -> None:
        self.seen: list[tuple[torch.dtype, torch.dtype]] = []

    def before_backward(self, step: Step) -> None:
        assert step.out is not None and step.out.losses is not None
        self.seen.append((step.out.logits.dtype, step.out.losses.dtype))


def _run(cfg, proxy, start: int = 0, end: int | None = None, state=None):
    with Trainer(cfg, proxy) as t:
        if state is not None:
            t.load_state_dict(state)
        t.eval_rows = t.heldout_rows()
        hooks = _Dtypes()
        t.run(start, end, hooks)
        opt_dtypes = {v.dtype for s in t.opt.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor) and v.dim() > 0}
        return (t.amp, hooks.seen, t.losses(), t.history[-1]["val_loss_mean"] if t.history
                else None, {p.dtype for p in t.model.parameters()}, opt_dtypes, t.state_dict())


def test_trainer_bf16_on_cpu_mixes_and_keeps_float32_state(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = _tiny(steps=6, eval_every=None)
    amp, seen, losses, val, params, opt, _ = _run(cfg, proxy.model_copy(update={"bf16": True}))
    assert amp is torch.bfloat16
    # the matmuls ran in bfloat16, the loss (cross entropy on float32 logits) in float32
    assert seen == [(torch.bfloat16, torch.float32)] * 6
    assert params == {torch.float32} and opt == {torch.float32}
    f_amp, f_seen, f_losses, f_val, f_params, f_opt, _ = _run(cfg, proxy)  # auto on a CPU
    assert f_amp is None and f_seen == [(torch.float32, torch.float32)] * 6
    assert f_params == {torch.float32} and f_opt == {torch.float32}
    # same model, same batches: close, but not the same numbers
    assert losses != f_losses
    assert losses == pytest.approx(f_losses, abs=0.05) and val == pytest.approx(f_val, abs=0.05)
    off = _run(cfg, proxy.model_copy(update={"bf16": False}))
    assert off[0] is None and off[2] == f_losses


def test_trainer_bf16_resumes_exactly(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, holdout=0.2)
    proxy = _tiny(steps=8, eval_every=None, bf16=True, schedule="wsd")
    straight = _run(cfg, proxy)
    half = _run(cfg, proxy, 0, 4)
    rest = _run(cfg, proxy, 4, None, half[-1])
    assert rest[2] == straight[2][4:] and rest[3] == straight[3]
