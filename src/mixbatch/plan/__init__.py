"""Sampling plan: the exact interleaving rule, keyed permutations, rank/worker partition."""

from mixbatch.plan.interleave import Interleaver, Unit, max_prefix_deviation, tijdeman_delta
from mixbatch.plan.partition import deal_by_source, partition_batch, split_among_workers
from mixbatch.plan.permutation import (
    derive_key,
    inverse,
    permutation,
    permute,
    source_epoch_key,
)

__all__ = [
    "Interleaver",
    "Unit",
    "deal_by_source",
    "derive_key",
    "inverse",
    "max_prefix_deviation",
    "partition_batch",
    "permutation",
    "permute",
    "source_epoch_key",
    "split_among_workers",
    "tijdeman_delta",
]
