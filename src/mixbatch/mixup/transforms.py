"""Batch-level MixUp and CutMix on any tensor, on CPU or GPU.

Two front ends share one core (:func:`apply_record`):

- :class:`Mixup` takes timm's constructor arguments and is called ``(x, target)`` like
  ``timm.data.Mixup``: a timm user switches by changing the import. It adds ``pairing``,
  ``box_rule`` and ``seed``; the record of the last call is ``.last_record``.
- :class:`MixUp` and :class:`CutMix` behave like ``torchvision.transforms.v2.MixUp`` /
  ``CutMix`` (neighbour pairing, torchvision's box rule).

Formulas: MixUp ``x~ = lam x_i + (1 - lam) x_j`` ("mixup: Beyond Empirical Risk Minimization",
eq. 1); CutMix ``x~ = M * x_i + (1 - M) * x_j`` with M zero inside the box ("CutMix:
Regularization Strategy to Train Strong Classifiers with Localizable Features", eq. 1).
Unlike timm, the input is not modified in place, and ``elem``/``pair`` modes run without a
Python loop over rows: float32/64 CPU batches go through one compiled pass
(:mod:`mixbatch.mixup.kernels`), other batches through masks built for a block of rows at once
and one ``lerp`` per block (see :func:`apply_record`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mixbatch.errors import ConfigError, DataError, StateError
from mixbatch.mixup.kernels import check_bounds, fits_kernel, mix_rows
from mixbatch.mixup.record import MixRecord
from mixbatch.mixup.sampling import BoxRule, MixMode, draw_record
from mixbatch.mixup.targets import check_labels, mix_targets

__all__ = ["CutMix", "MixUp", "Mixup", "apply_record", "cutmix", "mix_attention_mask", "mix_features",
           "mixup"]


def _check_batch(x: torch.Tensor, record: MixRecord, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] != record.batch_size:
        raise DataError(f"{name}: batch of {x.shape[0] if x.ndim else 0} rows does not match the "
                        f"record's {record.batch_size}")


def mix_features(h: torch.Tensor, record: MixRecord) -> torch.Tensor:
    """``lam_i h_i + (1 - lam_i) h_index[i]`` for a tensor of any shape ``(B, ...)``.

    For hidden states, embeddings (token embeddings ``(B, T, D)``: every position is mixed with
    the partner's same position), spectrograms or time-series windows. CutMix rows are blended
    with their area share ``lam``; use :func:`apply_record` to paste boxes instead.
    """
    _check_batch(h, record, "h")
    if not h.is_floating_point():
        raise DataError(f"h: {h.dtype} values cannot be blended; mix a float tensor (e.g. the embeddings)")
    rec = record.to(h.device)
    w = rec.lam.to(h.dtype).view(-1, *([1] * (h.ndim - 1)))
    return h * w + h.index_select(0, rec.index) * (1.0 - w)


def mix_attention_mask(mask: torch.Tensor, record: MixRecord) -> torch.Tensor:
    """The attention / padding mask of rows mixed at the embedding level: a position is valid
    when it is valid in the row or, for a mixed row, in its partner (``mask | mask[index]``)."""
    _check_batch(mask, record, "mask")
    rec = record.to(mask.device)
    partner = mask.index_select(0, rec.index)
    mixed = rec.mixed.view(-1, *([1] * (mask.ndim - 1)))
    if mask.dtype == torch.bool:
        return mask | (partner & mixed)
    return torch.where(mixed, torch.maximum(mask, partner), mask)


#: bytes of partner rows gathered at a time on CPU: the gathered block stays in cache while it is
#: blended, so each element is read twice and written once from memory (as timm's row loop,
#: minus its second copy of the batch); a GPU takes the whole batch in one pass
_BLOCK_BYTES = 1 << 21


def _box_mask(boxes: torch.Tensor, cut: torch.Tensor, size: tuple[int, int], ndim: int,
              dims: int) -> torch.Tensor:
    """bool ``(k, 1.., H, W)``: inside the CutMix box of each CutMix row (all False elsewhere)."""
    h, w = size
    dev = boxes.device
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    my = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 1:2]) & cut[:, None]
    mx = (xs >= boxes[:, 2:3]) & (xs < boxes[:, 3:4])
    inside = my[:, :, None] & mx[:, None, :]
    k = boxes.shape[0]
    if dims == 1:
        return inside[:, 0, :].view(k, *([1] * (ndim - 2)), w)
    return inside.view(k, *([1] * (ndim - 3)), h, w)


def _blend_block(x: torch.Tensor, partner: torch.Tensor, w_row: torch.Tensor, cut: torch.Tensor | None,
                 boxes: torch.Tensor | None, dims: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """One block of rows: ``lerp(partner, x, W)``, W zero inside the CutMix boxes."""
    kw = {} if out is None else {"out": out}
    if cut is None:
        weight = w_row.view(-1, *([1] * (x.ndim - 1)))
    else:
        size = (1, x.shape[-1]) if dims == 1 else (x.shape[-2], x.shape[-1])
        inside = _box_mask(boxes, cut, size, x.ndim, dims)
        if not x.is_floating_point():
            return torch.where(inside, partner, x, **kw)
        weight = torch.where(inside, 0.0, w_row.view(-1, *([1] * (inside.ndim - 1))))
    return torch.lerp(partner, x, weight, **kw)


def _blend_rows(x: torch.Tensor, index: torch.Tensor, w_row: torch.Tensor, cut: torch.Tensor | None,
                boxes: torch.Tensor, dims: int) -> torch.Tensor:
    """``out[r] = x[index[r]] + W[r] (x[r] - x[index[r]])`` for all rows, in cache-sized blocks.

    ``W`` is ``w_row[r]`` (lam on MixUp rows, 1 on untouched rows) except inside the box of a
    CutMix row, where it is 0. Each block of rows is handled by whole-tensor ops (one gather, one
    mask, one ``lerp``); only the blocking loop is in Python.
    """
    dev = x.device
    b = x.shape[0]
    w_dev = w_row.to(device=dev, dtype=x.dtype if x.is_floating_point() else torch.float32,
                     non_blocking=True)
    if cut is not None:
        boxes = boxes.to(dev, non_blocking=True)
        cut = cut.to(dev, non_blocking=True)
    if x.requires_grad and torch.is_grad_enabled():
        # autograd does not flow through out=: one block, a new tensor
        return _blend_block(x, x.index_select(0, index), w_dev, cut, boxes, dims)
    out = torch.empty_like(x)
    row_bytes = max(1, x[0].numel() * x.element_size())
    step = b if dev.type != "cpu" else max(2, _BLOCK_BYTES // row_bytes)
    for s in range(0, b, step):
        e = min(b, s + step)
        _blend_block(x[s:e], x.index_select(0, index[s:e]), w_dev[s:e], None if cut is None else cut[s:e],
                     None if cut is None else boxes[s:e], dims, out=out[s:e])
    return out


def apply_record(x: torch.Tensor, record: MixRecord, spatial_dims: int | None = None) -> torch.Tensor:
    """Mix ``x`` as ``record`` says: blend MixUp rows, paste CutMix boxes from the partner.

    Boxes cut the last ``spatial_dims`` axes (default: 2, or 1 for ``(B, T)`` inputs). A new
    tensor is returned, written in one pass: float32/64 CPU batches by the compiled kernel of
    :mod:`mixbatch.mixup.kernels` (a CutMix row copies only its box from the partner), other
    batches by one ``lerp`` of each row with its gathered partner (blocked to the cache on
    CPU, the whole batch at once on a GPU). A batch-wide CutMix box copies the batch and pastes
    the box; an untouched batch (every lam = 1) is returned as it is. The decisions are taken
    on the small CPU record, so a GPU batch is never synced.
    """
    _check_batch(x, record)
    rec = record.to("cpu") if record.lam.device.type != "cpu" else record
    active = rec.lam < 1
    if not bool(active.any()):
        return x
    cut = rec.cutmix & active
    blend = ~rec.cutmix & active
    any_blend, any_cut = bool(blend.any()), bool(cut.any())
    if any_blend and not x.is_floating_point():
        raise DataError(f"x: {x.dtype} values cannot be blended by MixUp; convert to float first "
                        f"or use CutMix only")
    dev = x.device
    index = rec.index.to(dev, non_blocking=True)
    dims = spatial_dims if spatial_dims is not None else (2 if x.ndim >= 3 else 1)
    if any_cut and (dims not in (1, 2) or x.ndim < dims + 1):
        raise DataError(f"x: CutMix over {dims} axes needs at least {dims + 1} dims, "
                        f"got shape {tuple(x.shape)}")
    size = ((1, x.shape[-1]) if dims == 1 else (x.shape[-2], x.shape[-1])) if any_cut else (1, 1)
    check_bounds(rec.index.numpy(), rec.box[cut].numpy(), x.shape[0], *size)
    if any_cut and not any_blend and bool(cut.all()) and bool((rec.box == rec.box[0]).all()):
        # one box for the whole batch: copy the batch, then paste only the box
        y1, y2, x1, x2 = (int(v) for v in rec.box[0])
        out = x.clone()
        if dims == 1:
            out[..., x1:x2] = x[..., x1:x2].index_select(0, index)
        else:
            out[..., y1:y2, x1:x2] = x[..., y1:y2, x1:x2].index_select(0, index)
        return out
    w_row = torch.where(blend, rec.lam.to(torch.float64), torch.ones((), dtype=torch.float64))
    if fits_kernel(x):
        return mix_rows(x, rec.index, w_row, cut, rec.box, dims)
    return _blend_rows(x, index, w_row, cut if any_cut else None, rec.box, dims)


def _size(x: torch.Tensor, spatial_dims: int) -> tuple[int, ...] | None:
    if spatial_dims == 0:
        return None
    if spatial_dims not in (1, 2) or x.ndim < spatial_dims + 1:
        raise DataError(f"x: CutMix over {spatial_dims} axes needs at least {spatial_dims + 1} dims, "
                        f"got shape {tuple(x.shape)}")
    return tuple(int(s) for s in x.shape[-spatial_dims:])


class Mixup:
    """MixUp / CutMix with timm's options; ``Mixup(...)(x, target) -> (x_mixed, soft_target)``.

    Arguments as ``timm.data.Mixup`` (same defaults as timm 1.0): ``mixup_alpha``,
    ``cutmix_alpha``, ``cutmix_minmax``, ``prob``, ``switch_prob``, ``mode`` (``batch`` |
    ``pair`` | ``elem``), ``correct_lam``, ``label_smoothing``, ``num_classes``,
    ``multi_label``. Added: ``pairing`` (``flip`` as timm, ``roll`` as torchvision,
    ``random``), ``box_rule`` (``timm`` | ``torchvision``), ``spatial_dims`` (2 for images and
    spectrograms, 1 for sequences, 0: MixUp only) and ``seed`` (a NumPy generator owned by this
    object; the same seed gives the same stream of records). Set ``mixup_enabled = False`` to
    switch mixing off, as with timm.
    """

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Sequence[float] | None = None, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = "batch", correct_lam: bool = True,
                 label_smoothing: float = 0.1, num_classes: int = 1000, multi_label: bool = False,
                 *, pairing: str = "flip", box_rule: str = "timm", spatial_dims: int = 2,
                 seed: int | None = None) -> None:
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 <= cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ConfigError(f"cutmix_minmax: expected (min, max) with 0 <= min < max <= 1, "
                                  f"got {cutmix_minmax}")
            cutmix_alpha = 1.0  # timm forces alpha 1 when the box sides are drawn from min/max
        if spatial_dims not in (0, 1, 2):
            raise ConfigError(f"spatial_dims: 0 (MixUp only), 1 or 2, got {spatial_dims}")
        if spatial_dims == 0 and cutmix_alpha > 0:
            raise ConfigError("cutmix_alpha: CutMix needs spatial axes; set spatial_dims to 1 or 2, "
                              "or cutmix_alpha to 0")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        self.mix_prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = MixMode(mode) if mode in {m.value for m in MixMode} else mode
        self.correct_lam = bool(correct_lam)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.pairing = pairing
        self.box_rule = box_rule
        self.spatial_dims = spatial_dims
        self.mixup_enabled = True
        self.rng = np.random.default_rng(seed)
        self.last_record: MixRecord | None = None
        # check every option once, now, with a dry draw on a throwaway generator
        draw_record(2, (4, 4) if spatial_dims == 2 else (4,) if spatial_dims == 1 else None,
                    np.random.default_rng(0), **self._options())

    def _options(self) -> dict:
        return dict(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha,
                    cutmix_minmax=self.cutmix_minmax, prob=self.mix_prob, switch_prob=self.switch_prob,
                    mode=self.mode, correct_lam=self.correct_lam, pairing=self.pairing,
                    box_rule=self.box_rule)

    def sample(self, x: torch.Tensor, rng: np.random.Generator | None = None) -> MixRecord:
        """Draw the record for batch ``x`` (from ``rng``, default this object's generator)."""
        if not self.mixup_enabled:
            return MixRecord.identity(x.shape[0])
        return draw_record(x.shape[0], _size(x, self.spatial_dims), rng or self.rng, **self._options())

    def mix(self, x: torch.Tensor, target: torch.Tensor,
            rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
        """``(x_mixed, soft_target, record)``."""
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise DataError(f"x: expected a batched tensor, got {type(x).__name__}")
        check_labels(target, x.shape[0], self.num_classes)
        record = self.sample(x, rng)
        out = apply_record(x, record, self.spatial_dims or None)
        y = mix_targets(target, record, self.num_classes, self.label_smoothing, self.multi_label,
                        dtype=x.dtype if x.is_floating_point() else torch.float32)
        self.last_record = record
        return out, y, record

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, y, _ = self.mix(x, target)
        return out, y

    def state_dict(self) -> dict:
        """The generator's position (JSON-safe): load it to continue the same stream of records."""
        return _rng_state(self.rng)

    def load_state_dict(self, state: dict) -> None:
        _load_rng_state(self.rng, state)


def _rng_state(rng: np.random.Generator) -> dict:
    return {"bit_generator": dict(rng.bit_generator.state)}


def _load_rng_state(rng: np.random.Generator, state: dict) -> None:
    try:
        rng.bit_generator.state = state["bit_generator"]
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"state: not a mixer state ({e})") from None


class _TorchvisionStyle:
    """Shared front end of :class:`MixUp` and :class:`CutMix` (torchvision v2 behaviour)."""

    _kind = "mixup"

    def __init__(self, *, alpha: float = 1.0, num_classes: int | None = None,
                 seed: int | None = None) -> None:
        if not np.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"alpha: must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)
        self.last_record: MixRecord | None = None

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise DataError(f"x: expected a batched tensor, got {type(x).__name__}")
        check_labels(labels, x.shape[0], self.num_classes, "labels")
        if labels.ndim == 1 and self.num_classes is None:
            raise ConfigError("num_classes: must be given when the labels are class ids")
        cut = self._kind == "cutmix"
        record = draw_record(x.shape[0], _size(x, 2) if cut else None, self.rng,
                             mixup_alpha=0.0 if cut else self.alpha, cutmix_alpha=self.alpha if cut else 0.0,
                             mode="batch", pairing="roll", box_rule="torchvision")
        self.last_record = record
        k = self.num_classes if labels.ndim == 1 else labels.shape[1]
        return apply_record(x, record), mix_targets(labels, record, k)

    def state_dict(self) -> dict:
        return _rng_state(self.rng)

    def load_state_dict(self, state: dict) -> None:
        _load_rng_state(self.rng, state)


class MixUp(_TorchvisionStyle):
    """MixUp as ``torchvision.transforms.v2.MixUp``: row i mixed with row i-1, one lam a batch."""

    _kind = "mixup"


class CutMix(_TorchvisionStyle):
    """CutMix as ``torchvision.transforms.v2.CutMix``: row i gets a box of row i-1."""

    _kind = "cutmix"


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, *, num_classes: int,
          seed: int | np.random.Generator | None = None, mode: str = "batch", pairing: str = "random",
          label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
    """One MixUp call: ``(x_mixed, soft_target, record)``; ``alpha`` must be > 0."""
    if not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    m = Mixup(alpha, 0.0, mode=mode, label_smoothing=label_smoothing, num_classes=num_classes,
              pairing=pairing, spatial_dims=0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return m.mix(x, target, rng)


def cutmix(x: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, *, num_classes: int,
           seed: int | np.random.Generator | None = None, mode: str = "batch", pairing: str = "random",
           spatial_dims: int = 2, label_smoothing: float = 0.0,
           box_rule: str = BoxRule.TIMM.value) -> tuple[torch.Tensor, torch.Tensor, MixRecord]:
    """One CutMix call: ``(x_mixed, soft_target, record)``; ``alpha`` must be > 0."""
    if not np.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    if spatial_dims not in (1, 2):
        raise ConfigError(f"spatial_dims: CutMix cuts 1 or 2 axes, got {spatial_dims}")
    m = Mixup(0.0, alpha, mode=mode, label_smoothing=label_smoothing, num_classes=num_classes,
              pairing=pairing, spatial_dims=spatial_dims, box_rule=box_rule)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return m.mix(x, target, rng)

