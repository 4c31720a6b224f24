"""Apply the config's ``mixup:`` section to loader batches, deterministically per step.

:class:`BatchMixer` draws the record of step ``n`` from ``(seed, n)`` alone
(:func:`~mixbatch.mixup.sampling.rng_for`), so a resumed run mixes step ``n`` exactly as an
uninterrupted one did, on any device and with any number of workers. The record travels in the
batch (``mix_lam``, ``mix_index``, ``mix_box``, ``mix_cutmix``), and soft targets go to
``mix_target`` when ``target`` is set. Float tensors are mixed directly; integer tensors (token
ids) cannot be blended, so they are left as they are and the record tells the model which rows
to mix at the embedding level (:func:`~mixbatch.mixup.transforms.mix_features` on the
embeddings, rows ``mix_index``, weights ``mix_lam``). With ``level: embedding`` no tensor is
mixed at all and only the record is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mixbatch.errors import ConfigError, DataError
from mixbatch.mixup.record import MixRecord
from mixbatch.mixup.sampling import draw_record, rng_for
from mixbatch.mixup.spec import MixLevel, MixupSpec
from mixbatch.mixup.targets import mix_targets
from mixbatch.mixup.transforms import apply_record

__all__ = ["BatchMixer"]


class BatchMixer:
    """``BatchMixer(cfg.mixup, seed)(batch, step) -> batch`` with the mixing record added."""

    def __init__(self, spec: MixupSpec | Mapping[str, Any], seed: int = 0, prefix: str = "mix_") -> None:
        if not isinstance(spec, MixupSpec):
            from pydantic import ValidationError

            from mixbatch.config import format_validation_error

            try:
                spec = MixupSpec.model_validate(dict(spec))
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, "mixup")) from None
        self.spec = spec
        self.seed = int(seed)
        self.prefix = prefix
        self.schedule = spec.schedule.build()

    def record(self, batch_size: int, size: tuple[int, ...] | None, step: int) -> MixRecord:
        """The record of step ``step`` (a pure function of seed, step and the spec)."""
        s = self.spec
        prob = s.prob * self.schedule.prob(step)
        if prob <= 0:
            return MixRecord.identity(batch_size)
        scale = self.schedule.alpha_scale(step)
        return draw_record(
            batch_size, size, rng_for(self.seed, step),
            mixup_alpha=s.mixup_alpha * scale, cutmix_alpha=s.cutmix_alpha * scale,
            cutmix_minmax=s.cutmix_minmax, prob=prob, switch_prob=s.switch_prob, mode=s.mode,
            correct_lam=s.correct_lam, pairing=s.pairing, box_rule=s.box_rule)

    def _keys(self, batch: Mapping[str, Any]) -> list[str]:
        s = self.spec
        if s.keys is not None:
            for k in s.keys:
                if k not in batch:
                    raise DataError(f"batch: mixup.keys names {k!r}, which the batch lacks "
                                    f"(keys: {', '.join(sorted(map(str, batch)))})")
                if not isinstance(batch[k], torch.Tensor) or not batch[k].is_floating_point():
                    raise DataError(f"batch: mixup.keys names {k!r}, which is not a float tensor; "
                                    f"token ids are mixed at the embedding level (level: embedding)")
            return list(s.keys)
        return [k for k, v in batch.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim >= 1
                and k != s.target and not str(k).startswith(self.prefix)]

    def __call__(self, batch: Mapping[str, Any], step: int) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            raise DataError(f"batch: expected a dict of tensors, got {type(batch).__name__}")
        s = self.spec
        keys = self._keys(batch) if s.level is MixLevel.INPUT else []
        # the rows: those of the mixed tensors and the labels; for token batches, of the ids
        # (packed batches also carry per-document tensors such as cu_seqlens, left as they are)
        named = [*keys, *([s.target] if s.target is not None and s.target in batch else [])]
        if not named:
            named = [k for k in ("input_ids", "tokens") if isinstance(batch.get(k), torch.Tensor)][:1] or [
                next((k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim >= 1), "")]
        if not named[0]:
            raise DataError("batch: no tensor with a batch axis to mix")
        sizes = {k: int(batch[k].shape[0]) for k in named}
        if len(set(sizes.values())) > 1:
            raise DataError(f"batch: tensors disagree on the batch size ({sizes})")
        b = sizes[named[0]]
        size = None
        if s.cutmix_alpha > 0 or s.cutmix_minmax is not None:
            if not keys:
                raise DataError("batch: CutMix needs a float tensor to cut (none in the batch); "
                                "token batches take MixUp at the embedding level")
            x0 = batch[keys[0]]
            if x0.ndim < s.spatial_dims + 1:
                raise DataError(f"batch: {keys[0]!r} has shape {tuple(x0.shape)}, too few axes for "
                                f"CutMix over {s.spatial_dims}")
            size = tuple(int(d) for d in x0.shape[-s.spatial_dims:])
        record = self.record(b, size, step)
        out = dict(batch)
        for k in keys:
            out[k] = apply_record(batch[k], record, s.spatial_dims or None)
        if s.target is not None:
            if s.target not in batch:
                raise DataError(f"batch: mixup.target names {s.target!r}, which the batch lacks")
            out[self.prefix + "target"] = mix_targets(batch[s.target], record, s.num_classes,
                                                      s.label_smoothing)
        dev = next(v.device for v in batch.values() if isinstance(v, torch.Tensor))
        out.update(record.to(dev).to_batch(self.prefix))
        return out
