"""Lightning: a ``LightningDataModule`` over mixbatch's stream, resumed exactly from checkpoints.

``MixbatchDataModule(cfg, batch_format="mixbatch" | "hf", fields=None, max_steps=None)`` feeds
:class:`~mixbatch.integrations.batches.StatefulBatches` through a plain ``DataLoader`` (one
whole batch per item, ``num_workers=0``). Lightning shards only map-style datasets (its
distributed sampler), so mixbatch's own rank split stands: every rank plans the global stream
and reads its rows (``batch.batch_size`` is the *global* rows per step; Lightning's batch size
is per device: :meth:`micro_batch_size`, and ``Trainer(accumulate_grad_batches)`` must equal
``batch.grad_accum``, refused naming both otherwise). Lightning saves a
datamodule's ``state_dict()`` in every checkpoint and loads it at ``fit(..., ckpt_path=...)``:
the state is that of the batches the fit loop *processed* (Lightning fetches one ahead), with
the count, so a resumed fit continues with the next batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.utils.data import DataLoader

from mixbatch.config import Config
from mixbatch.errors import StateError
from mixbatch.integrations.batches import StatefulBatches, check_stack_batch, per_device_rows


def _datamodule_class() -> type:
    import lightning.pytorch as pl

    class MixbatchDataModule(pl.LightningDataModule):
        """See the module docstring."""

        def __init__(self, cfg: Config, batch_format: str = "mixbatch",
                     fields: str | Iterable[str] | None = None, max_steps: int | None = None,
                     keep: int = 64) -> None:
            super().__init__()
            self.batches = StatefulBatches(cfg, max_steps=max_steps, fields=fields,
                                           batch_format=batch_format, keep=keep)
            self._origin = (0, 0)  # (batches processed, loader step) where this fit started

        def train_dataloader(self) -> DataLoader:
            trainer = self.trainer
            if trainer is not None:  # Lightning accumulates loader steps: they must agree
                check_stack_batch(self.batches.inner.cfg, trainer.world_size,
                                  trainer.accumulate_grad_batches, None,
                                  ("Trainer(accumulate_grad_batches)", ""))
            return DataLoader(self.batches, batch_size=None, num_workers=0)

        def micro_batch_size(self, world_size: int) -> int | None:
            """Rows of each rank's batch (Lightning's per-device batch size) at ``world_size``;
            None where a ``batch_size`` schedule or a token budget changes it."""
            return per_device_rows(self.batches.inner.cfg, world_size)

        def _processed(self) -> int:
            trainer = self.trainer
            if trainer is None:
                return self._origin[0]
            return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)

        def state_dict(self) -> dict[str, Any]:
            processed = self._processed()
            done = processed - self._origin[0]
            return {"loader": self.batches.state_after(self._origin[1] + done - 1),
                    "batches": processed}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if not isinstance(state_dict, dict) or "loader" not in state_dict:
                raise StateError("MixbatchDataModule: the checkpoint holds no mixbatch state")
            self.batches.load_state_dict(state_dict["loader"])
            self._origin = (int(state_dict["batches"]), self.batches.start_step)

    return MixbatchDataModule


_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> Any:  # built on first access: the module imports without lightning
    if name == "MixbatchDataModule":
        if name not in _BUILT:
            _BUILT[name] = _datamodule_class()
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
