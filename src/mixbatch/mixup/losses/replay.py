"""DualMix-style mixing of the incoming stream with replayed samples.

"DualMix: Unleashing the Potential of Data Augmentation for Online Class-Incremental Learning"
(Fan et al., 2023) has two parts: Enhanced Mixup (EnMix), which mixes *augmented* samples and
their labels together, and Adaptive Mixup (AdpMix), which mixes samples of old classes (from the
replay memory) with samples of new classes (from the stream) and adjusts the *label* mixing
ratio against the class imbalance between them. :func:`dualmix_replay` draws the cross-set
pairing both parts rest on: every incoming row is mixed with a memory row and every memory row
with an incoming row, by MixUp (``lam ~ Beta(a, a)``) or, with probability ``cutmix_prob``,
CutMix (pass augmented views as ``x_new`` / ``x_mem`` for EnMix).

With ``class_counts`` (the number of samples of each class that training draws from) the
label ratio is adapted to the imbalance, AdpMix's aim. The rule applied is the rebalancing
rule of "Remix: Rebalanced Mixup" (Chou et al., ECCV 2020 workshops), an imbalance-aware label
ratio of the kind AdpMix describes, for a row ``i`` mixed with ``j``:

    lam_y = 0    if n_i / n_j >= kappa and lam < tau      (the rarer partner gets the label)
    lam_y = 1    if n_i / n_j <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise

so a mixture in which a class at least ``kappa`` times rarer (an old class, from the memory)
holds more than ``1 - tau`` of the pixels is labelled entirely as that rare class. The images
are still mixed at ``lam`` (the record keeps it); the returned targets carry ``lam_y``.
DualMix's own equation for AdpMix could not be consulted here (only its abstract), so this is
Remix's rule standing in for it, not a transcription; ``kappa = 3`` and ``tau = 0.5`` are
Remix's defaults.
"""

from __future__ import annotations

import numpy as np
import torch

from mixbatch.checks import real
from mixbatch.errors import DataError
from mixbatch.mixup.record import MixRecord
from mixbatch.mixup.sampling import draw_record
from mixbatch.mixup.targets import check_labels, mix_targets, smooth_one_hot
from mixbatch.mixup.transforms import apply_record

__all__ = ["adaptive_label_ratio", "dualmix_replay"]


def adaptive_label_ratio(lam: torch.Tensor, n_own: torch.Tensor, n_partner: torch.Tensor,
                         kappa: float = 3.0, tau: float = 0.5) -> torch.Tensor:
    """The label ratio ``lam_y`` of each mixed row (module docstring) from the pixel ratio ``lam``
    and the class counts of the row's own and its partner's class."""
    kappa = real("kappa", kappa, lo=1.0)
    tau = real("tau", tau, lo=0.0, hi=1.0)
    if not (lam.shape == n_own.shape == n_partner.shape) or lam.ndim != 1:
        raise DataError(f"n_own, n_partner: expected the ({lam.shape[0]},) shape of lam, got "
                        f"{tuple(n_own.shape)} and {tuple(n_partner.shape)}")
    if bool(((n_own <= 0) | (n_partner <= 0)).any()):
        raise DataError("class_counts: every mixed class needs a count > 0")
    ratio = n_own.to(torch.float64) / n_partner.to(torch.float64)
    lam64 = lam.to(torch.float64)
    out = torch.where((ratio >= kappa) & (lam64 < tau), torch.zeros_like(lam64), lam64)
    out = torch.where((ratio <= 1.0 / kappa) & (1.0 - lam64 < tau), torch.ones_like(lam64), out)
    return out.to(lam.dtype)


def dualmix_replay(x_new: torch.Tensor, y_new: torch.Tensor, x_mem: torch.Tensor, y_mem: torch.Tensor,
                   num_classes: int, alpha: float = 1.0, cutmix_prob: float = 0.5,
                   rng: np.random.Generator | None = None, *, class_counts: torch.Tensor | None = None,
                   kappa: float = 3.0, tau: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
    """Concatenate the stream and memory batches and mix each row with one of the other set.

    Returns ``(x_mixed, soft_targets, record)`` over the ``len(x_new) + len(x_mem)`` rows. With
    ``class_counts`` (``(num_classes,)`` counts of the samples seen per class) the targets use
    the adaptive label ratio of :func:`adaptive_label_ratio`; without, the pixel ratio.
    """
    alpha = real("alpha", alpha, lo=0.0, lo_open=True)
    cutmix_prob = real("cutmix_prob", cutmix_prob, lo=0.0, hi=1.0)
    if x_new.shape[1:] != x_mem.shape[1:]:
        raise DataError(f"x_mem: rows of shape {tuple(x_mem.shape[1:])} do not match x_new's "
                        f"{tuple(x_new.shape[1:])}")
    check_labels(y_new, x_new.shape[0], num_classes, "y_new")
    check_labels(y_mem, x_mem.shape[0], num_classes, "y_mem")
    n, m = x_new.shape[0], x_mem.shape[0]
    if n == 0 or m == 0:
        raise DataError(f"x_new, x_mem: both sets need rows to pair across (got {n} and {m})")
    if class_counts is not None and (y_new.ndim != 1 or y_mem.ndim != 1):
        raise DataError("y_new, y_mem: the adaptive label ratio needs class ids, not soft labels")
    if class_counts is not None and tuple(class_counts.shape) != (num_classes,):
        raise DataError(f"class_counts: expected ({num_classes},) counts, got {tuple(class_counts.shape)}")
    rng = rng or np.random.default_rng()
    x = torch.cat([x_new, x_mem], 0)
    y = torch.cat([y_new, y_mem], 0)
    size = tuple(x.shape[-2:]) if x.ndim >= 3 else None
    rec = draw_record(n + m, size, rng, mixup_alpha=alpha, cutmix_alpha=alpha if size else 0.0,
                      switch_prob=cutmix_prob if size else 0.0, mode="elem", pairing="random")
    index = torch.cat([torch.from_numpy(n + rng.integers(0, m, n)), torch.from_numpy(rng.integers(0, n, m))])
    rec = MixRecord(rec.lam, index.long(), rec.box, rec.cutmix)
    if class_counts is None:
        return apply_record(x, rec), mix_targets(y, rec, num_classes), rec
    counts = class_counts.to(torch.float64)
    lam_y = adaptive_label_ratio(rec.lam, counts[y], counts[y[rec.index]], kappa, tau)
    one = smooth_one_hot(y, num_classes)
    w = lam_y.to(one.dtype)[:, None]
    return apply_record(x, rec), one * w + one[rec.index] * (1 - w), rec
