"""Sample mixing on real data: every mixbatch.mixup method against plain training at equal steps.

Data: scikit-learn's digits (1,797 8x8 images that ship inside the scikit-learn wheel), a
stratified 70/30 split, and a long-tail cut of its training part (class c keeps
``n_max * 10^(-c/9)`` images, imbalance 10; the test part stays balanced). Model: a small CNN
(two 3x3 convolutions, a 64-d embedding, a linear head), Adam, the same batch size and number
of optimiser steps for every method. Reported, as mean +- std over seeds:

- classification (plain, MixUp, CutMix, timm's MixUp/CutMix switch, Manifold Mixup, early
  stopped MixUp, Decoupled Mixup, RankMixup MRL and M-NDCG, AdaptiveMix, AdAutoMixup): test
  accuracy and expected calibration error (15 bins), and NC1 of the training features;
- metric learning (contrastive vs Metrix): Recall@1 on the five classes held out of training
  (the CUB/Cars protocol of unseen classes);
- self-supervised (MoCo vs MoCHi, Barlow Twins vs Mixed Barlow Twins): linear-probe accuracy;
- contrastive regression (SupCon on the digit value vs SupReMix): ridge-probe MAE of the value;
- semi-supervised with 5 labels per class (supervised only, MixMatch, FixMatch): accuracy;
- online class-incremental (5 tasks of 2 classes, one pass, replay of 200): experience replay
  vs experience replay with DualMix: final accuracy on all classes;
- speed: mixbatch's transforms against timm's ``Mixup`` and torchvision's v2 ``MixUp`` /
  ``CutMix`` on the same batch, in the same run.

Run: ``.venv/bin/python benchmarks/bench_mixup.py [--seeds 3] [--steps 400] > out.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import header, log, table
from mixbatch.mixup import (
    CutMix,
    ManifoldMixup,
    MixUp,
    Mixup,
    apply_record,
    draw_record,
    expected_calibration_error,
    mix_targets,
    neural_collapse,
)
from mixbatch.mixup import losses as L


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------
@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits(seed: int, long_tail: bool = False) -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, stratify=d.target, random_state=seed)
    if long_tail:
        rng = np.random.default_rng(seed)
        n_max = np.bincount(ytr).max()
        keep = []
        for c in range(10):
            idx = np.flatnonzero(ytr == c)
            n = max(1, int(n_max * 10 ** (-c / 9)))
            keep.append(rng.permutation(idx)[:n])
        k = np.concatenate(keep)
        xtr, ytr = xtr[k], ytr[k]
    return Split(torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte),
                 torch.from_numpy(yte).long())


class Net(nn.Module):
    def __init__(self, classes: int = 10, emb: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, emb)
        self.head = nn.Linear(emb, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation of each image by up to ``max_shift`` pixels (zero padding)."""
    b, _, h, w = x.shape
    p = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    rows = rows.expand(b, x.shape[1], h, w + 2 * max_shift)
    p = torch.gather(p, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, x.shape[1], h, w)
    return torch.gather(p, 3, cols)


