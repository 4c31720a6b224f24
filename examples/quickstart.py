"""Quick start: two sources, an exact 70/30 token mixture, packed batches, save and resume.

Run: python examples/quickstart.py [WORKDIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

from mixbatch import load_config
from mixbatch.prepare import prepare
from mixbatch.torch import MixbatchDataLoader


def main(work: Path) -> dict:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "web.jsonl", "w") as f:
        for i in range(500):
            f.write(json.dumps({"text": f"web page {i}: " + "lorem ipsum " * (i % 40 + 1)}) + "\n")
    with open(data / "code.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n" * (i % 5 + 1)}) + "\n")
    (work / "config.yaml").write_text(yaml.safe_dump({
        "seed": 0, "tokenizer": "byte", "store": "store",
        "sources": {"web": {"path": "data/web.jsonl"}, "code": {"path": "data/code.jsonl"}},
        "mixture": {"unit": "tokens", "weights": {"web": 0.7, "code": 0.3}},
        "batch": {"seq_len": 256, "batch_size": 8, "packing": "concat"},
    }, sort_keys=False))
    cfg = load_config(work / "config.yaml")
    prepare(cfg)

    # fields: what the batches carry (default: input_ids, labels, position_ids, cu_seqlens,
    # max_seqlen); source_ids tells which source every token came from
    loader = MixbatchDataLoader(cfg, num_workers=0, max_steps=20,
                                fields=["input_ids", "labels", "source_ids"])
    web = list(cfg.sources).index("web")
    fed = {0: 0, 1: 0}
    for batch in loader:
        src = batch["source_ids"]
        for k in fed:
            fed[k] += int((src == k).sum())
    state = loader.state_dict()  # O(K) numbers: resume anywhere, any worker count
    resumed = MixbatchDataLoader(cfg, num_workers=2, state=state, max_steps=5)
    steps = [int(b["step"]) for b in resumed]
    share = fed[web] / (fed[0] + fed[1])
    print(f"web share of tokens fed: {share:.3f} (target 0.700); resumed at steps {steps}")
    return {"web_share": share, "resumed_steps": steps}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    main(out)
