"""Batch shapers: how planned documents become rows (see :mod:`mixbatch.shape.base`)."""

from __future__ import annotations

from mixbatch.shape.base import DocFeed, Docs, Shaper, StepPlan
from mixbatch.shape.bfd import BFDShaper
from mixbatch.shape.buckets import BucketShaper
from mixbatch.shape.concat import ConcatShaper
from mixbatch.shape.materialize import IGNORE_INDEX, materialize
from mixbatch.shape.pad import PadShaper
from mixbatch.shape.pad_buckets import PadBucketShaper

__all__ = [
    "IGNORE_INDEX",
    "BFDShaper",
    "BucketShaper",
    "ConcatShaper",
    "DocFeed",
    "Docs",
    "PadBucketShaper",
    "PadShaper",
    "Shaper",
    "StepPlan",
    "materialize",
]
