"""Losses of mixed batches, each citing its paper and equation in its module docstring."""

from __future__ import annotations

from mixbatch.mixup.losses.adversarial import (
    EmaTeacher,
    MixMaskGenerator,
    adautomix_cosine_term,
    adautomix_generator_loss,
    adautomix_mix,
    ema_momentum,
)
from mixbatch.mixup.losses.calibration import rankmixup_mndcg_loss, rankmixup_mrl_loss
from mixbatch.mixup.losses.classification import (
    decoupled_mixup_loss,
    mixed_cross_entropy,
    soft_target_cross_entropy,
)
from mixbatch.mixup.losses.contrastive import (
    MoCoQueue,
    barlow_twins_loss,
    mixed_barlow_twins_regularizer,
    mochi_logits,
    mochi_loss,
    mochi_synthesize,
    supremix_loss,
)
from mixbatch.mixup.losses.gan import adaptivemix_loss
from mixbatch.mixup.losses.metric import contrastive_pair_loss, metrix_contrastive_loss
from mixbatch.mixup.losses.replay import adaptive_label_ratio, dualmix_replay
from mixbatch.mixup.losses.semi import fixmatch_loss, guess_labels, mixmatch_loss, mixmatch_mix, sharpen

__all__ = [
    "EmaTeacher",
    "MixMaskGenerator",
    "MoCoQueue",
    "adaptive_label_ratio",
    "adaptivemix_loss",
    "adautomix_cosine_term",
    "adautomix_generator_loss",
    "adautomix_mix",
    "barlow_twins_loss",
    "contrastive_pair_loss",
    "decoupled_mixup_loss",
    "dualmix_replay",
    "ema_momentum",
    "fixmatch_loss",
    "guess_labels",
    "metrix_contrastive_loss",
    "mixed_barlow_twins_regularizer",
    "mixed_cross_entropy",
    "mixmatch_loss",
    "mixmatch_mix",
    "mochi_logits",
    "mochi_loss",
    "mochi_synthesize",
    "rankmixup_mndcg_loss",
    "rankmixup_mrl_loss",
    "sharpen",
    "soft_target_cross_entropy",
    "supremix_loss",
]