def weak(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return shift(x, 1, g)


def strong(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    out = shift(x, 2, g) + 0.2 * torch.randn(x.shape, generator=g)
    b = x.shape[0]
    cy = torch.randint(0, 6, (b,), generator=g)[:, None, None, None]
    cx = torch.randint(0, 6, (b,), generator=g)[:, None, None, None]
    ys = torch.arange(8)[None, None, :, None]
    xs = torch.arange(8)[None, None, None, :]
    hole = (ys >= cy) & (ys < cy + 3) & (xs >= cx) & (xs < cx + 3)
    return out.masked_fill(hole, 0.0)


def batches(n: int, bs: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    while len(out) < steps:
        perm = rng.permutation(n)
        out += [perm[i:i + bs] for i in range(0, n - bs + 1, bs)]
    return out[:steps]


# ---------------------------------------------------------------------------------------------
# classification methods: one step's loss each
# ---------------------------------------------------------------------------------------------
def _mix_rec(x: torch.Tensor, rng: np.random.Generator, alpha: float = 1.0):
    return draw_record(x.shape[0], None, rng, mixup_alpha=alpha, pairing="random")


def train_classifier(method: str, data: Split, seed: int, steps: int, bs: int = 64) -> Net:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    extra: dict[str, Any] = {}
    if method == "timm MixUp+CutMix":
        extra["mixer"] = Mixup(0.8, 1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=10,
                               pairing="random", seed=seed)
    if method == "Manifold Mixup":
        extra["mm"] = ManifoldMixup(model, ["conv1", "conv2"], alpha=2.0, num_classes=10, seed=seed)
    if method == "AdAutoMixup":
        extra["gen"] = L.MixMaskGenerator(1, hidden=8)
        extra["gopt"] = torch.optim.Adam(extra["gen"].parameters(), lr=1e-3)
        extra["teacher"] = L.EmaTeacher(model, momentum=0.999)
    for step, idx in enumerate(batches(len(data.y_train), bs, steps, rng)):
        x, y = data.x_train[idx], data.y_train[idx]
        loss = _classification_loss(method, model, x, y, rng, step, steps, extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if "teacher" in extra:
            extra["teacher"].update(model, L.ema_momentum(step, steps))
    return model


def _classification_loss(method: str, model: Net, x: torch.Tensor, y: torch.Tensor,
                         rng: np.random.Generator, step: int, steps: int,
                         extra: dict[str, Any]) -> torch.Tensor:
    if method == "plain":
        return F.cross_entropy(model(x), y)
    if method in ("MixUp", "MixUp stopped at 60%"):
        if method.startswith("MixUp stopped") and step >= 0.6 * steps:
            return F.cross_entropy(model(x), y)
        rec = _mix_rec(x, rng)
        return L.mixed_cross_entropy(model(apply_record(x, rec)), y, rec)
    if method == "CutMix":
        rec = draw_record(x.shape[0], (8, 8), rng, mixup_alpha=0.0, cutmix_alpha=1.0, pairing="random")
        return L.mixed_cross_entropy(model(apply_record(x, rec)), y, rec)
    if method == "timm MixUp+CutMix":
        xm, ym, _ = extra["mixer"].mix(x, y, rng)
        return L.soft_target_cross_entropy(model(xm), ym)
    if method == "Manifold Mixup":
        out, ym, _ = extra["mm"](x, y, rng=rng)
        return L.soft_target_cross_entropy(out, ym)
    if method == "Decoupled Mixup":
        rec = _mix_rec(x, rng)
        out = model(apply_record(x, rec))
        return L.decoupled_mixup_loss(out, y, y[rec.index], rec.lam, eta=0.1, mode="all")
    if method == "RankMixup MRL":
        rec = _mix_rec(x, rng, alpha=2.0)
        out = model(torch.cat([x, apply_record(x, rec)]))
        raw, mixed = out[: x.shape[0]], out[x.shape[0]:]
        return L.rankmixup_mrl_loss(raw, y, mixed, mix_targets(y, rec, 10), margin=1.0, alpha=0.1)
    if method == "RankMixup M-NDCG":
        recs = [_mix_rec(x, rng, alpha=2.0) for _ in range(3)]
        out = model(torch.cat([x] + [apply_record(x, r) for r in recs]))
        raw = out[: x.shape[0]]
        mixed = out[x.shape[0]:].view(3, x.shape[0], -1)
        rel = torch.stack([mix_targets(y, r, 10).max(1).values for r in recs])
        return L.rankmixup_mndcg_loss(raw, y, mixed, rel, alpha=0.1)
    if method == "AdaptiveMix":
        rec = _mix_rec(x, rng)
        xm = apply_record(x, rec)
        f = model.features(torch.cat([xm, x, x[rec.index]]))
        fm, fa, fb = f.chunk(3)
        ce = L.mixed_cross_entropy(model.head(fm), y, rec)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return ce + L.adaptivemix_loss(fm, fa, fb, rec.lam, noise_std=0.05, generator=g)
    if method == "AdAutoMixup":
        gen, gopt, teacher = extra["gen"], extra["gopt"], extra["teacher"]
        index = torch.from_numpy(rng.permutation(x.shape[0]))
        lam = torch.from_numpy(rng.beta(1.0, 1.0, x.shape[0]).astype(np.float32))
        # generator step, scored by the EMA teacher: adversarial on even steps (hard mixtures,
        # cosine term), cooperative on odd ones; the share of the mask is kept near lam
        xm, mask, lam_eff = L.adautomix_mix(gen, x, index, lam)
        y_mix = lam_eff[:, None] * F.one_hot(y, 10) + (1 - lam_eff[:, None]) * F.one_hot(y[index], 10)
        t_out = teacher(torch.cat([xm, x, x[index]]))
        t_mix, t_a, t_b = t_out.chunk(3)
        cos = L.adautomix_cosine_term(t_mix, [t_a, t_b], [lam, 1 - lam])
        g_loss = L.adautomix_generator_loss(L.soft_target_cross_entropy(t_mix, y_mix), cos, beta=0.3,
                                            adversarial=step % 2 == 0, mask=mask, lam=lam, lam_weight=10.0)
        gopt.zero_grad(set_to_none=True)
        g_loss.backward()
        gopt.step()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            xm, mask, lam_eff = L.adautomix_mix(gen, x, index, lam)
            y_mix = lam_eff[:, None] * F.one_hot(y, 10) + (1 - lam_eff[:, None]) * F.one_hot(y[index], 10)
        out = model(torch.cat([x, xm]))
        return F.cross_entropy(out[: x.shape[0]], y) + L.soft_target_cross_entropy(out[x.shape[0]:], y_mix)
    raise ValueError(method)


CLASSIFICATION = ["plain", "MixUp", "CutMix", "timm MixUp+CutMix", "Manifold Mixup", "MixUp stopped at 60%",
                  "Decoupled Mixup", "RankMixup MRL", "RankMixup M-NDCG", "AdaptiveMix", "AdAutoMixup"]


def evaluate(model: Net, data: Split) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        logits = model(data.x_test)
        feats = model.features(data.x_train)
        nc = neural_collapse(feats, data.y_train, weight=model.head.weight)
    model.train()
    return {"acc": float((logits.argmax(1) == data.y_test).float().mean()),
            "ece": expected_calibration_error(logits, data.y_test), "nc1": nc["nc1"]}


# ---------------------------------------------------------------------------------------------
# metric learning, self-supervised, regression, semi-supervised, online class-incremental
# ---------------------------------------------------------------------------------------------
def recall_at_1(emb: torch.Tensor, y: torch.Tensor) -> float:
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    s.fill_diagonal_(-2.0)
    return float((y[s.argmax(1)] == y).float().mean())


def metric_learning(method: str, seed: int, steps: int) -> float:
    data = digits(seed)
    seen = data.y_train < 5
    x, y = data.x_train[seen], data.y_train[seen]
    xt, yt = data.x_test[data.y_test >= 5], data.y_test[data.y_test >= 5]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for idx in batches(len(y), 64, steps, rng):
        xb, yb = x[idx], y[idx]
        if method == "contrastive":
            loss = L.contrastive_pair_loss(model.features(xb), yb)
        else:
            rec = draw_record(len(idx), None, rng, mixup_alpha=2.0, pairing="random")
            e = model.features(torch.cat([xb, apply_record(xb, rec)]))
            loss = L.metrix_contrastive_loss(e[: len(idx)], yb, e[len(idx):], yb, yb[rec.index], rec.lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return recall_at_1(model.eval().features(xt), yt)


class Projected(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.net = Net()
        self.proj = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net.features(x))


def linear_probe(encoder: Net, data: Split) -> float:
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        ftr = encoder.eval().features(data.x_train).numpy()
        fte = encoder.features(data.x_test).numpy()
    clf = LogisticRegression(max_iter=2000).fit(ftr, data.y_train.numpy())
    return float(clf.score(fte, data.y_test.numpy()))


def self_supervised(method: str, seed: int, steps: int) -> float:
    data = digits(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    moco = method in ("MoCo", "MoCHi")
    model = Projected(32 if moco else 128)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    if moco:
        key = copy.deepcopy(model).requires_grad_(False)
        queue = L.MoCoQueue(32, 512, seed=seed)
    for idx in batches(len(data.y_train), 128, steps, rng):
        x = data.x_train[idx]
        xa, xb = strong(x, g), strong(x, g)
        if moco:
            q = model(xa)
            with torch.no_grad():
                k = key(xb)
            kw: dict[str, Any] = dict(s=0, s_prime=0)
            if method == "MoCHi":
                kw = dict(n_hard=128, s=128, s_prime=64, generator=g)
            loss = L.mochi_loss(q, k, queue.keys, **kw)
        else:
            za, zb = model(xa), model(xb)
            loss = L.barlow_twins_loss(za, zb, lambd=1 / 128)
            if method == "Mixed Barlow Twins":
                perm = torch.from_numpy(rng.permutation(len(idx)))
                lam = float(rng.beta(1.0, 1.0))
                zm = model(lam * xa + (1 - lam) * xb[perm])
                loss = loss + L.mixed_barlow_twins_regularizer(za, zb, zm, perm, lam, lambd=1 / 128,
                                                               scale=4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if moco:
            with torch.no_grad():
                for pk, pq in zip(key.parameters(), model.parameters(), strict=True):
                    pk.mul_(0.99).add_(pq.detach(), alpha=0.01)
            queue.enqueue(k)
    return linear_probe(model.net, data)


def regression(method: str, seed: int, steps: int) -> float:
    from sklearn.linear_model import Ridge

    data = digits(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Projected(32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for idx in batches(len(data.y_train), 64, steps, rng):
        z = model(data.x_train[idx])
        loss = L.supremix_loss(z, data.y_train[idx].float(), hard_pairs=method.startswith("SupReMix"),
                               distance_weight=method.endswith("distance weights"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        ftr = model.eval().net.features(data.x_train).numpy()
        fte = model.net.features(data.x_test).numpy()
    pred = Ridge(alpha=1.0).fit(ftr, data.y_train.numpy()).predict(fte)
    return float(np.abs(pred - data.y_test.numpy()).mean())


def semi_supervised(method: str, seed: int, steps: int) -> float:
    data = digits(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    lab = np.concatenate([rng.permutation(np.flatnonzero(data.y_train.numpy() == c))[:5] for c in range(10)])
    xl, yl = data.x_train[lab], data.y_train[lab]
    xu = data.x_train[np.setdiff1d(np.arange(len(data.y_train)), lab)]
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(steps):
        il = rng.integers(0, len(yl), 32)
        iu = rng.integers(0, len(xu), 64)
        x, y, u = weak(xl[il], g), yl[il], xu[iu]
        if method == "supervised only":
            loss = F.cross_entropy(model(x), y)
        elif method.startswith("MixMatch"):
            us = [weak(u, g), weak(u, g)]
            q = L.guess_labels([model(v) for v in us], temperature=0.5)
            xm, pm, um, qm = L.mixmatch_mix(x, F.one_hot(y, 10).float(), us, q, alpha=0.75, rng=rng)
            out = model(torch.cat([xm, um]))
            # lambda_U = 100 (the paper's) ramped up linearly; over the whole run by default,
            # over its first 40% in the second row (the run collapses there: recorded as is)
            ramp = min(1.0, step / ((0.4 if "40%" in method else 1.0) * steps))
            loss = L.mixmatch_loss(out[: len(xm)], pm, out[len(xm):], qm, lambda_u=100.0 * ramp)
        else:
            out = model(torch.cat([x, weak(u, g), strong(u, g)]))
            zx, zw, zs = out[:32], out[32:96], out[96:]
            loss = L.fixmatch_loss(zx, y, zw.detach(), zs, threshold=0.95, lambda_u=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((model.eval()(data.x_test).argmax(1) == data.y_test).float().mean())


def online_incremental(method: str, seed: int, iters: int = 3) -> float:
    data = digits(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    mem_x = torch.empty(0, 1, 8, 8)
    mem_y = torch.empty(0, dtype=torch.long)
    seen = 0
    for task in range(5):
        # AdpMix's class counts: what training draws from, the memory for the old classes and
        # the stream of this task for the new ones
        stream_counts = torch.zeros(10, dtype=torch.long)
        mine = np.flatnonzero((data.y_train.numpy() // 2) == task)
        for start in range(0, len(mine), 10):
            idx = mine[rng.permutation(len(mine))][start:start + 10] if start == 0 else mine[start:start + 10]
            x, y = data.x_train[idx], data.y_train[idx]
            stream_counts += torch.bincount(y, minlength=10)
            counts = stream_counts + torch.bincount(mem_y, minlength=10)
            for _ in range(iters):
                if len(mem_y) >= 10:
                    r = rng.choice(len(mem_y), 10, replace=False)
                    if method.startswith("ER + DualMix"):
                        adp = counts if method.endswith("(AdpMix)") else None
                        xm, ym, _ = L.dualmix_replay(x, y, mem_x[r], mem_y[r], num_classes=10, rng=rng,
                                                     class_counts=adp)
                        loss = (F.cross_entropy(model(torch.cat([x, mem_x[r]])), torch.cat([y, mem_y[r]]))
                                + L.soft_target_cross_entropy(model(xm), ym))
                    else:
                        loss = F.cross_entropy(model(torch.cat([x, mem_x[r]])), torch.cat([y, mem_y[r]]))
                else:
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            for xi, yi in zip(x, y, strict=True):   # reservoir sampling into a memory of 200
                seen += 1
                if len(mem_y) < 200:
                    mem_x, mem_y = torch.cat([mem_x, xi[None]]), torch.cat([mem_y, yi[None]])
                else:
                    j = int(rng.integers(0, seen))
                    if j < 200:
                        mem_x[j], mem_y[j] = xi, yi
    with torch.no_grad():
        return float((model.eval()(data.x_test).argmax(1) == data.y_test).float().mean())


# ---------------------------------------------------------------------------------------------
# speed against timm and torchvision
# ---------------------------------------------------------------------------------------------
def import_anchor(name: str) -> Any:
    """Import timm / torchvision; PyPI's torchvision 0.28 (a CUDA build) cannot load its
    compiled ops beside the CPU torch here, so two op schemas are declared first (the pure
    Python transforms measured here use none of them)."""
    try:
        return importlib.import_module(name)
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for mod in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[mod]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    return importlib.import_module(name)


_KEEP: list[Any] = []


def best_of(fns: list[Callable[[], Any]], runs: int) -> list[tuple[float, float]]:
    """Best and median time of each function; the functions take turns within every run, so a
    change of load on the shared box hits anchor and mixbatch alike."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t)) for t in times]


def speed(runs: int, shape: tuple[int, ...], device: str) -> list[list[str]]:
    timm_mixup = import_anchor("timm.data.mixup")
    tv2 = import_anchor("torchvision.transforms.v2")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, 1000, (shape[0],), generator=g).to(device)
    cases = [
        ("timm batch MixUp", dict(mixup_alpha=1.0, cutmix_alpha=0.0, mode="batch")),
        ("timm batch CutMix", dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch")),
        ("timm pair MixUp/CutMix", dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="pair")),
        ("timm elem MixUp/CutMix", dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")),
    ]
    rows = []
    np.random.seed(0)
    for name, kw in cases:
        theirs = timm_mixup.Mixup(**kw, label_smoothing=0.1, num_classes=1000)
        ours = Mixup(**kw, label_smoothing=0.1, num_classes=1000, seed=0)
        # timm mixes in place: both sides get a fresh copy of the batch inside the timed call
        (t_best, t_med), (o_best, o_med) = best_of([lambda m=theirs: (m(x.clone(), y), _sync(device)),
                                                     lambda m=ours: (m(x.clone(), y), _sync(device))], runs)
        rows.append([name, f"{t_best * 1e3:.1f}", f"{o_best * 1e3:.1f}", f"{t_med * 1e3:.1f}",
                     f"{o_med * 1e3:.1f}", f"{t_best / o_best:.2f}"])
    for name, tv_cls, our_cls in (("torchvision MixUp", tv2.MixUp, MixUp),
                                  ("torchvision CutMix", tv2.CutMix, CutMix)):
        theirs = tv_cls(alpha=1.0, num_classes=1000)
        ours = our_cls(alpha=1.0, num_classes=1000, seed=0)
        (t_best, t_med), (o_best, o_med) = best_of([lambda m=theirs: (m(x.clone(), y), _sync(device)),
                                                     lambda m=ours: (m(x.clone(), y), _sync(device))], runs)
        rows.append([name, f"{t_best * 1e3:.1f}", f"{o_best * 1e3:.1f}", f"{t_med * 1e3:.1f}",
                     f"{o_med * 1e3:.1f}", f"{t_best / o_best:.2f}"])
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def ms(values: list[float], digits_: int = 3, scale: float = 1.0) -> str:
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits_}f} ± {s:.{digits_}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--speed-runs", type=int, default=7)
    ap.add_argument("--speed-shape", default="64,3,224,224")
    ap.add_argument("--device", default="cpu", help="device of the speed table (cpu, cuda)")
    ap.add_argument("--only", default="", help="comma list of parts: cls,metric,ssl,reg,semi,oci,speed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    ap.add_argument("--methods", default="", help="comma list: only these classification methods")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    every = {"cls", "metric", "ssl", "reg", "semi", "oci", "speed"}
    parts = set(args.only.split(",")) if args.only else every
    seeds = list(range(args.seeds))
    t_start = time.perf_counter()
    out = [header("bench_mixup: sample mixing on scikit-learn digits", ["torch", "timm", "torchvision",
                                                                         "scikit-learn", "numpy"],
                  {"setting": f"{args.seeds} seeds, {args.steps} optimiser steps per run, "
                              f"{args.threads} torch thread(s)"})]
    if "cls" in parts:
        for long_tail in (False, True):
            name = "long-tail digits (imbalance 10)" if long_tail else "digits"
            rows = []
            for method in [m for m in CLASSIFICATION if not args.methods or m in args.methods.split(",")]:
                res = []
                t0 = time.perf_counter()
                for seed in seeds:
                    res.append(evaluate(train_classifier(method, digits(seed, long_tail), seed, args.steps),
                                        digits(seed, long_tail)))
                log(f"{name} {method}: {time.perf_counter() - t0:.1f}s")
                rows.append([method, ms([r["acc"] for r in res], 2, 100), ms([r["ece"] for r in res], 2, 100),
                             ms([r["nc1"] for r in res], 2),
                             " ".join(f"{r['acc'] * 100:.1f}" for r in res)])
            out += ["", f"## Classification, {name}", "",
                    table(["method", "accuracy %", "ECE %", "NC1 (train)", "accuracy per seed"], rows)]
    if "metric" in parts:
        rows = []
        for method in ("contrastive", "contrastive + Metrix"):
            r = [metric_learning(method, s, args.steps) for s in seeds]
            log(f"metric {method}: {r}")
            rows.append([method, ms(r, 2, 100), " ".join(f"{v * 100:.1f}" for v in r)])
        out += ["", "## Metric learning: Recall@1 on the 5 unseen classes", "",
                table(["loss", "Recall@1 %", "per seed"], rows)]
    if "ssl" in parts:
        rows = []
        for method in ("MoCo", "MoCHi", "Barlow Twins", "Mixed Barlow Twins"):
            r = [self_supervised(method, s, args.steps) for s in seeds]
            log(f"ssl {method}: {r}")
            rows.append([method, ms(r, 2, 100), " ".join(f"{v * 100:.1f}" for v in r)])
        out += ["", "## Self-supervised: linear-probe accuracy", "",
                table(["method", "probe accuracy %", "per seed"], rows)]
    if "reg" in parts:
        rows = []
        for method in ("SupCon (regression)", "SupReMix", "SupReMix + distance weights"):
            r = [regression(method, s, args.steps) for s in seeds]
            log(f"reg {method}: {r}")
            rows.append([method, ms(r, 3), " ".join(f"{v:.3f}" for v in r)])
        out += ["", "## Contrastive regression: ridge-probe MAE of the digit value (lower is better)", "",
                table(["loss", "MAE", "per seed"], rows)]
    if "semi" in parts:
        rows = []
        for method in ("supervised only", "MixMatch", "MixMatch, ramp over 40%", "FixMatch"):
            r = [semi_supervised(method, s, args.steps) for s in seeds]
            log(f"semi {method}: {r}")
            rows.append([method, ms(r, 2, 100), " ".join(f"{v * 100:.1f}" for v in r)])
        out += ["", "## Semi-supervised, 5 labels per class: test accuracy", "",
                table(["method", "accuracy %", "per seed"], rows)]
    if "oci" in parts:
        rows = []
        for method in ("ER", "ER + DualMix", "ER + DualMix (AdpMix)"):
            r = [online_incremental(method, s) for s in seeds]
            log(f"oci {method}: {r}")
            rows.append([method, ms(r, 2, 100), " ".join(f"{v * 100:.1f}" for v in r)])
        out += ["", "## Online class-incremental (5 tasks, one pass, memory 200): final accuracy", "",
                table(["method", "accuracy %", "per seed"], rows)]
    if "speed" in parts:
        shape = tuple(int(v) for v in args.speed_shape.split(","))
        rows = speed(args.speed_runs, shape, args.device)
        out += ["", f"## Speed: one call on a {'x'.join(map(str, shape))} float32 batch on {args.device} "
                    f"(ms, best and median of {args.speed_runs}, the two sides taking turns; "
                    f"both copy the batch first)", "",
                table(["transform", "anchor best", "mixbatch best", "anchor median", "mixbatch median",
                       "anchor / mixbatch"], rows)]
    out += ["", f"Total wall time: {time.perf_counter() - t_start:.0f} s"]
    print("\n".join(out))



if __name__ == "__main__":
    main()
