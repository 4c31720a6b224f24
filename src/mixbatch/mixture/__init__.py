"""Mixture specs: weight vectors, temperature sampling, schedules over steps or tokens."""

from mixbatch.mixture.schedule import Interpolation, Schedule, ScheduleClock, Stage
from mixbatch.mixture.weights import (
    normalize_weights,
    temperature_weights,
    validate_weights,
    weights_from_mapping,
)

__all__ = [
    "Interpolation",
    "Schedule",
    "ScheduleClock",
    "Stage",
    "normalize_weights",
    "temperature_weights",
    "validate_weights",
    "weights_from_mapping",
]
