"""AdAutoMixup: a mixing-mask generator trained against the classifier.

"Adversarial AutoMixup" (Qin et al., ICLR 2024). A generator G produces a mixing mask
``M = G(x_i, x_j, lam)`` in [0, 1]^{H x W} and the mixed image ``x~ = M x_i + (1 - M) x_j``
(AutoMix's form, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers"); the
classifier minimises ``L_cls = CE(f(x~), lam~ y_i + (1 - lam~) y_j)`` with ``lam~ = mean(M)``,
and the generator maximises it, kept honest by a lambda-consistency term so that the mask keeps
the drawn share: ``L_G = -L_cls + w (mean(M) - lam)^2``. The paper also uses an EMA teacher for
the generator's features and a cosine term against collapse; here the generator sees pixels
directly, the part of the method a batch library can own.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbatch.errors import DataError

__all__ = ["MixMaskGenerator", "adautomix_generator_loss", "adautomix_mix"]


class MixMaskGenerator(nn.Module):
    """A small conv net: ``(x_i, x_j, lam plane) -> mask (B, 1, H, W)`` in (0, 1)."""

    def __init__(self, in_channels: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * in_channels + 1, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        if x_i.shape != x_j.shape or x_i.ndim != 4:
            raise DataError(f"x_j: expected the (B, C, H, W) shape of x_i {tuple(x_i.shape)}, "
                            f"got {tuple(x_j.shape)}")
        plane = lam.to(x_i).view(-1, 1, 1, 1).expand(-1, 1, *x_i.shape[2:])
        logit = self.net(torch.cat([x_i, x_j, plane], 1))
        # shift so that a zero-output generator already keeps the drawn share lam
        return torch.sigmoid(logit + torch.logit(lam.to(x_i).clamp(1e-4, 1 - 1e-4)).view(-1, 1, 1, 1))


def adautomix_mix(gen: MixMaskGenerator, x: torch.Tensor, index: torch.Tensor,
                  lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_mixed, mask, lam_effective)`` for rows mixed with ``x[index]``."""
    xj = x[index]
    mask = gen(x, xj, lam)
    return mask * x + (1 - mask) * xj, mask, mask.mean(dim=(1, 2, 3))


def adautomix_generator_loss(cls_loss: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor,
                             weight: float = 1.0) -> torch.Tensor:
    """``-L_cls + w mean (mean(M) - lam)^2``: the generator's adversarial objective."""
    return -cls_loss + weight * (mask.mean(dim=(1, 2, 3)) - lam.to(mask)).pow(2).mean()

