"""AdAutoMixup: a mixing-mask generator trained against an EMA teacher of the classifier.

"Adversarial AutoMixup" (Qin et al., ICLR 2024). A generator G_phi produces a mixing mask
``M = G(x_i, x_j, lam)`` in [0, 1]^{H x W} and the mixed image ``x~ = M x_i + (1 - M) x_j``
(AutoMix's form, "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers"), labelled
``y~ = lam~ y_i + (1 - lam~) y_j``. The three parts, as the paper's abstract names them (an
adversarially trained generator, an EMA teacher, a cosine similarity term) and as its authors'
released implementation computes them (openmixup's ``AdAutoMix.forward_train`` and
``forward_k``; the paper's body, and so its equation numbers, could not be consulted here):

- the classifier psi minimises the mixed cross-entropy ``L_amce(psi) = CE(psi(x~), y~)`` on the
  generator's (detached) mixtures, plus the plain cross-entropy of the clean batch;
- the generator is scored by an **EMA teacher** psi^ of the classifier, updated after every
  classifier step as ``psi^ <- xi psi^ + (1 - xi) psi`` (:class:`EmaTeacher`), with ``xi``
  raised from 0.999 to 0.999999 along a cosine (:func:`ema_momentum`);
- on adversarial steps the generator minimises
  ``L_G = -beta L_amce(psi^) + (1 - beta) L_cos`` with the **cosine term**
  ``L_cos = mean_b sum_k lam_k cos(psi^(x~)_b, psi^(x_k)_b)`` over the mixed sources
  (:func:`adautomix_cosine_term`), ``beta = 0.3`` in the CIFAR configurations; on the other
  steps it minimises ``L_amce(psi^)`` (AutoMix's cooperative step), alternating every step.

:func:`adautomix_generator_loss` adds, as an option of this library (``lam_weight``, default 0),
a lambda-consistency term ``w mean (mean(M) - lam)^2`` that keeps the mask's share near the drawn
lambda when the generator sees pixels directly, as :class:`MixMaskGenerator` does (the paper's
Mix Block reads backbone features).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mixbatch.checks import real
from mixbatch.errors import ConfigError, DataError, StateError

__all__ = ["EmaTeacher", "MixMaskGenerator", "adautomix_cosine_term", "adautomix_generator_loss",
           "adautomix_mix", "ema_momentum"]


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


def ema_momentum(step: int, total: int, base: float = 0.999, end: float = 0.999999) -> float:
    """The teacher's momentum at ``step`` of ``total``: ``end - (end - base)(cos(pi t / T) + 1) / 2``
    (``base`` at the start, ``end`` at the last step)."""
    base = real("base", base, lo=0.0, hi=1.0)
    end = real("end", end, lo=0.0, hi=1.0)
    if total < 1 or not 0 <= step <= total:
        raise ConfigError(f"step: must lie within [0, total={total}] with total >= 1, got {step}")
    return end - (end - base) * (math.cos(math.pi * step / total) + 1.0) / 2.0


class EmaTeacher:
    """An exponential-moving-average copy of a model: ``psi^ <- xi psi^ + (1 - xi) psi``.

    The copy never takes gradients; :meth:`update` folds the student's parameters in (buffers,
    such as batch-norm statistics, are copied) and is deterministic, so a run resumed from
    :meth:`state_dict` continues the same teacher.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.999) -> None:
        self.momentum = real("momentum", momentum, lo=0.0, hi=1.0)
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        xi = self.momentum if momentum is None else real("momentum", momentum, lo=0.0, hi=1.0)
        mine, theirs = dict(self.model.named_parameters()), dict(student.named_parameters())
        if mine.keys() != theirs.keys():
            raise DataError("student: its parameters do not match the teacher's (another architecture?)")
        for name, p in mine.items():
            p.mul_(xi).add_(theirs[name].detach().to(p), alpha=1.0 - xi)
        for (name, b), (_, sb) in zip(self.model.named_buffers(), student.named_buffers(), strict=True):
            if b.shape != sb.shape:
                raise DataError(f"student: buffer {name} has shape {tuple(sb.shape)}, the teacher's "
                                f"{tuple(b.shape)}")
            b.copy_(sb)

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.momentum = float(state["momentum"])
        except (KeyError, RuntimeError, TypeError) as e:
            raise StateError(f"state: not an EMA teacher state ({e})") from None


def adautomix_cosine_term(mixed: torch.Tensor, sources: Sequence[torch.Tensor],
                          lams: Sequence[float | torch.Tensor]) -> torch.Tensor:
    """``L_cos = mean_b sum_k lam_k cos(mixed_b, sources[k]_b)``: the teacher's outputs on the
    mixture against its outputs on each mixed source, weighted by the sources' shares
    (a scalar or a ``(B,)`` tensor each)."""
    if mixed.ndim != 2:
        raise DataError(f"mixed: expected (B, C) teacher outputs, got {tuple(mixed.shape)}")
    if len(sources) == 0 or len(sources) != len(lams):
        raise DataError(f"lams: expected one share per source ({len(sources)} sources), got {len(lams)}")
    total = mixed.new_zeros(mixed.shape[0])
    for k, (src, lam) in enumerate(zip(sources, lams, strict=True)):
        if src.shape != mixed.shape:
            raise DataError(f"sources[{k}]: expected the shape of mixed {tuple(mixed.shape)}, "
                            f"got {tuple(src.shape)}")
        lam_t = torch.as_tensor(lam, dtype=mixed.dtype, device=mixed.device)
        if lam_t.ndim not in (0, 1) or (lam_t.ndim == 1 and lam_t.shape[0] != mixed.shape[0]):
            raise DataError(f"lams[{k}]: expected a scalar or ({mixed.shape[0]},), got {tuple(lam_t.shape)}")
        total = total + lam_t * F.cosine_similarity(mixed, src, dim=1)
    return total.mean()


def adautomix_generator_loss(mix_loss: torch.Tensor, cosine: torch.Tensor | None = None, beta: float = 0.3,
                             *, adversarial: bool = True, mask: torch.Tensor | None = None,
                             lam: torch.Tensor | None = None, lam_weight: float = 0.0) -> torch.Tensor:
    """The generator's objective for one step.

    ``mix_loss`` is the EMA teacher's ``L_amce`` on the generator's mixtures and ``cosine`` the
    :func:`adautomix_cosine_term`. Adversarial step: ``-beta L_amce + (1 - beta) L_cos``;
    cooperative step (``adversarial=False``): ``L_amce``. ``lam_weight > 0`` adds
    ``lam_weight mean (mean(M) - lam)^2`` (needs ``mask`` and ``lam``).
    """
    beta = real("beta", beta, lo=0.0, hi=1.0)
    lam_weight = real("lam_weight", lam_weight, lo=0.0)
    if adversarial:
        if cosine is None:
            raise ConfigError("cosine: an adversarial step needs the cosine term (adautomix_cosine_term)")
        loss = -beta * mix_loss + (1.0 - beta) * cosine
    else:
        loss = mix_loss
    if lam_weight > 0:
        if mask is None or lam is None:
            raise ConfigError("lam_weight: the lambda-consistency term needs mask and lam")
        loss = loss + lam_weight * (mask.mean(dim=(1, 2, 3)) - lam.to(mask)).pow(2).mean()
    return loss
