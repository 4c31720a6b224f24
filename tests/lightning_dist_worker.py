"""Run by test_integration_lightning.py as two processes: Lightning DDP (gloo, CPU) over
``MixbatchDataModule``, ranks started outside Lightning (its environment reads ``LOCAL_RANK``).

Three fits in one process group: 6 steps straight; 3 steps with a checkpoint at 3; the resume
from that checkpoint to step 6. Writes what this rank trained on and the weights to
``OUT/result<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from dist_common import exit_now
from mixbatch.config import load_config
from test_integration_lightning import _lightning_fit


def main() -> None:
    cfg, out = load_config(sys.argv[1]), Path(sys.argv[2])
    straight, w = _lightning_fit(cfg, out / "a", 6, devices=2)
    head, _ = _lightning_fit(cfg, out / "b", 3, devices=2)
    dist.barrier()  # rank 0 has written the checkpoint
    ckpt = next((out / "b").glob("*step=3*.ckpt"))
    tail, w2 = _lightning_fit(cfg, out / "c", 6, ckpt=str(ckpt), devices=2)
    gap = max(float((w[k] - w2[k]).abs().max()) for k in w)
    (out / f"result{os.environ['RANK']}.json").write_text(json.dumps(
        {"straight": straight, "head": head, "tail": tail, "weight_gap": gap,
         "weights": float(sum(v.double().sum() for v in w.values()))}))
    dist.barrier()
    exit_now()


if __name__ == "__main__":
    main()
