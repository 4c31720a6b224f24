"""AdaptiveMix: shrink the discriminator's feature space around mixed samples.

"Improving GAN Training via Feature Space Shrinkage" (AdaptiveMix, Liu et al., CVPR 2023):
hard samples are mixtures ``x~ = lam x_a + (1 - lam) x_b`` (lam ~ Beta(a, a)); the
discriminator's (L2-normalised) features of the mixture are pulled towards the same mixture of
the features, ``L_AM = || f(x~) - sg(lam f(x_a) + (1 - lam) f(x_b) + e) ||^2`` with a small
Gaussian ``e`` (std 0.05 in the authors' code), which bounds the regions of the training data in
feature space. The term is added to the discriminator's (or a classifier's) loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbatch.errors import DataError
from mixbatch.mixup.losses._common import check_lam

__all__ = ["adaptivemix_loss"]


def adaptivemix_loss(f_mixed: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor,
                     lam: torch.Tensor | float, noise_std: float = 0.05, normalize: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared distance of the mixture's features to the (stopped) mixed features."""
    if not (f_mixed.shape == f_a.shape == f_b.shape) or f_a.ndim < 2:
        raise DataError(f"f_mixed, f_a, f_b: expected one (B, D) shape, got {tuple(f_mixed.shape)}, "
                        f"{tuple(f_a.shape)}, {tuple(f_b.shape)}")
    b = f_a.shape[0]
    lam_t = check_lam(lam, b, f_a).view(-1, *([1] * (f_a.ndim - 1)))
    if normalize:
        f_mixed, f_a, f_b = (F.normalize(t.flatten(1), dim=1) for t in (f_mixed, f_a, f_b))
        lam_t = lam_t.view(-1, 1)
    target = lam_t * f_a + (1 - lam_t) * f_b
    if noise_std > 0:
        target = target + noise_std * torch.randn(target.shape, generator=generator,
                                                  dtype=target.dtype).to(target.device)
    return F.mse_loss(f_mixed, target.detach())
