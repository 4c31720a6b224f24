"""Validation loss per source on the held-out documents.

Each held-out document, with its end-of-document token as in training, is cut into windows of
``seq_len`` tokens scored on their own (a window's first token is not predicted), taken in the
held-out order up to ``max_tokens`` tokens per source, and packed first-fit decreasing into rows
whose positions restart per window. A source's loss is the mean over its predicted tokens on
every rank (:func:`global_means`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from mixbatch.errors import ConfigError
from mixbatch.proxy.model import IGNORE_INDEX, ProxyLM
from mixbatch.store import TokenStore
from mixbatch.torch.feedback import all_reduce_feedback

__all__ = ["EvalRows", "amp_dtype", "autocast", "build_eval_rows", "eval_sums", "global_means",
           "row_batches"]


@dataclass
class EvalRows:
    """Packed evaluation rows of one source (numpy, (R, seq_len))."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    docs: np.ndarray  # the held-out documents read (store indices)

    @property
    def tokens(self) -> int:
        """Tokens scored (predicted)."""
        return int((self.labels != IGNORE_INDEX).sum())


def build_eval_rows(store: TokenStore, docs: np.ndarray, seq_len: int, max_tokens: int,
                    eod_id: int, pad_id: int) -> EvalRows:
    """The evaluation rows of one source from its held-out documents ``docs``."""
    pieces: list[np.ndarray] = []
    used: list[int] = []
    left = max_tokens
    for d in docs:
        if left < 2:
            break
        toks = np.append(np.asarray(store[int(d)], dtype=np.int64), eod_id)
        used.append(int(d))
        for s in range(0, len(toks), seq_len):
            w = toks[s: s + min(seq_len, left)]
            if len(w) >= 2:  # a window of one token predicts nothing
                pieces.append(w)
                left -= len(w)
            if left < 2:
                break
    # first-fit decreasing (stable: ties keep their order)
    free: list[int] = []
    placed: list[list[int]] = []
    for i in sorted(range(len(pieces)), key=lambda i: -len(pieces[i])):
        n = len(pieces[i])
        row = next((r for r, f in enumerate(free) if f >= n), None)
        if row is None:
            free.append(seq_len)
            placed.append([])
            row = len(free) - 1
        free[row] -= n
        placed[row].append(i)
    ids = np.full((len(placed), seq_len), pad_id, dtype=np.int64)
    labels = np.full((len(placed), seq_len), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((len(placed), seq_len), dtype=np.int64)
    for r, members in enumerate(placed):
        c = 0
        for i in members:
            w = pieces[i]
            ids[r, c: c + len(w)] = w
            labels[r, c + 1: c + len(w)] = w[1:]
            pos[r, c: c + len(w)] = np.arange(len(w))
            c += len(w)
    return EvalRows(ids, labels, pos, np.asarray(used, dtype=np.int64))


def global_means(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-reduce ``sums`` ([M] or [M, P]) and ``counts`` ([M]) over ranks (a no-op outside
    ``torch.distributed``); return the global means (NaN where a group has no tokens on any
    rank) and the global counts, on the CPU, float64."""
    nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
    where = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    sums = sums.detach().to(where, torch.float64, copy=True)
    counts = counts.detach().to(where, torch.float64, copy=True)
    all_reduce_feedback(sums, counts)
    sums, counts = sums.cpu(), counts.cpu()
    means = sums / counts.clamp(min=1).reshape((-1,) + (1,) * (sums.dim() - 1))
    means[counts == 0] = float("nan")
    return means, counts


def amp_dtype(device: torch.device, bf16: bool | None) -> torch.dtype | None:
    """The autocast dtype of a proxy run on ``device`` (``ProxyConfig.bf16``; None: float32).

    ``bf16`` None (auto): bfloat16 on a CUDA GPU that supports it, float32 elsewhere (CPUs).
    True: bfloat16 mixed precision on any device, CPUs included (torch's CPU autocast; on a CPU
    without native bfloat16 instructions, e.g. no AVX512-BF16 / AMX, the casts are emulated
    and usually slower); the model's parameters, their gradients, the optimiser's state and the
    loss (cross entropy on float32 logits) stay float32 in every case. False: float32.

    Raises:
        ConfigError: ``bf16: true`` on a GPU without bfloat16, or a torch without autocast
            for the device.
    """
    if bf16 is False:
        return None
    cuda = device.type == "cuda"
    supported = (torch.cuda.is_bf16_supported() if cuda
                 else torch.amp.is_autocast_available(device.type))
    if bf16 is None:
        return torch.bfloat16 if cuda and supported else None
    if not supported:
        name = torch.cuda.get_device_name(device) if cuda else device.type
        raise ConfigError(f"proxy.bf16: true asks for bfloat16 mixed precision, but {name} "
                          "cannot do bfloat16 (set bf16: false for float32, or leave it unset "
                          "for bfloat16 only where the device has it)")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device`` (None: off)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def row_batches(rows: EvalRows, device: torch.device, batch_rows: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``rows`` on ``device`` as (ids, labels, positions), ``batch_rows`` rows at a time."""
    for s in range(0, len(rows.input_ids), batch_rows):
        ids, lab, pos = (torch.from_numpy(a[s: s + batch_rows]).to(device)
                         for a in (rows.input_ids, rows.labels, rows.position_ids))
        yield ids, lab, pos


@torch.no_grad()
def eval_sums(model: ProxyLM, rows: Mapping[str, EvalRows], device: torch.device,
              batch_rows: int = 32, autocast_dtype: torch.dtype | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sums and scored tokens (float64, CPU, one per entry of ``rows``, in order) of this
    rank's rows; :func:`global_means` turns them into token-mean losses over every rank."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(rows), dtype=torch.float64)
    counts = torch.zeros(len(rows), dtype=torch.float64)
    try:
        for i, ev in enumerate(rows.values()):
            total = torch.zeros((), dtype=torch.float64, device=device)
            for ids, lab, pos in row_batches(ev, device, batch_rows):
                with autocast(device, autocast_dtype):
                    out = model(ids, lab, pos)
                total += out.losses.double().sum()
            sums[i] = total.cpu()
            counts[i] = ev.tokens
    finally:
        model.train(was_training)
    return sums, counts
