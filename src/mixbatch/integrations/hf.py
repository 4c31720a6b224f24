"""Hugging Face: batches that ``model(**batch)`` reads correctly, and exact resume in ``Trainer``.

**The batch format** (:func:`to_hf`; ``batch_format="hf"`` of
:class:`mixbatch.torch.MixbatchDataLoader` and :class:`mixbatch.torch.MixbatchDataset`).
A packed row holds several documents. A Hugging Face causal LM keeps them apart in one of
two ways: flash attention reads ``cu_seq_lens_q/k`` and
``max_length_q/k`` (the varlen kernel's boundaries), while eager and SDPA attention build a
block-diagonal mask from ``position_ids`` that restart at every document
(``transformers.masking_utils.find_packed_sequence_indices``). That second path is taken only
when the forward call has no cache: with the default ``use_cache=True`` of most configs, the
model creates a cache and the mask is plain causal, so tokens attend across documents while the
positions restart (a wrong loss, silently). The ``"hf"`` format therefore carries
``use_cache=False``, which a causal LM's ``forward`` accepts, and nothing a model would ignore or
misread: ``input_ids``, ``labels`` (-100 at padding and at every document's first position: no
position is trained to predict across a boundary once the model shifts them),
``position_ids``, ``cu_seq_lens_q``, ``cu_seq_lens_k`` (int32, the same tensor),
``max_length_q``, ``max_length_k`` (ints) and ``use_cache``. The names are those of
``transformers.DataCollatorWithFlattening`` (``return_flash_attn_kwargs=True``); the rows stay
``(R, L)`` (boundaries over the flattened ``R·L`` positions, as the varlen kernel reads them),
so SDPA builds ``R`` masks of ``L²`` rather than one of ``(R·L)²``.

**Trainer** (:class:`HFDataset`, :class:`MixbatchCallback`, :class:`MixbatchTrainer`). The
dataset is :class:`mixbatch.torch.MixbatchDataset` in the ``"hf"`` format; it remembers the
loader state after each of its last batches. The callback saves the state of the batches the
model consumed (not of those the data loader fetched ahead) into the checkpoint's
``trainer_state.json`` (Trainer's ``stateful_callbacks``) and loads it back at
``train(resume_from_checkpoint=...)``; the Trainer must not skip batches itself
(``ignore_data_skip=True``). :class:`MixbatchTrainer` hands the dataset to a plain
``DataLoader`` (one batch per item, no collation) instead of Accelerate's sharding wrapper, so
mixbatch's own rank split stands: every rank plans the global stream and reads its rows.
Hugging Face's batch sizes are per device: ``per_device_train_batch_size`` must equal
mixbatch's rows per rank (``batch.micro_batch_size``, or the global batch over world size and
accumulation) and ``gradient_accumulation_steps`` must equal ``batch.grad_accum``; the trainer
refuses a pair that disagrees, naming both (under a ``batch_size`` schedule the per-device
batch changes and only the accumulation is checked).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from mixbatch.config import Config
from mixbatch.errors import ConfigError, StateError
from mixbatch.integrations.batches import StatefulBatches, check_stack_batch

# MixbatchCallback and MixbatchTrainer are built on first access (module __getattr__)
__all__ = ["HF_FIELDS", "HFDataset", "collate_one", "hf_batches", "to_hf", "unpack"]

#: the mixbatch fields the ``"hf"`` format is made from
HF_FIELDS = ("input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen")
#: keys of a batch in the ``"hf"`` format
HF_KEYS = ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
           "max_length_q", "max_length_k", "use_cache")


def to_hf(batch: dict[str, Any]) -> dict[str, Any]:
    """A mixbatch batch (tensors, default fields) in Hugging Face's names; see the module
    docstring. Keys other than :data:`HF_FIELDS` (``step``, ``source_ids``, ...) are left out:
    a model would reject or silently ignore them."""
    missing = [k for k in HF_FIELDS if k not in batch]
    if missing:
        raise ConfigError(f"batch_format 'hf': the batch has no {', '.join(missing)} "
                          f"(ask for fields {', '.join(HF_FIELDS)})")
    cu = torch.as_tensor(batch["cu_seqlens"]).to(torch.int32)
    longest = int(batch["max_seqlen"])
    return {
        "input_ids": torch.as_tensor(batch["input_ids"]),
        "labels": torch.as_tensor(batch["labels"]),
        "position_ids": torch.as_tensor(batch["position_ids"]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "use_cache": False,
    }


def unpack(batch: dict[str, Any], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The same documents as a padded batch, one segment per row (``attention_mask`` marks the
    real tokens, ``labels`` -100 on padding): what a model sees without packing. For tests and
    for checking a model's packed loss against its unpacked one."""
    ids = torch.as_tensor(batch["input_ids"]).reshape(-1)
    labels = torch.as_tensor(batch["labels"]).reshape(-1)
    cu = torch.as_tensor(batch["cu_seq_lens_q" if "cu_seq_lens_q" in batch else "cu_seqlens"])
    cu = cu.to(torch.int64)
    spans = [(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
             if b > a and bool((labels[a + 1:b] != -100).any())]  # padding runs train nothing
    width = max(b - a for a, b in spans)
    out_ids = torch.full((len(spans), width), pad_id, dtype=torch.int64)
    out_labels = torch.full((len(spans), width), -100, dtype=torch.int64)
    mask = torch.zeros((len(spans), width), dtype=torch.int64)
    for r, (a, b) in enumerate(spans):
        out_ids[r, :b - a] = ids[a:b]
        out_labels[r, :b - a] = labels[a:b]
        mask[r, :b - a] = 1
    return {"input_ids": out_ids, "labels": out_labels, "attention_mask": mask}


def collate_one(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` for a ``DataLoader`` with ``batch_size=1`` over a dataset of whole batches."""
    if len(items) != 1:
        raise ConfigError(f"collate_one: each item is a whole batch; use batch_size=1 "
                          f"(got {len(items)} items)")
    return items[0]


class HFDataset(StatefulBatches):
    """:class:`~mixbatch.integrations.batches.StatefulBatches` in the ``"hf"`` format (for
    ``Trainer``: the callback asks it for the state of the batches consumed)."""

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None,
                 state: dict[str, Any] | None = None, max_steps: int | None = None,
                 keep: int = 64) -> None:
        super().__init__(cfg, rank, world_size, state=state, max_steps=max_steps,
                         batch_format="hf", keep=keep)


def _callback_class() -> type:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class MixbatchCallback(TrainerCallback, ExportableState):
        """Saves the state of the batches the model consumed with every Trainer checkpoint and
        restores it at ``train(resume_from_checkpoint=...)`` (see the module docstring)."""

        def __init__(self, dataset: HFDataset | None = None) -> None:
            self.dataset = dataset
            self.loader_state: dict[str, Any] | None = None
            self._origin: tuple[int, int] = (0, 0)  # (trainer step, loader step) at train start

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.dataset is None:
                raise ConfigError("MixbatchCallback: no dataset (restore_callback_states_from_"
                                  "checkpoint rebuilt it; leave that setting off)")
            if not args.ignore_data_skip:
                raise ConfigError("MixbatchCallback: set TrainingArguments(ignore_data_skip=True);"
                                  " the loader resumes at its exact state, skipping again would"
                                  " drop batches")
            saved = (state.stateful_callbacks or {}).get(type(self).__name__)
            if state.global_step > 0:
                if not isinstance(saved, dict) or "loader_state" not in saved.get("attributes", {}):
                    raise StateError(f"MixbatchCallback: the checkpoint at step {state.global_step}"
                                     " holds no mixbatch loader state")
                self.loader_state = saved["attributes"]["loader_state"]
                self.dataset.load_state_dict(self.loader_state)
            else:
                self.loader_state = copy.deepcopy(self.dataset.start)
            self._origin = (state.global_step, self.dataset.start_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            assert self.dataset is not None
            done = (state.global_step - self._origin[0]) * args.gradient_accumulation_steps
            self.loader_state = self.dataset.state_after(self._origin[1] + done - 1)

        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": {"loader_state": self.loader_state}}

    return MixbatchCallback


def _trainer_class() -> type:
    from transformers import Trainer

    class MixbatchTrainer(Trainer):
        """``transformers.Trainer`` over an :class:`HFDataset`: adds a :class:`MixbatchCallback`
        and feeds the dataset through a plain ``DataLoader`` (no Accelerate sharding: each rank
        reads its own rows of the global stream)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not isinstance(self.train_dataset, HFDataset):
                raise ConfigError("MixbatchTrainer: train_dataset must be a "
                                  "mixbatch.integrations.hf.HFDataset")
            a = self.args  # Hugging Face's batch size is per device: it must be mixbatch's
            check_stack_batch(self.train_dataset.inner.cfg, a.world_size,
                              a.gradient_accumulation_steps, a.per_device_train_batch_size,
                              ("TrainingArguments.gradient_accumulation_steps",
                               "TrainingArguments.per_device_train_batch_size"))
            self.add_callback(_lazy("MixbatchCallback")(self.train_dataset))

        def get_train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_dataset, batch_size=None, num_workers=0)

    return MixbatchTrainer


_LAZY = {"MixbatchCallback": _callback_class, "MixbatchTrainer": _trainer_class}
_BUILT: dict[str, type] = {}


def _lazy(name: str) -> type:
    """The class ``name``, built at first use (this module imports without transformers)."""
    if name not in _BUILT:
        _BUILT[name] = _LAZY[name]()
    return _BUILT[name]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hf_batches(batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """:func:`to_hf` over any iterable of batches (a ``MixbatchDataLoader``, say)."""
    for b in batches:
        yield to_hf(b)
