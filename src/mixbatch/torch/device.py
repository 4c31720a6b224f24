"""Batches as tensors: compact on the wire, fields derived where they are used.

The loader ships the compact batch (:func:`mixbatch.shape.materialize.materialize_compact`):
tokens in the stores' dtype (uint16 for most vocabularies: a quarter of int64) plus the
sequence table (``cu_seqlens``, ``seq_source``, ``seq_doc``). :func:`to_device` copies that to a
device (``non_blocking``, from pinned memory when the batch is pinned) and derives the fields
asked for there, as int64, with the same conventions as the NumPy side (-100 on padding and at
every segment start, positions restarting per segment, -1 source/doc on padding).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from mixbatch.errors import ConfigError
from mixbatch.shape.materialize import IGNORE_INDEX, expand, resolve_fields

_TENSOR_KEYS = ("input_ids", "cu_seqlens", "seq_source", "seq_doc", "second_lengths")


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """Every NumPy array of a batch (compact or not) as a CPU tensor (no copy)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v if v.flags.c_contiguous else np.ascontiguousarray(v))
        out[k] = v
    return out


def fields_on_cpu(compact: dict[str, Any], fields: str | Iterable[str] | None) -> dict[str, Any]:
    """The fields asked for, as CPU tensors, from a compact batch of NumPy arrays."""
    return to_tensors(expand(compact, fields))


def check_device(device: str | torch.device) -> torch.device:
    """The device, or one clear error when it does not exist or is not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {device!r} asked for, but only "
                          f"{torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {device!r} asked for, but MPS is not available here")
    return dev


def to_device(batch: dict[str, Any], device: str | torch.device,
              fields: str | Iterable[str] | None = None, non_blocking: bool = True
              ) -> dict[str, Any]:
    """Copy a compact batch (tensors or arrays) to ``device`` and derive ``fields`` there.

    ``fields``: ``None`` (input ids, labels, position ids, ``cu_seqlens``, ``max_seqlen``),
    ``"all"``, or names. Per-position fields are int64 on the device; ``cu_seqlens`` int32.
    """
    want = resolve_fields(fields)
    dev = check_device(device)
    t = to_tensors(batch) if any(isinstance(v, np.ndarray) for v in batch.values()) \
        else batch
    moved = {k: t[k].to(dev, non_blocking=non_blocking) for k in _TENSOR_KEYS if k in t}
    ids = moved["input_ids"]
    R, L = ids.shape
    cu = moved["cu_seqlens"].long()
    lens = cu[1:] - cu[:-1]
    n = R * L
    out: dict[str, Any] = {k: batch[k] for k in ("step", "max_second_len") if k in batch}
    if "second_lengths" in moved:
        out["second_lengths"] = moved["second_lengths"]
    ids64 = ids.to(torch.int64)
    per_pos = {"labels", "position_ids", "source_ids", "doc_ids"} & set(want)
    if per_pos:
        seq = torch.repeat_interleave(torch.arange(lens.numel(), device=dev), lens,
                                      output_size=n)
        pad = moved["seq_source"][seq] < 0
        if "labels" in want:
            labels = ids64.reshape(-1).clone()
            labels[pad] = IGNORE_INDEX
            labels[cu[:-1][lens > 0]] = IGNORE_INDEX
            out["labels"] = labels.view(R, L)
        if "position_ids" in want:
            pos = torch.arange(n, device=dev) - cu[:-1][seq]
            out["position_ids"] = pos.masked_fill_(pad, 0).view(R, L)
        if "source_ids" in want:
            out["source_ids"] = moved["seq_source"].long()[seq].view(R, L)
        if "doc_ids" in want:
            out["doc_ids"] = moved["seq_doc"][seq].view(R, L)
    if "input_ids" in want:
        out["input_ids"] = ids64
    if "cu_seqlens" in want:
        out["cu_seqlens"] = moved["cu_seqlens"]
    if "max_seqlen" in want:
        out["max_seqlen"] = batch["max_seqlen"]
    return out
