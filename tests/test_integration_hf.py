"""Hugging Face: the ``"hf"`` batch format in a real ``LlamaForCausalLM``, and ``Trainer`` resume."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mixbatch.errors import ConfigError
from mixbatch.integrations.batches import per_device_rows
from mixbatch.integrations.hf import HF_KEYS, HFDataset, to_hf, unpack
from mixbatch.torch import MixbatchDataLoader
from test_loader import _cfg


def torchvision_importable() -> None:
    """Make torchvision importable where its wheel does not match torch (the mixup parity
    tests' workaround): transformers and Lightning import it when it is installed."""
    if importlib.util.find_spec("torchvision") is not None:
        from test_mixup_parity import _import_anchor

        _import_anchor("torchvision")


def _transformers() -> Any:
    pytest.importorskip("transformers")
    torchvision_importable()
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _llama(vocab: int, seed: int = 0) -> Any:
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128)
    return tf.LlamaForCausalLM(config)  # every default a user would leave (use_cache=True, SDPA)


def _vocab(cfg: Any) -> int:
    from mixbatch.store import open_store
    return max(int(open_store(cfg.store_dir / n).meta["tokenizer"]["vocab_size"])
               for n in cfg.sources)


BFD = {"packing": "bfd", "pack_window": 8}


def test_hf_format_has_hugging_face_names_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch=BFD)
    b = next(iter(MixbatchDataLoader(cfg, max_steps=1, fields="all")))
    h = to_hf(b)
    assert tuple(h) == HF_KEYS and h["use_cache"] is False
    assert h["cu_seq_lens_q"].dtype == torch.int32 and h["cu_seq_lens_q"] is h["cu_seq_lens_k"]
    assert h["max_length_q"] == h["max_length_k"] == int(torch.diff(h["cu_seq_lens_q"]).max())
    assert torch.equal(h["labels"], b["labels"]) and torch.equal(h["position_ids"], b["position_ids"])
    with pytest.raises(ConfigError, match="no position_ids"):
        to_hf({k: v for k, v in b.items() if k != "position_ids"})


def test_hf_format_equals_data_collator_with_flattening(tmp_path: Path) -> None:
    tf = _transformers()
    cfg = _cfg(tmp_path)  # concat: rows full, no padding
    h = to_hf(next(iter(MixbatchDataLoader(cfg, max_steps=1))))
    cu = h["cu_seq_lens_q"].tolist()
    flat = h["input_ids"].reshape(-1).tolist()
    docs = [{"input_ids": flat[a:b]} for a, b in itertools.pairwise(cu)]
    ref = tf.DataCollatorWithFlattening(return_flash_attn_kwargs=True,
                                        return_tensors="pt")(docs)
    assert torch.equal(ref["input_ids"].reshape(-1), h["input_ids"].reshape(-1))
    assert torch.equal(ref["labels"].reshape(-1), h["labels"].reshape(-1))
    assert torch.equal(ref["position_ids"].reshape(-1), h["position_ids"].reshape(-1))
    assert ref["cu_seq_lens_q"].tolist() == cu and ref["max_length_q"] == h["max_length_q"]


