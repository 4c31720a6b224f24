"""DualMix-style mixing of the incoming stream with replayed samples.

"DualMix: Unleashing the Potential of Data Augmentation for Online Class-Incremental Learning"
(Fan et al., 2023) has two parts: Enhanced Mixup (EnMix), which mixes *augmented* samples and
their labels together, and Adaptive Mixup (AdpMix), which mixes samples of old classes (from the
replay memory) with samples of new classes (from the stream) and adjusts the label mixing ratio
against the class imbalance. :func:`dualmix_replay` draws the cross-set pairing both parts rest
on: every incoming row is mixed with a memory row and every memory row with an incoming row, by
MixUp (``lam ~ Beta(a, a)``) or, with probability ``cutmix_prob``, CutMix, with labels mixed at
the same ``lam`` (pass augmented views as ``x_new`` / ``x_mem`` for EnMix). AdpMix's adaptive
label ratio is not implemented: its formula was not checked against the paper here.
"""

from __future__ import annotations

import numpy as np
import torch

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.record import MixRecord
from mixbatch.mixup.sampling import draw_record
from mixbatch.mixup.targets import check_labels, mix_targets
from mixbatch.mixup.transforms import apply_record

__all__ = ["dualmix_replay"]


def dualmix_replay(x_new: torch.Tensor, y_new: torch.Tensor, x_mem: torch.Tensor, y_mem: torch.Tensor,
                   num_classes: int, alpha: float = 1.0, cutmix_prob: float = 0.5,
                   rng: np.random.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
    """Concatenate the stream and memory batches and mix each row with one of the other set.

    Returns ``(x_mixed, soft_targets, record)`` over the ``len(x_new) + len(x_mem)`` rows.
    """
    if alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    if x_new.shape[1:] != x_mem.shape[1:]:
        raise DataError(f"x_mem: rows of shape {tuple(x_mem.shape[1:])} do not match x_new's "
                        f"{tuple(x_new.shape[1:])}")
    check_labels(y_new, x_new.shape[0], num_classes, "y_new")
    check_labels(y_mem, x_mem.shape[0], num_classes, "y_mem")
    n, m = x_new.shape[0], x_mem.shape[0]
    if n == 0 or m == 0:
        raise DataError(f"x_new, x_mem: both sets need rows to pair across (got {n} and {m})")
    rng = rng or np.random.default_rng()
    x = torch.cat([x_new, x_mem], 0)
    y = torch.cat([y_new, y_mem], 0)
    size = tuple(x.shape[-2:]) if x.ndim >= 3 else None
    rec = draw_record(n + m, size, rng, mixup_alpha=alpha, cutmix_alpha=alpha if size else 0.0,
                      switch_prob=cutmix_prob if size else 0.0, mode="elem", pairing="random")
    index = torch.cat([torch.from_numpy(n + rng.integers(0, m, n)), torch.from_numpy(rng.integers(0, n, m))])
    rec = MixRecord(rec.lam, index.long(), rec.box, rec.cutmix)
    return apply_record(x, rec), mix_targets(y, rec, num_classes), rec
