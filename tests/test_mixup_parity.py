"""Parity with timm's Mixup and torchvision v2's MixUp/CutMix: same lambda, partners and box
give the same mixed inputs and targets to float tolerance."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from mixbatch.mixup import MixRecord, apply_record, mix_targets


def _import_anchor(name: str) -> ModuleType:
    """Import timm / torchvision. PyPI's torchvision 0.28 wheel is a CUDA build whose compiled
    ops cannot load beside the CPU torch used here; its import then stops at registering fake
    kernels for ``torchvision::nms``/``qnms``. Declaring those two schemas first lets the pure
    Python transforms (the ones compared here) import; no compiled op is used."""
    for dist in ("torchvision", "timm"):
        if importlib.util.find_spec(dist) is None:
            pytest.skip(f"{dist} is not installed (it is in the dev extra)")
    try:
        return importlib.import_module(name)
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for mod in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[mod]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # already declared
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)
    print("torchvision's compiled ops are unavailable (CUDA wheel beside CPU torch): "
          "declared torchvision::nms/qnms schemas to import the pure-Python transforms")
    return importlib.import_module(name)


_LIBS: list[Any] = []


@pytest.fixture(scope="module")
def timm_mixup() -> ModuleType:
    return _import_anchor("timm.data.mixup")


@pytest.fixture(scope="module")
def tv2() -> ModuleType:
    return _import_anchor("torchvision.transforms.v2")


def _timm_run(tm: ModuleType, m: Any, x: torch.Tensor, y: torch.Tensor, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
    """Run timm's Mixup and rebuild the record it used from its own draws."""
    b = x.shape[0]
    drawn: dict[str, Any] = {"boxes": []}
    orig_box, orig_elem, orig_batch = tm.cutmix_bbox_and_lam, m._params_per_elem, m._params_per_batch

    def box(*a: Any, **k: Any) -> Any:
        out = orig_box(*a, **k)
        drawn["boxes"].append(out)
        return out

    def elem(n: int) -> Any:
        lam, cut = orig_elem(n)
        drawn["lam"], drawn["cut"] = lam.copy(), cut.copy()
        return lam, cut

    def batch() -> Any:
        lam, cut = orig_batch()
        drawn["lam"], drawn["cut"] = np.array([lam]), np.array([cut])
        return lam, cut

    tm.cutmix_bbox_and_lam = box
    m._params_per_elem, m._params_per_batch = elem, batch
    try:
        np.random.seed(seed)
        out_x, out_y = m(x.clone(), y)
    finally:
        tm.cutmix_bbox_and_lam = orig_box
    n = len(drawn["lam"])
    lam = drawn["lam"].astype(np.float64)
    cut = drawn["cut"] & (lam != 1.0)
    boxes = np.zeros((n, 4), dtype=np.int64)
    it = iter(drawn["boxes"])
    for i in range(n):
        if cut[i]:
            (yl, yh, xl, xh), lam[i] = next(it)
            boxes[i] = [yl, yh, xl, xh]
    if m.mode == "batch":
        rows = np.zeros(b, dtype=np.int64)
    elif m.mode == "pair":
        rows = np.minimum(np.arange(b), b - 1 - np.arange(b))
    else:
        rows = np.arange(b)
    rec = MixRecord(torch.tensor(lam[rows], dtype=torch.float32), torch.arange(b - 1, -1, -1),
                    torch.from_numpy(boxes[rows]), torch.from_numpy(cut[rows]))
    return out_x, out_y, rec


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize(("mix_a", "cut_a", "minmax"), [(0.8, 0.0, None), (0.0, 1.0, None),
                                                         (0.8, 1.0, None), (0.0, 1.0, (0.2, 0.8))])
def test_timm_parity(timm_mixup: ModuleType, mode: str, mix_a: float, cut_a: float,
                     minmax: tuple[float, float] | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 12, 10, generator=g)
    y = torch.randint(0, 7, (8,), generator=g)
    for seed in range(6):
        m = timm_mixup.Mixup(mixup_alpha=mix_a, cutmix_alpha=cut_a, cutmix_minmax=minmax, prob=0.8,
                             switch_prob=0.5, mode=mode, correct_lam=True, label_smoothing=0.1,
                             num_classes=7)
        tx, ty, rec = _timm_run(timm_mixup, m, x, y, seed)
        ours = apply_record(x, rec)
        torch.testing.assert_close(ours, tx, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mix_targets(y, rec, 7, 0.1), ty, rtol=1e-5, atol=1e-6)


def test_torchvision_parity(tv2: ModuleType) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 9, 11, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    roll = (torch.arange(6) - 1) % 6
    for seed in range(5):
        mix = tv2.MixUp(alpha=1.0, num_classes=4)
        torch.manual_seed(seed)
        lam = mix.make_params([x])["lam"]
        torch.manual_seed(seed)
        tx, ty = mix(x.clone(), y)
        rec = MixRecord(torch.full((6,), lam), roll, torch.zeros(6, 4, dtype=torch.long),
                        torch.zeros(6, dtype=torch.bool))
        torch.testing.assert_close(apply_record(x, rec), tx, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mix_targets(y, rec, 4), ty, rtol=1e-5, atol=1e-6)

        cut = tv2.CutMix(alpha=1.0, num_classes=4)
        torch.manual_seed(seed)
        p = cut.make_params([x])
        torch.manual_seed(seed)
        tx, ty = cut(x.clone(), y)
        x1, y1, x2, y2 = p["box"]
        rec = MixRecord(torch.full((6,), p["lam_adjusted"]), roll,
                        torch.tensor([[y1, y2, x1, x2]] * 6), torch.ones(6, dtype=torch.bool))
        torch.testing.assert_close(apply_record(x, rec), tx)
        torch.testing.assert_close(mix_targets(y, rec, 4), ty, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_timm_parity_uncorrected_lam_and_multi_label(timm_mixup: ModuleType, mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 2, 9, 9, generator=g)
    dense = (torch.rand(6, 4, generator=g) > 0.5).float()
    for seed in range(6):
        m = timm_mixup.Mixup(mixup_alpha=0.5, cutmix_alpha=1.0, mode=mode, correct_lam=False,
                             label_smoothing=0.2, num_classes=4, multi_label=True)
        tx, ty, rec = _timm_run(timm_mixup, m, x, dense, seed)
        torch.testing.assert_close(apply_record(x, rec), tx, rtol=1e-5, atol=1e-6)
        ours = mix_targets(dense, rec, 4, 0.2, multi_label=True)
        torch.testing.assert_close(ours, ty, rtol=1e-5, atol=1e-6)
