"""Batch shapers: how planned documents become rows (see :mod:`mixbatch.shape.base`)."""

from __future__ import annotations

from mixbatch.shape.base import DocFeed, Docs, Shaper, StepPlan
from mixbatch.shape.concat import ConcatShaper
from mixbatch.shape.materialize import IGNORE_INDEX, materialize
from mixbatch.shape.pad import PadShaper

__all__ = [
    "IGNORE_INDEX",
    "ConcatShaper",
    "DocFeed",
    "Docs",
    "PadShaper",
    "Shaper",
    "StepPlan",
    "materialize",
]
