"""Run by test_torch.py as two processes: a real torch.distributed (gloo) job on loopback."""

from __future__ import annotations

import json
import os
import sys

import torch.distributed as dist

from mixbatch.config import load_config
from mixbatch.loader.loader import MixedLoader


def main() -> None:
    cfg_path, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo")  # rank and world size from the environment
    loader = MixedLoader(load_config(cfg_path))  # reads rank / world size from torch.distributed
    mine = []
    for step in loader.steps(steps):
        p = step.plan.select_rows(step.rows)
        mine.append({"step": step.index, "segments": list(zip(
            p.source.tolist(), p.doc.tolist(), p.start.tolist(), p.end.tolist(), strict=True)),
            "rows": step.rows.tolist(), "labels": step.plan.row_source(len(loader.names))
            .tolist()})
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": loader.rank, "world": loader.world_size,
                                      "steps": mine})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.barrier()  # nobody tears the group down while a peer still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # results written; skip interpreter teardown, where torch's C++ threads at times abort with
    # exit -6 after everything has finished (as tests/online_dist_worker.py does)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
