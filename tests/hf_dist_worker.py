"""Run by test_integration_hf.py as two processes: ``MixbatchTrainer`` in a gloo job on loopback.

Three runs in one process group: 4 steps straight; 4 steps interrupted after step 2 (a
checkpoint at 2); the resume from that checkpoint. Writes what each run consumed to
``OUT/result<rank>.json`` (the Trainer's folders are shared) and the logged losses (rank 0's view).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from dist_common import exit_now
from mixbatch.config import load_config
from test_integration_hf import _trainer_run


def main() -> None:
    cfg, out = load_config(sys.argv[1]), Path(sys.argv[2])
    straight, losses = _trainer_run(cfg, out / "a", 4)
    head, _ = _trainer_run(cfg, out / "b", 4, stop_at=2)
    dist.barrier()  # rank 0 has written the checkpoint (a new job would start after it)
    tail, resumed = _trainer_run(cfg, out / "b", 4, resume=str(out / "b" / "checkpoint-2"))
    (out / f"result{os.environ['RANK']}.json").write_text(json.dumps({
        "straight": straight, "head": head, "tail": tail,
        "losses": {str(k): v for k, v in losses.items()},
        "resumed_losses": {str(k): v for k, v in resumed.items()}}))


if __name__ == "__main__":
    main()
    exit_now()