def _train(model: Any, batches: list[dict[str, Any]], lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("packing", ["bfd", "concat"])
def test_packed_training_equals_unpacked_documents(tmp_path: Path, packing: str) -> None:
    cfg = _cfg(tmp_path, batch=BFD if packing == "bfd" else {})
    hf = [to_hf(b) for b in MixbatchDataLoader(cfg, max_steps=4)]
    vocab = _vocab(cfg)
    packed = _train(_llama(vocab), hf)
    unpacked = _train(_llama(vocab), [unpack(b) for b in hf])
    gaps = np.abs(np.subtract(packed, unpacked))
    assert gaps.max() < 2e-5, (packed, unpacked)
    # the trap the format avoids: the same rows with the model's default use_cache attend across
    # documents (positions restart, the mask does not)
    trap = _train(_llama(vocab), [{k: v for k, v in b.items() if k != "use_cache"} for b in hf])
    trap_gaps = np.abs(np.subtract(trap, unpacked))
    assert trap_gaps.max() > max(1e-4, 20 * gaps.max())
    print(f"\n{packing}: packed {packed} unpacked {unpacked} max gap {gaps.max():.2e}; "
          f"default use_cache gaps {trap_gaps.tolist()}")



def _trainer_run(cfg: Any, out: Path, steps: int, resume: str | None = None,
                 stop_at: int | None = None) -> tuple[list[list[int]], dict[int, float]]:
    """A ``MixbatchTrainer`` run of ``steps`` optimizer steps (interrupted after ``stop_at``):
    the tokens of every batch the model consumed, and the logged loss of every step. Its
    per-device batch and accumulation are the config's (the trainer refuses others)."""
    tf = _transformers()
    from mixbatch.integrations import hf

    consumed: list[list[int]] = []

    class Recording(hf.MixbatchTrainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            consumed.append(inputs["input_ids"].reshape(-1).tolist())
            return super().compute_loss(model, inputs, *a, **k)

    args = tf.TrainingArguments(
        output_dir=str(out), max_steps=steps,
        per_device_train_batch_size=per_device_rows(cfg, int(os.environ.get("WORLD_SIZE", 1))),
        gradient_accumulation_steps=cfg.batch.grad_accum, learning_rate=1e-2, logging_steps=1,
        save_strategy="steps", save_steps=stop_at or 3, report_to=[], use_cpu=True, seed=0,
        ignore_data_skip=True, disable_tqdm=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None)
    trainer = Recording(model=_llama(_vocab(cfg)), args=args, train_dataset=HFDataset(cfg))
    if stop_at is not None:
        class Stop(tf.TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                control.should_training_stop = state.global_step >= stop_at

        trainer.add_callback(Stop())
    trainer.train(resume_from_checkpoint=resume)
    return consumed, {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.mark.parametrize("accum", [1, 2])
def test_trainer_resumes_from_its_checkpoint_exactly(tmp_path: Path, accum: int) -> None:
    cfg = _cfg(tmp_path, batch={**BFD, "batch_size": 4 * accum, "grad_accum": accum})
    straight, losses = _trainer_run(cfg, tmp_path / "a", 6)
    assert len(straight) == 6 * accum
    head, _ = _trainer_run(cfg, tmp_path / "b", 6, stop_at=3)  # interrupted
    assert head == straight[:3 * accum]
    tail, resumed = _trainer_run(cfg, tmp_path / "b", 6,
                                 resume=str(tmp_path / "b" / "checkpoint-3"))
    assert tail == straight[3 * accum:]  # the next batch, none skipped or repeated
    assert resumed == pytest.approx(losses, abs=1e-6)  # 1-3 from the checkpoint's history


def test_trainer_callback_refuses_batch_skipping(tmp_path: Path) -> None:
    tf = _transformers()
    from mixbatch.integrations import hf

    cfg = _cfg(tmp_path)
    args = tf.TrainingArguments(output_dir=str(tmp_path / "o"), max_steps=1, report_to=[],
                                use_cpu=True, disable_tqdm=True, per_device_train_batch_size=4)
    trainer = hf.MixbatchTrainer(model=_llama(_vocab(cfg)), args=args,
                                 train_dataset=HFDataset(cfg))
    with pytest.raises(ConfigError, match="ignore_data_skip=True"):
        trainer.train()


def test_trainer_batch_sizes_are_per_device_and_must_agree(tmp_path: Path) -> None:
    """Hugging Face's per-device batch and accumulation against mixbatch's global batch: a pair
    that disagrees is one error naming both, never a guess."""
    tf = _transformers()
    from mixbatch.integrations import hf

    cfg = _cfg(tmp_path, batch={"batch_size": 8, "grad_accum": 2})
    assert per_device_rows(cfg, 1) == 4 and per_device_rows(cfg, 2) == 2

    def make(**kw: Any) -> Any:
        args = tf.TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True,
                                    disable_tqdm=True, ignore_data_skip=True, max_steps=1,
                                    **kw)
        return hf.MixbatchTrainer(model=_llama(_vocab(cfg)), args=args,
                                  train_dataset=HFDataset(cfg))

    make(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match=r"per_device_train_batch_size = 8 and mixbatch's rows "
                                          r"per device = 4 \(batch.global_batch_size 8"):
        make(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps = 1 and batch\.grad_accum"
                                          r" = 2 disagree"):
        make(per_device_train_batch_size=4)
    sched = _cfg(tmp_path, batch={"batch_size": [{"until_step": 2, "batch_size": 4},
                                                 {"batch_size": 8}]})
    assert per_device_rows(sched, 1) is None  # a schedule: per device changes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(worker: str, tmp: Path) -> None:
    """Run ``tests/WORKER TMP/c.yaml TMP/run`` as ranks 0 and 1 of a gloo job on loopback."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "NODE_RANK": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name(worker)),
                               str(tmp / "c.yaml"), str(tmp / "run")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_trainer_two_ranks_gloo_split_and_resume(tmp_path: Path) -> None:
    """World size 2: each rank trains on its own rows of every global step (no second sharding
    by Accelerate), and an interrupted run resumes from its checkpoint exactly."""
    cfg = _cfg(tmp_path, batch=BFD)
    _transformers()  # skips where transformers is missing
    two_ranks("hf_dist_worker.py", tmp_path)
    for r in range(2):
        got = json.loads((tmp_path / "run" / f"result{r}.json").read_text())
        mine = [b["input_ids"].reshape(-1).tolist()
                for b in MixbatchDataLoader(cfg, rank=r, world_size=2, max_steps=4)]
        assert got["straight"] == mine  # this rank's rows of steps 0..3, nothing else
        assert got["head"] + got["tail"] == mine
        if r == 0:
            assert got["resumed_losses"] == pytest.approx(got["losses"], abs=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_and_dataset_take_batch_format_hf(tmp_path: Path, workers: int) -> None:
    from mixbatch.torch import MixbatchDataset

    cfg = _cfg(tmp_path, batch=BFD)
    want = [to_hf(b) for b in MixbatchDataLoader(cfg, max_steps=3)]
    got = list(MixbatchDataLoader(cfg, max_steps=3, num_workers=workers, batch_format="hf"))
    got_ds = list(torch.utils.data.DataLoader(
        MixbatchDataset(cfg, max_steps=3, batch_format="hf"), batch_size=None,
        num_workers=workers))
    for g in (got, got_ds):
        assert len(g) == 3
        for w, b in zip(want, g, strict=True):
            assert tuple(b) == HF_KEYS
            assert all(torch.equal(b[k], w[k]) if isinstance(w[k], torch.Tensor) else b[k] == w[k]
                       for k in HF_KEYS)
    with pytest.raises(ConfigError, match="batch_format: got 'hff'"):
        MixbatchDataLoader(cfg, batch_format="hff")
    with pytest.raises(ConfigError, match="leave fields unset"):
        MixbatchDataset(cfg, batch_format="hf", fields="all")


def test_len_where_the_stream_length_is_known(tmp_path: Path) -> None:
    from mixbatch.config import config_from_dict
    from mixbatch.torch import MixbatchDataset

    cfg = _cfg(tmp_path)
    dl, ds = MixbatchDataLoader(cfg, max_steps=5), MixbatchDataset(cfg, max_steps=5)
    assert len(dl) == len(list(dl)) == 5 and len(ds) == 5
    assert len(torch.utils.data.DataLoader(ds, batch_size=None)) == 5
    with pytest.raises(TypeError, match="give max_steps"):
        len(MixbatchDataLoader(cfg))
    data = cfg.model_dump(mode="json")
    data["sources"]["s0"]["max_epochs"] = 1  # the stream may end before max_steps
    capped = config_from_dict(data, base_dir=tmp_path)
    assert bool(MixbatchDataLoader(capped, max_steps=5))
    with pytest.raises(TypeError, match="no source may end"):
        len(MixbatchDataLoader(capped, max_steps=5))
