"""PyTorch side of mixbatch: data adapters and the feedback that online policies feed on."""

from mixbatch.torch.data import MixbatchDataLoader, MixbatchDataset
from mixbatch.torch.device import to_device, to_tensors
from mixbatch.torch.feedback import (
    all_reduce_feedback,
    per_source_grads,
    per_source_mean,
)

__all__ = [
    "MixbatchDataLoader",
    "MixbatchDataset",
    "all_reduce_feedback",
    "per_source_grads",
    "per_source_mean",
    "to_device",
    "to_tensors",
]
