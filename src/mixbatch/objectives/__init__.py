"""Training objectives as transforms of a document, mixed per sample with exact weights."""

from mixbatch.objectives.batched import corrupt_rows
from mixbatch.objectives.denoisers import (
    UL2_DENOISERS,
    Denoiser,
    Example,
    Paradigm,
    corrupt,
    encoder_decoder,
    noise_mask,
    prefix_lm,
    prefix_lm_mask,
)
from mixbatch.objectives.distill import (
    DistillConfig,
    Task,
    distill_table,
    rationale_example,
    rationale_weights,
)
from mixbatch.objectives.mixer import ExactMix, ObjectiveMixer

__all__ = [
    "UL2_DENOISERS",
    "Denoiser",
    "DistillConfig",
    "ExactMix",
    "Example",
    "ObjectiveMixer",
    "Paradigm",
    "Task",
    "corrupt",
    "corrupt_rows",
    "distill_table",
    "encoder_decoder",
    "noise_mask",
    "prefix_lm",
    "prefix_lm_mask",
    "rationale_example",
    "rationale_weights",
]
