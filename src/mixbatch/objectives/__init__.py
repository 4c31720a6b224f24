"""Training objectives as transforms of a document, mixed per sample with exact weights."""

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
from mixbatch.objectives.distill import Task, rationale_example, rationale_weights
from mixbatch.objectives.mixer import ObjectiveMixer

__all__ = [
    "UL2_DENOISERS",
    "Denoiser",
    "Example",
    "ObjectiveMixer",
    "Paradigm",
    "Task",
    "corrupt",
    "encoder_decoder",
    "noise_mask",
    "prefix_lm",
    "prefix_lm_mask",
    "rationale_example",
    "rationale_weights",
]
