"""Train a small CNN on scikit-learn's digits with MixUp/CutMix from a `mixup:` config section.

    python examples/mixup_digits.py [STEPS]

The batch mixer is driven by the config and the step number only, so a resumed run mixes
every step exactly as an uninterrupted one; the mixing record travels in the batch and the loss
reads the soft targets from it.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from mixbatch.config import config_from_dict
from mixbatch.mixup import BatchMixer, MixRecord, expected_calibration_error
from mixbatch.mixup.losses import soft_target_cross_entropy


def main(steps: int = 150) -> None:
    cfg = config_from_dict({
        "seed": 0,
        "sources": {"digits": {"path": "unused.jsonl"}},
        "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "switch_prob": 0.5, "mode": "elem",
                  "pairing": "random", "label_smoothing": 0.1, "num_classes": 10,
                  "target": "label", "schedule": {"stop_step": int(steps * 0.8)}},
    })
    assert cfg.mixup is not None
    mixer = BatchMixer(cfg.mixup, seed=cfg.seed)

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = train[torch.randint(0, len(train), (64,), generator=g)]
        batch = mixer({"image": x[idx], "label": y[idx]}, step)
        loss = soft_target_cross_entropy(model(batch["image"]), batch["mix_target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    record = MixRecord.from_batch(batch)
    with torch.no_grad():
        logits = model(x[test])
    acc = float((logits.argmax(1) == y[test]).float().mean())
    print(f"steps {steps}; last step mixed rows: {int(record.mixed.sum())} (mixup stopped at "
          f"step {int(steps * 0.8)}); test accuracy {acc:.3f}; "
          f"ECE {expected_calibration_error(logits, y[test]):.3f}; "
          f"final loss {F.cross_entropy(logits, y[test]).item():.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
