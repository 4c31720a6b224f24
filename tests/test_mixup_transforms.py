"""MixUp / CutMix transforms, records, Manifold Mixup and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixbatch.errors import ConfigError, DataError, StateError
from mixbatch.mixup import (
    CutMix,
    ManifoldMixup,
    MixRecord,
    MixUp,
    Mixup,
    apply_record,
    cutmix,
    draw_record,
    mix_attention_mask,
    mix_features,
    mix_targets,
    mixup,
)


def _batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 10, 12, generator=g), torch.randint(0, 5, (b,), generator=g)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_same_seed_same_output(mode: str) -> None:
    x, y = _batch()
    outs = []
    for _ in range(2):
        m = Mixup(0.8, 1.0, mode=mode, num_classes=5, seed=42)
        outs.append([m(x, y) for _ in range(3)])
    for (xa, ya), (xb, yb) in zip(*outs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = Mixup(0.8, 1.0, mode=mode, num_classes=5, seed=43)(x, y)
    assert not torch.equal(other[0], outs[0][0][0])


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_record_describes_the_output(mode: str) -> None:
    """Every row equals the loop-free formula rebuilt row by row from its record."""
    x, y = _batch()
    m = Mixup(0.8, 1.0, mode=mode, num_classes=5, label_smoothing=0.0, seed=3)
    for _ in range(5):
        out, soft, rec = m.mix(x, y)
        for i in range(8):
            j = int(rec.index[i])
            lam = float(rec.lam[i])
            if bool(rec.cutmix[i]):
                y1, y2, x1, x2 = (int(v) for v in rec.box[i])
                want = x[i].clone()
                want[:, y1:y2, x1:x2] = x[j][:, y1:y2, x1:x2]
                assert lam == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 120, abs=1e-6)
            else:
                want = lam * x[i] + (1 - lam) * x[j]
            torch.testing.assert_close(out[i], want)
            assert soft[i].sum() == pytest.approx(1.0, abs=1e-5)
            assert soft[i, y[i]] >= lam - 1e-6


def test_pair_mode_is_symmetric() -> None:
    for pairing in ("flip", "random"):
        rec = draw_record(10, (8, 8), np.random.default_rng(0), mixup_alpha=1.0, cutmix_alpha=1.0,
                          mode="pair", pairing=pairing)
        idx = rec.index
        assert torch.equal(idx[idx], torch.arange(10))
        assert bool((idx != torch.arange(10)).all())
        assert torch.equal(rec.lam[idx], rec.lam) and torch.equal(rec.box[idx], rec.box)


def test_prob_zero_leaves_batch_and_one_hot_targets() -> None:
    x, y = _batch()
    out, soft, rec = Mixup(1.0, 1.0, prob=0.0, num_classes=5, label_smoothing=0.0, seed=0).mix(x, y)
    assert out is x and bool((rec.lam == 1).all())
    assert torch.equal(soft, torch.nn.functional.one_hot(y, 5).float())
    m = Mixup(1.0, num_classes=5, seed=0)
    m.mixup_enabled = False
    assert m(x, y)[0] is x


def test_pairings() -> None:
    rng = np.random.default_rng(0)
    assert draw_record(4, None, rng, pairing="flip").index.tolist() == [3, 2, 1, 0]
    assert draw_record(4, None, rng, pairing="roll").index.tolist() == [3, 0, 1, 2]
    assert sorted(draw_record(6, None, rng, pairing="random").index.tolist()) == list(range(6))


def test_torchvision_style_classes() -> None:
    x, y = _batch(6)
    out, soft = MixUp(alpha=0.5, num_classes=5, seed=0)(x, y)
    assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6))
    out, soft = CutMix(alpha=1.0, num_classes=5, seed=0)(x, y)
    assert out.shape == x.shape
    with pytest.raises(ConfigError, match="alpha"):
        MixUp(alpha=0.0, num_classes=5)
    with pytest.raises(ConfigError, match="num_classes"):
        CutMix(alpha=1.0)(x, y)


def test_cutmix_on_sequences_and_uint8() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 50, generator=g)          # (B, C, T) time-series windows
    y = torch.tensor([0, 1, 2, 3])
    out, _, rec = cutmix(x, y, 1.0, num_classes=4, seed=1, spatial_dims=1)
    for i in range(4):
        _, _, x1, x2 = (int(v) for v in rec.box[i])
        torch.testing.assert_close(out[i, :, x1:x2], x[int(rec.index[i]), :, x1:x2])
        torch.testing.assert_close(out[i, :, :x1], x[i, :, :x1])
    img = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    out, _, _ = cutmix(img, y, 1.0, num_classes=4, seed=0)
    assert out.dtype == torch.uint8
    with pytest.raises(DataError, match="cannot be blended"):
        mixup(img, y, 1.0, num_classes=4, seed=0)


def test_mix_features_any_shape() -> None:
    emb = torch.randn(4, 7, 16)                      # token embeddings (B, T, D)
    rec = draw_record(4, None, np.random.default_rng(0), mixup_alpha=1.0, pairing="random")
    out = mix_features(emb, rec)
    lam = rec.lam.view(-1, 1, 1)
    torch.testing.assert_close(out, lam * emb + (1 - lam) * emb[rec.index])
    assert torch.equal(mix_features(emb, MixRecord.identity(4)), emb)
    lengths = torch.tensor([7, 3, 5, 1])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    merged = mix_attention_mask(mask, rec)
    for i in range(4):
        j = int(rec.index[i]) if bool(rec.mixed[i]) else i
        assert merged[i].sum() == max(lengths[i], lengths[j])
    torch.testing.assert_close(mix_attention_mask(mask.long(), rec), merged.long())


def test_bad_input_names_the_argument() -> None:
    x, y = _batch()
    with pytest.raises(ConfigError, match="mixup_alpha"):
        Mixup(mixup_alpha=-1.0, num_classes=5)
    with pytest.raises(ConfigError, match="mixup_alpha, cutmix_alpha"):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=5)
    with pytest.raises(ConfigError, match="alpha"):
        mixup(x, y, 0.0, num_classes=5)
    with pytest.raises(ConfigError, match="mode"):
        Mixup(mode="row", num_classes=5)
    with pytest.raises(ConfigError, match="cutmix_minmax"):
        Mixup(cutmix_minmax=(0.9, 0.1), num_classes=5)
    with pytest.raises(DataError, match="target: label 7 is out of range"):
        Mixup(num_classes=5)(x, torch.tensor([0, 1, 2, 7, 0, 1, 2, 3]))
    with pytest.raises(DataError, match="target: expected shape"):
        Mixup(num_classes=5)(x, y[:5])
    with pytest.raises(DataError, match="columns do not match num_classes"):
        Mixup(num_classes=5)(x, torch.rand(8, 4))
    with pytest.raises(DataError, match="even batch size"):
        Mixup(mode="pair", num_classes=5)(x[:7], y[:7])
    with pytest.raises(ConfigError, match="pairing"):
        Mixup(mode="pair", pairing="roll", num_classes=5)
    with pytest.raises(DataError, match="batch of 7 rows"):
        apply_record(x[:7], draw_record(8, None, np.random.default_rng(0)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.conv(x)).mean((2, 3)))


def test_manifold_mixup_mixes_the_named_layer() -> None:
    torch.manual_seed(0)
    net = _Net()
    x, y = _batch(6)
    mm = ManifoldMixup(net, ["block"], num_classes=5, include_input=False, seed=0)
    out, soft, rec = mm(x, y)
    h = net.block(net.conv(x))      # the hook mixes the named module's output
    want = net.head(mix_features(h, rec).mean((2, 3)))
    torch.testing.assert_close(out, want)
    assert mm.last_layer == "block" and not net.block._forward_hooks
    torch.testing.assert_close(soft, mix_targets(y, rec, 5))
    with pytest.raises(ConfigError, match="'layer9' is not a module of _Net"):
        ManifoldMixup(net, ["layer9"], num_classes=5)
    with pytest.raises(ConfigError, match="alpha"):
        ManifoldMixup(net, ["block"], alpha=0.0, num_classes=5)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 9), seed=st.integers(0, 2**31), mode=st.sampled_from(["batch", "elem"]),
       mix=st.floats(0.0, 2.0), cut=st.floats(0.0, 2.0), prob=st.floats(0.0, 1.0))
def test_records_are_valid(b: int, seed: int, mode: str, mix: float, cut: float, prob: float) -> None:
    if mix == 0 and cut == 0:
        mix = 1.0
    rec = draw_record(b, (7, 5), np.random.default_rng(seed), mixup_alpha=mix, cutmix_alpha=cut,
                      prob=prob, mode=mode, pairing="random")
    assert bool(((rec.lam >= 0) & (rec.lam <= 1)).all())
    assert sorted(rec.index.tolist()) == list(range(b))
    box = rec.box[rec.cutmix]
    assert bool(((box[:, 0] <= box[:, 1]) & (box[:, 1] <= 7)).all())
    assert bool(((box[:, 2] <= box[:, 3]) & (box[:, 3] <= 5)).all())
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    torch.testing.assert_close(rec.lam[rec.cutmix], 1 - area.float() / 35)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_gpu_matches_cpu(mode: str) -> None:
    x, y = _batch()
    m = Mixup(0.8, 1.0, mode=mode, num_classes=5)
    for seed in range(4):
        rec = m.sample(x, np.random.default_rng(seed))
        torch.testing.assert_close(apply_record(x.cuda(), rec).cpu(), apply_record(x, rec))
        torch.testing.assert_close(mix_targets(y.cuda(), rec, 5).cpu(), mix_targets(y, rec, 5))


def test_mixers_resume_from_their_state() -> None:
    import json

    x, y = _batch()
    net = _Net()
    makers = [lambda: Mixup(0.8, 1.0, mode="elem", num_classes=5, seed=9),
              lambda: MixUp(alpha=1.0, num_classes=5, seed=9),
              lambda: ManifoldMixup(net, ["block"], num_classes=5, seed=9)]
    for make in makers:
        a = make()
        for _ in range(3):
            a(x, y)
        state = json.loads(json.dumps(a.state_dict()))
        straight = [a(x, y)[0] for _ in range(2)]
        b = make()
        b.load_state_dict(state)
        for want in straight:
            assert torch.equal(b(x, y)[0], want)
    with pytest.raises(StateError, match="state"):
        Mixup(num_classes=5).load_state_dict({"rng": 1})


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_kernel_and_torch_paths_agree(mode: str) -> None:
    """The compiled CPU kernel (float32/64) and the torch path (half precision, autograd,
    1-D sequences) give the same batch for the same record."""
    from mixbatch.mixup.kernels import fits_kernel

    x, _ = _batch(10)
    m = Mixup(0.8, 1.0, mode=mode, num_classes=5)
    for seed in range(4):
        rec = m.sample(x, np.random.default_rng(seed))
        assert bool(rec.cutmix.any()) or seed < 3
        fast = apply_record(x, rec)
        assert fits_kernel(x)
        ref = apply_record(x.double(), rec)
        torch.testing.assert_close(fast, ref.float())
        with_grad = x.clone().requires_grad_()
        slow = apply_record(with_grad, rec)                  # not the kernel: autograd flows
        torch.testing.assert_close(slow.detach(), fast)
        slow.sum().backward()
        assert with_grad.grad is not None and with_grad.grad.shape == x.shape
        torch.testing.assert_close(apply_record(x.half(), rec).float(), fast, atol=2e-2, rtol=2e-2)
        seq = x.reshape(10, 3, 120)
        m1 = Mixup(0.8, 1.0, mode=mode, num_classes=5, spatial_dims=1)
        rec1 = m1.sample(seq, np.random.default_rng(seed))
        torch.testing.assert_close(apply_record(seq, rec1), apply_record(seq.double(), rec1).float())
        torch.testing.assert_close(apply_record(seq, rec1), apply_record(seq.requires_grad_(), rec1).detach())


def test_kernel_mixup_rows_of_any_shape() -> None:
    """MixUp-only records through the compiled pass equal mix_features for any row shape."""
    rec = draw_record(6, None, np.random.default_rng(0), mode="elem")
    g = torch.Generator().manual_seed(0)
    for shape in ((6,), (6, 5), (6, 2, 3, 4, 5)):
        x = torch.randn(shape, generator=g)
        torch.testing.assert_close(apply_record(x, rec), mix_features(x, rec))
        torch.testing.assert_close(apply_record(x.double(), rec), mix_features(x.double(), rec))


def test_records_pointing_outside_the_batch_are_refused() -> None:
    """The compiled pass reads by index: a hand-made record that points outside the batch or
    the image is a DataError naming the field."""
    x, _ = _batch(4)
    ok = draw_record(4, (10, 12), np.random.default_rng(0), mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem")
    bad_index = MixRecord(ok.lam.clamp(max=0.5), torch.tensor([1, 0, 3, 4]), ok.box, ok.cutmix)
    bad_box = MixRecord(ok.lam.clamp(max=0.5), ok.index, torch.tensor([[0, 11, 0, 4]] * 4), ok.cutmix)
    for rec, field in ((bad_index, "record.index"), (bad_box, "record.box")):
        with pytest.raises(DataError, match=field):
            apply_record(x, rec)
