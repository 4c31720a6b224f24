"""The CPU kernel that writes a mixed batch in one pass (numba), and when it applies.

Row ``r`` of the output is ``lam_r x_r + (1 - lam_r) x_index[r]`` for a MixUp row ("mixup:
Beyond Empirical Risk Minimization", eq. 1) and ``x_r`` with the box ``(y1, y2, x1, x2)`` taken
from ``x_index[r]`` for a CutMix row ("CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", eq. 1). The kernel reads each element of the batch once
(plus the partner's share) and writes it once, and copies only the box of a CutMix row from the
partner, where whole-tensor torch ops need a gathered copy of the batch and a mask over every
pixel. It runs on float32/float64 CPU tensors that need no gradient; everything else (GPU,
half precision, integer images, autograd) takes the torch path of
:func:`mixbatch.mixup.transforms.apply_record`.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from mixbatch.errors import DataError

__all__ = ["check_bounds", "fits_kernel", "mix_rows"]


@njit(cache=True, nogil=True)
def _mix_rows(x: np.ndarray, out: np.ndarray, index: np.ndarray, lam: np.ndarray, keep: np.ndarray,
              box: np.ndarray, cut: np.ndarray) -> None:
    """``x``, ``out``: (B, C, H, W); ``lam`` / ``keep`` = lam / 1 - lam in x's dtype."""
    b, c = x.shape[0], x.shape[1]
    for r in range(b):
        p = index[r]
        if cut[r]:
            out[r] = x[r]  # one block copy of the row, then the box rows from the partner
            y1, y2, x1, x2 = box[r, 0], box[r, 1], box[r, 2], box[r, 3]
            for ch in range(c):
                for yy in range(y1, y2):
                    out[r, ch, yy, x1:x2] = x[p, ch, yy, x1:x2]
        elif lam[r] == 1.0:
            out[r] = x[r]
        else:
            a, k = lam[r], keep[r]
            src, oth, dst = x[r].ravel(), x[p].ravel(), out[r].ravel()
            for i in range(dst.size):  # compiled, vectorised by LLVM
                dst[i] = src[i] * a + oth[i] * k


def fits_kernel(x: torch.Tensor) -> bool:
    """Whether :func:`mix_rows` can mix ``x`` (float32/64, CPU, contiguous, no gradient)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad
            and x.is_contiguous() and x.numel() > 0)


def mix_rows(x: torch.Tensor, index: torch.Tensor, w_row: torch.Tensor, cut: torch.Tensor,
             boxes: torch.Tensor, dims: int) -> torch.Tensor:
    """The mixed batch (a new tensor): ``w_row`` is lam on MixUp rows and 1 on the others,
    ``cut`` marks CutMix rows, whose ``boxes`` cut the last ``dims`` (1 or 2) axes."""
    b = x.shape[0]
    if x.ndim >= 3 and dims == 2:
        view = x.reshape(b, -1, x.shape[-2], x.shape[-1])
    else:  # 1-D boxes run along the last axis; MixUp-only rows of any shape are flat
        view = x.reshape(b, -1, 1, x.shape[-1] if x.ndim >= 2 else 1)
    idx = index.numpy().astype(np.int64, copy=False)
    box = boxes.numpy().astype(np.int64, copy=False)
    cut_np = cut.numpy().astype(np.bool_, copy=False)
    check_bounds(idx, box[cut_np], b, view.shape[2], view.shape[3])
    out = torch.empty_like(view)
    dt = view.numpy().dtype
    lam64 = w_row.to(torch.float64).numpy()
    _mix_rows(view.numpy(), out.numpy(), idx, lam64.astype(dt), (1.0 - lam64).astype(dt), box, cut_np)
    return out.view(x.shape)


def check_bounds(index: np.ndarray, boxes: np.ndarray, b: int, h: int, w: int) -> None:
    """Refuse a record whose partners lie outside the batch or whose boxes (of the CutMix rows)
    leave the ``(h, w)`` extent they cut, naming the field; the compiled pass does not check."""
    if index.shape != (b,) or (b and (index.min() < 0 or index.max() >= b)):
        raise DataError(f"record.index: partners must lie within [0, {b}) for a batch of {b}")
    if boxes.size and not ((boxes[:, 0] >= 0) & (boxes[:, 0] <= boxes[:, 1]) & (boxes[:, 1] <= h)
                           & (boxes[:, 2] >= 0) & (boxes[:, 2] <= boxes[:, 3]) & (boxes[:, 3] <= w)).all():
        raise DataError(f"record.box: CutMix boxes must lie within the ({h}, {w}) extent they cut")
