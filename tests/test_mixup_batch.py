"""The `mixup:` config section, BatchMixer (deterministic per step), schedules and metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup import (
    BatchMixer,
    MixRecord,
    MixupSchedule,
    expected_calibration_error,
    mix_features,
    neural_collapse,
)

SOURCES = {"a": {"path": "x.jsonl"}}


def _cfg(**mixup: object):
    return config_from_dict({"sources": SOURCES, "mixup": mixup}).mixup


def _image_batch(b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(b, 1, 8, 8, generator=g), "label": torch.arange(b) % 3,
            "source_id": torch.zeros(b, dtype=torch.long)}


def test_config_section_is_validated() -> None:
    spec = _cfg(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=3, target="label", schedule={"stop_step": 5})
    assert spec.mode == "batch" and spec.schedule.stop_step == 5
    assert config_from_dict({"sources": SOURCES}).mixup is None
    for bad, msg in [({"mixup_alpha": -1}, "mixup.mixup_alpha"),
                     ({"mixup_alpha": 0, "cutmix_alpha": 0}, "both 0"),
                     ({"mode": "row"}, "mixup.mode"),
                     ({"target": "label"}, "num_classes"),
                     ({"mode": "pair", "pairing": "roll"}, "symmetric"),
                     ({"schedule": {"start_step": 5, "end_step": 2}}, "end_step"),
                     ({"alpha": 1.0}, "mixup.alpha: unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            _cfg(**bad)


def test_config_stays_torch_free() -> None:
    code = "import sys, mixbatch.config as c; c.config_from_dict({'sources': {'a': {'path': 'x'}}, " \
           "'mixup': {'num_classes': 2}}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batch_mixer_is_a_function_of_seed_and_step() -> None:
    spec = _cfg(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=3, target="label")
    batch = _image_batch()
    a = BatchMixer(spec, seed=7)
    # a "resumed" mixer that starts at step 3 sees exactly what the first one saw there
    first = [a(batch, step) for step in range(5)]
    b = BatchMixer(spec, seed=7)
    for step in (3, 4):
        again = b(batch, step)
        for k, v in first[step].items():
            assert torch.equal(v, again[k]), k
    assert not torch.equal(first[0]["image"], first[1]["image"])
    assert not torch.equal(BatchMixer(spec, seed=8)(batch, 0)["image"], first[0]["image"])
    out = first[2]
    rec = MixRecord.from_batch(out)
    assert torch.equal(out["label"], batch["label"]) and torch.equal(out["source_id"], batch["source_id"])
    assert out["mix_target"].shape == (6, 3)
    assert torch.allclose(out["mix_target"].sum(1), torch.ones(6))
    assert rec.batch_size == 6


def test_token_batches_carry_the_record_for_embedding_mixing() -> None:
    spec = _cfg(mixup_alpha=1.0, pairing="random")
    batch = {"input_ids": torch.randint(0, 100, (4, 16)), "labels": torch.randint(0, 100, (4, 16)),
             "cu_seqlens": torch.tensor([0, 5, 16, 20, 32, 40, 48, 64], dtype=torch.int32)}
    out = BatchMixer(spec, seed=1)(batch, 0)
    assert torch.equal(out["input_ids"], batch["input_ids"])            # ids are never blended
    assert out["mix_lam"].shape == (4,) and torch.equal(out["cu_seqlens"], batch["cu_seqlens"])
    rec = MixRecord.from_batch(out)
    emb = torch.nn.Embedding(100, 8)(out["input_ids"])
    mixed = mix_features(emb, rec)                                       # the model mixes here
    torch.testing.assert_close(mixed[0], rec.lam[0] * emb[0] + (1 - rec.lam[0]) * emb[rec.index[0]])
    with pytest.raises(DataError, match="token ids are mixed at the embedding level"):
        BatchMixer(_cfg(keys=["input_ids"]), seed=0)(batch, 0)
    with pytest.raises(DataError, match="CutMix needs a float tensor"):
        BatchMixer(_cfg(cutmix_alpha=1.0), seed=0)(batch, 0)


def test_level_embedding_only_adds_the_record() -> None:
    batch = _image_batch()
    out = BatchMixer(_cfg(level="embedding"), seed=0)(batch, 0)
    assert torch.equal(out["image"], batch["image"]) and "mix_lam" in out


def test_batch_mixer_bad_batches() -> None:
    m = BatchMixer({"mixup_alpha": 1.0, "keys": ["image"], "num_classes": 3, "target": "label"}, seed=0)
    with pytest.raises(DataError, match="disagree on the batch size"):
        m({"image": torch.randn(4, 2), "label": torch.arange(3)}, 0)
    with pytest.raises(DataError, match="which the batch lacks"):
        m({"pixels": torch.randn(4, 2), "label": torch.arange(4)}, 0)
    with pytest.raises(DataError, match="label 5 is out of range"):
        m({"image": torch.randn(4, 2), "label": torch.tensor([0, 1, 2, 5])}, 0)
    with pytest.raises(ConfigError, match="mixup: mixup_alpha: Input should be greater"):
        BatchMixer({"mixup_alpha": -2}, seed=0)


def test_schedule_and_early_stop() -> None:
    s = MixupSchedule(start_prob=1.0, end_prob=0.5, start_step=10, end_step=20, stop_step=30)
    assert [s.prob(t) for t in (0, 10, 15, 20, 29, 30, 99)] == [1.0, 1.0, 0.75, 0.5, 0.5, 0.0, 0.0]
    c = MixupSchedule(start_alpha_scale=1.0, end_alpha_scale=0.0 + 0.5, end_step=10, shape="cosine")
    assert c.alpha_scale(5) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="end_step"):
        MixupSchedule(start_step=5, end_step=5)
    mixer = BatchMixer(_cfg(mixup_alpha=1.0, schedule={"stop_step": 2}), seed=0)
    batch = _image_batch()
    assert not torch.equal(mixer(batch, 1)["image"], batch["image"])
    late = mixer(batch, 2)
    assert torch.equal(late["image"], batch["image"]) and bool((late["mix_lam"] == 1).all())


def test_expected_calibration_error() -> None:
    # two bins by hand: confidences 0.9 (2 right of 2) and 0.6 (1 right of 2) with 10 bins
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 0, 0])
    ece = expected_calibration_error(probs, labels, n_bins=10, from_logits=False)
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * abs(0.5 - 0.6))
    perfect = expected_calibration_error(torch.eye(3) * 50, torch.arange(3))
    assert perfect == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError, match="labels"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2, 0]))


def test_neural_collapse_of_a_simplex_etf() -> None:
    c, d, n = 4, 6, 5
    m = torch.eye(c) - 1.0 / c                                     # centred simplex
    means = torch.cat([m, torch.zeros(c, d - c)], 1) * 3
    feats = means.repeat_interleave(n, 0)
    labels = torch.arange(c).repeat_interleave(n)
    nc = neural_collapse(feats, labels, weight=means)
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-10)
    assert nc["nc2_equinorm"] == pytest.approx(0.0, abs=1e-10)
    assert nc["nc2_equiangular"] == pytest.approx(0.0, abs=1e-10)
    assert nc["nc3"] == pytest.approx(0.0, abs=1e-10)
    assert nc["nc4"] == 0.0
    noisy = neural_collapse(feats + torch.randn(feats.shape, generator=torch.Generator().manual_seed(0)),
                            labels, weight=torch.randn(c, d))
    assert noisy["nc1"] > 0.01 and noisy["nc3"] > 0.01
    with pytest.raises(DataError, match="labels"):
        neural_collapse(feats, labels[:3])
