"""The mixing record: what a mixing transform did to each sample of a batch.

Every transform of :mod:`mixbatch.mixup` returns its mixed tensor together with a
:class:`MixRecord`. Row ``i`` of the output is ``lam[i]`` parts sample ``i`` and ``1 - lam[i]``
parts sample ``index[i]``: blended for MixUp, or with the box ``box[i]`` pasted from the partner
for CutMix (``lam`` is then the share of the area that stayed). The losses read the record
instead of re-deriving pairs, and the batch pipeline carries it as plain tensors
(:meth:`MixRecord.to_batch`), so a resumed run sees the same record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mixbatch.errors import DataError

__all__ = ["RECORD_KEYS", "MixRecord"]

# names under which a record travels in a batch dict (prefix + field)
RECORD_KEYS = ("lam", "index", "box", "cutmix")


@dataclass(frozen=True)
class MixRecord:
    """Per-sample mixing parameters of one batch.

    Attributes:
        lam: float (B,), the weight of the sample's own content (1: untouched).
        index: int64 (B,), the partner each row was mixed with.
        box: int64 (B, 4), ``(y1, y2, x1, x2)`` half-open CutMix box per row (zeros when none);
            for 1-D CutMix ``y1, y2 = 0, 1`` and ``x`` runs along the last axis.
        cutmix: bool (B,), whether the row was mixed by CutMix (else MixUp, or untouched).
    """

    lam: torch.Tensor
    index: torch.Tensor
    box: torch.Tensor
    cutmix: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.lam.shape[0])

    @property
    def mixed(self) -> torch.Tensor:
        """bool (B,): rows whose content changed (lam < 1 and a partner other than itself)."""
        own = self.index == torch.arange(self.batch_size, device=self.index.device)
        return (self.lam < 1) & ~own

    @classmethod
    def identity(cls, batch_size: int, device: torch.device | str | None = None) -> MixRecord:
        """The record of a batch left as it is (lam = 1, every row its own partner)."""
        return cls(
            lam=torch.ones(batch_size, device=device),
            index=torch.arange(batch_size, device=device),
            box=torch.zeros(batch_size, 4, dtype=torch.long, device=device),
            cutmix=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def to(self, device: torch.device | str) -> MixRecord:
        return MixRecord(self.lam.to(device), self.index.to(device), self.box.to(device),
                         self.cutmix.to(device))

    def to_batch(self, prefix: str = "mix_") -> dict[str, torch.Tensor]:
        """The record as batch entries ``{prefix + field: tensor}``."""
        return {prefix + k: getattr(self, k) for k in RECORD_KEYS}

    @classmethod
    def from_batch(cls, batch: Mapping[str, torch.Tensor], prefix: str = "mix_") -> MixRecord:
        """Read a record written by :meth:`to_batch`; a missing entry is a :class:`DataError`."""
        missing = [prefix + k for k in RECORD_KEYS if prefix + k not in batch]
        if missing:
            raise DataError(f"batch: no mixing record (missing {', '.join(missing)}); "
                            f"was the batch passed through BatchMixer?")
        return cls(**{k: batch[prefix + k] for k in RECORD_KEYS})
