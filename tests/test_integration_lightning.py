"""Lightning and Accelerate: mixbatch's own rank split, exact resume through their checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mixbatch.integrations.batches import StatefulBatches
from mixbatch.torch import MixbatchDataLoader
from test_integration_hf import torchvision_importable, two_ranks
from test_loader import _cfg

BFD = {"packing": "bfd", "pack_window": 8}


class TinyLM(nn.Module):
    """Embedding + linear next-token model over mixbatch batches (labels already shifted by
    nothing: the model predicts the label of the next position, as Hugging Face models do)."""

    def __init__(self, vocab: int = 300) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 16)
        self.out = nn.Linear(16, vocab)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self.out(self.emb(batch["input_ids"]))[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def _lightning_fit(cfg: Any, root: Path, max_steps: int, ckpt: str | None = None,
                   devices: int = 1) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """A Lightning fit of ``max_steps`` (``devices`` > 1: DDP over gloo, ranks started outside):
    the tokens of every batch this rank trained on, and the weights at the end."""
    torchvision_importable()
    pl = pytest.importorskip("lightning.pytorch")
    from mixbatch.integrations import lightning as mbl

    seen: list[list[int]] = []

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lm = TinyLM()

        def training_step(self, batch: dict[str, Any], idx: int) -> torch.Tensor:
            seen.append(batch["input_ids"].reshape(-1).tolist())
            return self.lm(batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.5)

    module = Module()
    every = pl.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=devices, logger=False,
                         strategy="ddp" if devices > 1 else "auto",
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[every], default_root_dir=root)
    trainer.fit(module, datamodule=mbl.MixbatchDataModule(cfg), ckpt_path=ckpt)
    return seen, {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lightning_datamodule_resumes_from_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch=BFD)
    straight, weights = _lightning_fit(cfg, tmp_path / "a", 6)
    assert len(straight) == 6
    head, _ = _lightning_fit(cfg, tmp_path / "b", 3)  # stopped after its checkpoint at step 3
    assert head == straight[:3]
    ckpt = next((tmp_path / "b").glob("*step=3*.ckpt"))
    tail, resumed = _lightning_fit(cfg, tmp_path / "c", 6, ckpt=str(ckpt))
    assert tail == straight[3:]  # the batch after the checkpoint, though Lightning fetched ahead
    for k, v in weights.items():
        assert torch.allclose(resumed[k], v, atol=1e-6), k


def _accelerate_run(cfg: Any, root: Path, steps: int, save_at: int | None = None,
                    load: Path | None = None) -> tuple[list[list[int]], torch.Tensor]:
    torchvision_importable()
    accelerate = pytest.importorskip("accelerate")
    acc = accelerate.Accelerator(cpu=True)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt = acc.prepare(model, opt)
    data = StatefulBatches(cfg)  # not prepared: mixbatch splits the ranks itself
    acc.register_for_checkpointing(data)
    if load is not None:
        acc.load_state(str(load))
    seen = []
    for batch in data:
        if len(seen) == steps:
            break
        seen.append(batch["input_ids"].reshape(-1).tolist())
        loss = model(batch)
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        if save_at is not None and len(seen) == save_at:
            acc.save_state(str(root))
            break
    return seen, acc.unwrap_model(model).out.weight.detach().clone()


def test_accelerate_resumes_through_save_state(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, batch=BFD)
    straight, w = _accelerate_run(cfg, tmp_path / "x", 6)
    head, _ = _accelerate_run(cfg, tmp_path / "ckpt", 6, save_at=3)
    tail, w2 = _accelerate_run(cfg, tmp_path / "y", 3, load=tmp_path / "ckpt")
    assert head == straight[:3] and tail == straight[3:]
    assert torch.allclose(w, w2, atol=1e-6)


@pytest.mark.slow
def test_lightning_two_ranks_gloo_keep_mixbatch_split_and_resume(tmp_path: Path) -> None:
    """World size 2 (DDP, gloo, CPU): each rank trains on its own rows of every global step,
    not re-sharded by Lightning, and a fit resumed from a checkpoint continues exactly."""
    torchvision_importable()
    pytest.importorskip("lightning.pytorch")
    cfg = _cfg(tmp_path, batch=BFD)
    two_ranks("lightning_dist_worker.py", tmp_path)
    got = [json.loads((tmp_path / "run" / f"result{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        mine = [b["input_ids"].reshape(-1).tolist()
                for b in MixbatchDataLoader(cfg, rank=r, world_size=2, max_steps=6)]
        assert got[r]["straight"] == mine  # this rank's rows of steps 0..5, nothing else
        assert got[r]["head"] + got[r]["tail"] == mine
        assert got[r]["weight_gap"] < 1e-6
    assert got[0]["weights"] == pytest.approx(got[1]["weights"], rel=1e-9)  # one DDP model
    a, b = (torch.tensor(g["straight"]) for g in got)
    assert not torch.equal(a, b)  # the ranks read different rows


def test_lightning_batch_sizes_are_per_device_and_must_agree(tmp_path: Path) -> None:
    """Lightning accumulates loader steps: accumulate_grad_batches must be batch.grad_accum."""
    torchvision_importable()
    pl = pytest.importorskip("lightning.pytorch")
    from mixbatch.errors import ConfigError
    from mixbatch.integrations import lightning as mbl

    cfg = _cfg(tmp_path, batch={**BFD, "batch_size": 8, "grad_accum": 2})
    dm = mbl.MixbatchDataModule(cfg)
    assert dm.micro_batch_size(1) == 4 and dm.micro_batch_size(4) == 1
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    class _Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lm = TinyLM()

        def training_step(self, batch: dict[str, Any], idx: int) -> torch.Tensor:
            return self.lm(batch)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ConfigError, match=r"accumulate_grad_batches\) = 1 and batch\.grad_accum "
                                          r"= 2 disagree"):
        trainer.fit(_Module(), datamodule=dm)
