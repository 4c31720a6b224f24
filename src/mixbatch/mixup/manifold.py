"""Manifold Mixup: mix hidden states at a named module through a forward hook.

"Manifold Mixup: Better Representations by Interpolating Hidden States" (Verma et al., 2019),
eq. 2: pick a layer k uniformly from the eligible set S (the input counts as layer 0 when
``include_input``), run the network to k, mix ``g_k(x)`` as
``lam g_k(x_i) + (1 - lam) g_k(x_j)``, continue, and train on ``lam y_i + (1 - lam) y_j``.
Defaults follow the paper's CIFAR setting: alpha = 2.0, S = the given modules plus the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mixbatch.errors import ConfigError
from mixbatch.mixup.record import MixRecord
from mixbatch.mixup.sampling import draw_record
from mixbatch.mixup.targets import check_labels, mix_targets
from mixbatch.mixup.transforms import _load_rng_state, _rng_state, mix_features

__all__ = ["ManifoldMixup"]


class ManifoldMixup:
    """Run ``model`` on a batch with its hidden state mixed at one of ``layers``.

    ``ManifoldMixup(model, ["layer1", "layer2"], num_classes=10, seed=0)(x, y)`` returns
    ``(output, soft_target, record)`` and the name of the chosen layer is ``.last_layer``.
    A name that is not a submodule of ``model`` is a :class:`ConfigError` listing the real ones.
    The hook mixes the module's output (a tensor, or the first tensor of a tuple output).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, alpha: float = 2.0,
                 num_classes: int, include_input: bool = True, label_smoothing: float = 0.0,
                 pairing: str = "random", seed: int | None = None) -> None:
        modules = dict(model.named_modules())
        if isinstance(layers, str):
            layers = [layers]
        for name in layers:
            if name not in modules or name == "":
                known = [n for n in modules if n]
                shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                raise ConfigError(f"layers: {name!r} is not a module of {type(model).__name__} "
                                  f"(modules: {shown})")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ConfigError(f"alpha: must be > 0, got {alpha}")
        if not layers and not include_input:
            raise ConfigError("layers: give at least one module, or include_input=True")
        self.model = model
        self.layers = list(layers)
        self.choices: list[str | None] = ([None] if include_input else []) + self.layers
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.pairing = pairing
        self.rng = np.random.default_rng(seed)
        self._modules = modules
        self.last_layer: str | None = None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, *args: Any,
                 rng: np.random.Generator | None = None,
                 **kwargs: Any) -> tuple[Any, torch.Tensor, MixRecord]:
        rng = rng or self.rng
        check_labels(target, x.shape[0], self.num_classes)
        record = draw_record(x.shape[0], None, rng, mixup_alpha=self.alpha, cutmix_alpha=0.0,
                             mode="batch", pairing=self.pairing)
        layer = self.choices[int(rng.integers(len(self.choices)))]
        self.last_layer = layer
        y = mix_targets(target, record, self.num_classes, self.label_smoothing)
        if layer is None:
            return self.model(mix_features(x, record), *args, **kwargs), y, record

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                return mix_features(output, record)
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                return (mix_features(output[0], record), *output[1:])
            raise ConfigError(f"layers: module {layer!r} returns {type(output).__name__}, "
                              f"not a tensor that can be mixed")

        handle = self._modules[layer].register_forward_hook(hook)
        try:
            out = self.model(x, *args, **kwargs)
        finally:
            handle.remove()
        return out, y, record

    def state_dict(self) -> dict:
        """The generator's position (JSON-safe), for an exact resume."""
        return _rng_state(self.rng)

    def load_state_dict(self, state: dict) -> None:
        _load_rng_state(self.rng, state)
