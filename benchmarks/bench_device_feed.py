"""Feeding a GPU: ``MixbatchDataLoader`` batches copied to CUDA, pinned and pageable.

A device check, run on a machine with a CUDA GPU (it exits when there is none). The built-in
corpus (``mixbatch.demo.build_corpus``, ``--mb-per-domain`` MB per domain) is prepared with
the byte tokenizer and read with ``packing: bfd`` (``--seq-len``, ``--batch-size``); every batch's
``input_ids``, ``labels`` and ``position_ids`` (int64) and ``cu_seqlens`` (int32) are copied to
the GPU (``non_blocking=True``), with ``pin_memory`` false and true and ``--workers`` worker
processes, for ``--steps`` steps after ``--warmup`` steps. Reported: real tokens per second
delivered to the GPU and the host-to-device copy rate, next to the plain copy rate of the same
tensors from pinned and pageable memory (no loader). Anchors are not in the device image, so
this table has none.

Run ``python3 benchmarks/bench_device_feed.py`` (the device's Python with PyTorch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import header, human, log, run_in_workdir, table

PACKAGES = ("mixbatch", "torch", "numpy")
MOVED = ("input_ids", "labels", "position_ids", "cu_seqlens")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--mb-per-domain", type=float, default=4.0)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--max-wait", type=float, default=0.0)
    return p.parse_args()


def feed(cfg: Any, workers: int, pin: bool, steps: int, warmup: int) -> dict[str, float]:
    import torch

    from mixbatch.torch import MixbatchDataLoader

    dl = MixbatchDataLoader(cfg, rank=0, world_size=1, num_workers=workers, pin_memory=pin,
                            max_steps=steps + warmup)
    dev = torch.device("cuda")
    tokens = nbytes = 0
    t0 = 0.0
    for i, batch in enumerate(dl):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens = nbytes = 0
        moved = {k: batch[k].to(dev, non_blocking=True) for k in MOVED}
        tokens += int((batch["labels"] != -100).sum()) + len(batch["cu_seqlens"]) - 1
        nbytes += sum(v.numel() * v.element_size() for v in moved.values())
    torch.cuda.synchronize()
    s = time.perf_counter() - t0
    return {"tokens_s": tokens / s, "bytes_s": nbytes / s, "seconds": s}


def plain_copy(rows: int, seq_len: int, pin: bool, n: int = 200) -> float:
    """Bytes/s of copying three (rows, seq_len) int64 tensors to the GPU, ``n`` times."""
    import torch

    host = [torch.zeros(rows, seq_len, dtype=torch.int64) for _ in range(3)]
    if pin:
        host = [h.pin_memory() for h in host]
    dev = torch.device("cuda")
    for h in host:
        h.to(dev, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        for h in host:
            h.to(dev, non_blocking=True)
    torch.cuda.synchronize()
    return n * sum(h.numel() * 8 for h in host) / (time.perf_counter() - t0)


def bench(args: argparse.Namespace, workdir: Path) -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_device_feed: no CUDA device")
    from mixbatch.config import config_from_dict
    from mixbatch.demo import build_corpus
    from mixbatch.prepare import prepare

    domains = build_corpus(workdir / "corpus", max_bytes=int(args.mb_per_domain * (1 << 20)))
    sources = {d.name: {"path": str(d.path), "format": "jsonl"} for d in domains}
    cfg = config_from_dict({"tokenizer": "byte", "store": str(workdir / "store"),
                            "sources": sources, "mixture": {"unit": "tokens", "temperature": 1.0},
                            "batch": {"seq_len": args.seq_len, "batch_size": args.batch_size,
                                      "packing": "bfd"}})
    prepare(cfg, workers=4, progress=False)
    rows = []
    for workers in args.workers:
        for pin in (False, True):
            log(f"workers {workers}, pin_memory {pin} ...")
            r = feed(cfg, workers, pin, args.steps, args.warmup)
            rows.append([workers, pin, human(r["tokens_s"]), f"{r['bytes_s'] / 1e9:.2f}",
                         f"{r['seconds']:.2f}"])
    copy = {pin: plain_copy(args.batch_size, args.seq_len, pin) for pin in (False, True)}
    name = torch.cuda.get_device_name(0)
    extra = {"device": f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}",
             "shape": f"packing bfd, {args.batch_size} rows x {args.seq_len} per step, built-in "
                      f"corpus ({args.mb_per_domain:g} MB per domain), {args.steps} steps timed "
                      f"after {args.warmup}"}
    return "\n".join([
        header("bench_device_feed: loader to GPU", PACKAGES, extra), "",
        table(["workers", "pin_memory", "real tokens/s to GPU", "H2D GB/s (moved tensors)",
               "seconds"], rows), "",
        f"Plain copy of three ({args.batch_size}, {args.seq_len}) int64 tensors, no loader: "
        f"pageable {copy[False] / 1e9:.2f} GB/s, pinned {copy[True] / 1e9:.2f} GB/s.", "",
    ])


def main() -> None:
    run_in_workdir(bench, parse_args(), "device-feed")


if __name__ == "__main__":
    main()
