"""Drawing a batch's mixing parameters: lambda, mixing kind, partner and CutMix box.

The rules follow timm's ``Mixup`` (``timm/data/mixup.py``) and torchvision's v2 ``MixUp`` /
``CutMix``, vectorised over the batch with NumPy's ``Generator`` so that the same seed gives the
same record on every machine and device:

- lambda ~ Beta(alpha, alpha) ("mixup: Beyond Empirical Risk Minimization", eq. 1); with
  probability ``1 - prob`` a row (or the batch) is left as it is (lambda = 1);
- when both alphas are > 0, CutMix is picked with probability ``switch_prob``;
- CutMix box ("CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features", eq. 2): sides ``r_h = H sqrt(1 - lambda)``, ``r_w = W sqrt(1 - lambda)`` around a
  uniform centre, clipped to the image; ``correct_lam`` sets lambda to the share of the area left
  after clipping, ``lambda = 1 - |box| / (H W)``; ``cutmix_minmax`` draws the sides uniformly in
  ``[min, max] * (H, W)`` instead (and always corrects lambda);
- modes: ``batch`` (one draw for the whole batch), ``pair`` (one draw per pair, both members
  get it), ``elem`` (one draw per row);
- pairing: ``flip`` (timm: row i with row B-1-i), ``roll`` (torchvision v2: row i with row
  i-1), ``random`` (a random permutation, as in the mixup paper's reference code; in ``pair``
  mode a random perfect matching).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import torch

from mixbatch.checks import choice
from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.record import MixRecord

__all__ = ["BoxRule", "MixMode", "Pairing", "draw_record", "partner_index", "rng_for"]


class MixMode(str, enum.Enum):
    BATCH = "batch"
    PAIR = "pair"
    ELEM = "elem"


class Pairing(str, enum.Enum):
    FLIP = "flip"
    ROLL = "roll"
    RANDOM = "random"


class BoxRule(str, enum.Enum):
    """How the CutMix box is cut: timm's ``rand_bbox`` or torchvision v2's ``CutMix``."""

    TIMM = "timm"
    TORCHVISION = "torchvision"


def rng_for(seed: int, step: int) -> np.random.Generator:
    """The generator of one step: a pure function of ``(seed, step)``, so resume stays exact."""
    if step < 0:
        raise ConfigError(f"step: must be >= 0, got {step}")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), 0x6D6978])


def partner_index(batch_size: int, pairing: Pairing | str, mode: MixMode | str,
                  rng: np.random.Generator) -> np.ndarray:
    """Partner of every row; in ``pair`` mode an involution (partner of the partner is the row)."""
    pairing = choice(Pairing, "pairing", pairing)
    mode = choice(MixMode, "mode", mode)
    b = batch_size
    if mode is MixMode.PAIR:
        if b % 2:
            raise DataError(f"x: mode 'pair' mixes rows in pairs and needs an even batch size, got {b}")
        if pairing is Pairing.ROLL:
            raise ConfigError("pairing: 'roll' is not symmetric; mode 'pair' needs 'flip' or 'random'")
    if pairing is Pairing.FLIP:
        return np.arange(b - 1, -1, -1)
    if pairing is Pairing.ROLL:
        return (np.arange(b) - 1) % b
    perm = rng.permutation(b)
    if mode is not MixMode.PAIR:
        return perm
    idx = np.empty(b, dtype=np.int64)
    idx[perm[0::2]] = perm[1::2]
    idx[perm[1::2]] = perm[0::2]
    return idx


def _boxes(lam: np.ndarray, size: Sequence[int], rng: np.random.Generator, rule: BoxRule,
           minmax: tuple[float, float] | None, correct_lam: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(n, 4)`` as ``(y1, y2, x1, x2)`` and the (corrected) lambdas."""
    n = lam.shape[0]
    one_d = len(size) == 1
    h, w = (1, int(size[0])) if one_d else (int(size[-2]), int(size[-1]))
    if minmax is not None:
        lo, hi = minmax
        ch = np.ones(n, dtype=np.int64) if one_d else rng.integers(int(h * lo), int(h * hi), size=n)
        cw = rng.integers(int(w * lo), int(w * hi), size=n)
        y1 = np.zeros(n, dtype=np.int64) if one_d else rng.integers(0, h - ch + 1)
        x1 = rng.integers(0, w - cw + 1)
        y2, x2 = y1 + ch, x1 + cw
    elif rule is BoxRule.TIMM:
        ratio = np.sqrt(1.0 - lam) if not one_d else (1.0 - lam)
        cw = (w * ratio).astype(np.int64)
        cx = rng.integers(0, w, size=n)
        x1, x2 = np.clip(cx - cw // 2, 0, w), np.clip(cx + (cw + 1) // 2, 0, w)
        if one_d:
            y1, y2 = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
        else:
            ch = (h * ratio).astype(np.int64)
            cy = rng.integers(0, h, size=n)
            y1, y2 = np.clip(cy - ch // 2, 0, h), np.clip(cy + (ch + 1) // 2, 0, h)
    else:  # torchvision v2: half sides int(0.5 sqrt(1 - lam) * side) around a uniform centre
        r = 0.5 * (np.sqrt(1.0 - lam) if not one_d else (1.0 - lam))
        rx = rng.integers(0, w, size=n)
        hw = (r * w).astype(np.int64)
        x1, x2 = np.maximum(rx - hw, 0), np.minimum(rx + hw, w)
        if one_d:
            y1, y2 = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
        else:
            ry = rng.integers(0, h, size=n)
            hh = (r * h).astype(np.int64)
            y1, y2 = np.maximum(ry - hh, 0), np.minimum(ry + hh, h)
    box = np.stack([y1, y2, x1, x2], axis=1).astype(np.int64)
    if correct_lam or minmax is not None or rule is BoxRule.TORCHVISION:
        lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    return box, lam


def draw_record(
    batch_size: int,
    size: Sequence[int] | None,
    rng: np.random.Generator,
    *,
    mixup_alpha: float = 1.0,
    cutmix_alpha: float = 0.0,
    cutmix_minmax: tuple[float, float] | None = None,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: MixMode | str = MixMode.BATCH,
    correct_lam: bool = True,
    pairing: Pairing | str = Pairing.FLIP,
    box_rule: BoxRule | str = BoxRule.TIMM,
) -> MixRecord:
    """Draw the mixing record of one batch (CPU tensors).

    ``size`` is the spatial extent CutMix cuts in: ``(H, W)`` for images and spectrograms,
    ``(T,)`` for sequences (a segment is pasted), ``None`` when only MixUp may be used.
    An alpha of 0 switches that kind off (timm's convention); a negative alpha, or both alphas
    off, is a :class:`ConfigError`.
    """
    mode = choice(MixMode, "mode", mode)
    rule = choice(BoxRule, "box_rule", box_rule)
    if batch_size < 1:
        raise DataError(f"x: empty batch (batch size {batch_size})")
    if cutmix_minmax is not None:
        cutmix_alpha = 1.0
    for name, a in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not np.isfinite(a) or a < 0:
            raise ConfigError(f"{name}: must be >= 0 (0 switches it off), got {a}")
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ConfigError("mixup_alpha, cutmix_alpha: at least one must be > 0 "
                          f"(got {mixup_alpha} and {cutmix_alpha})")
    for name, p in (("prob", prob), ("switch_prob", switch_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name}: must be within [0, 1], got {p}")
    index = partner_index(batch_size, pairing, mode, rng)
    n = {MixMode.BATCH: 1, MixMode.PAIR: batch_size // 2, MixMode.ELEM: batch_size}[mode]
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = rng.random(n) < switch_prob
        lam = np.where(use_cut, rng.beta(cutmix_alpha, cutmix_alpha, n),
                       rng.beta(mixup_alpha, mixup_alpha, n))
    elif mixup_alpha > 0:
        use_cut = np.zeros(n, dtype=bool)
        lam = rng.beta(mixup_alpha, mixup_alpha, n)
    else:
        use_cut = np.ones(n, dtype=bool)
        lam = rng.beta(cutmix_alpha, cutmix_alpha, n)
    applied = rng.random(n) < prob
    lam = np.where(applied, lam, 1.0)
    use_cut &= applied
    box = np.zeros((n, 4), dtype=np.int64)
    if use_cut.any():
        if size is None or len(size) not in (1, 2):
            raise DataError(f"x: CutMix needs inputs with 1 or 2 trailing spatial axes (got size {size}); "
                            f"set cutmix_alpha to 0 for feature vectors")
        box[use_cut], lam[use_cut] = _boxes(lam[use_cut], size, rng, rule,
                                            tuple(cutmix_minmax) if cutmix_minmax is not None else None,
                                            correct_lam)
    # expand the n draws to the rows
    if mode is MixMode.BATCH:
        row = np.zeros(batch_size, dtype=np.int64)
    elif mode is MixMode.ELEM:
        row = np.arange(batch_size)
    else:
        # each pair gets one draw; pair k is the pair of its smaller row, ranked
        first = np.minimum(np.arange(batch_size), index)
        _, row = np.unique(first, return_inverse=True)
    return MixRecord(
        lam=torch.from_numpy(lam[row].astype(np.float32)),
        index=torch.from_numpy(index.astype(np.int64)),
        box=torch.from_numpy(box[row]),
        cutmix=torch.from_numpy(use_cut[row]),
    )
