"""DoReMi's reference model: trained first on the uniform mixture, cached in the run folder.

DoReMi (Xie et al. 2023, Algorithm 1, step 1) trains a reference model on a reference mixture
(uniform in the paper's runs), then steers the proxy by each domain's excess loss over it.
:func:`reference_model` loads it (``reference: PATH``: a state dict, a run's ``checkpoint.pt``)
or trains it with the run's proxy settings for ``reference_steps`` steps, cached as
``RUN_DIR/reference.pt`` under a key of everything it depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixbatch.atomic import json_digest
from mixbatch.config import Config
from mixbatch.errors import ConfigError
from mixbatch.online.checkpoint import load_torch, save_torch
from mixbatch.proxy.model import ProxyLM
from mixbatch.proxy.train import train_proxy
from mixbatch.proxy.trainer import Trainer

__all__ = ["REFERENCE_FILE", "config_key", "load_model_state", "reference_model"]

REFERENCE_FILE = "reference.pt"


def config_key(cfg: Config) -> dict[str, Any]:
    """The parts of the config a model trained on it depends on (the policy left out)."""
    data = cfg.model_dump(mode="json")
    data["mixture"].pop("policy", None)
    return data


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from ``path``: plain, or under a ``model`` key."""
    obj = load_torch(path, ConfigError, f"reference: {path}", "not a torch model state")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"reference: {path}: not a model state dict")
    return obj


def reference_model(t: Trainer, steps: int, path: str | None, run_dir: Path | None,
                    log: Callable[[str], None] | None = None) -> tuple[ProxyLM, int]:
    """The frozen reference model for the trainer's run (eval mode, on its device) and the
    training tokens spent on it in this call (0 when loaded)."""
    spent = 0
    if path is not None:
        state = load_model_state(path)
    else:
        ref_proxy = t.proxy.model_copy(update={"steps": steps, "eval_every": None})
        key = json_digest({"config": config_key(t.cfg), "proxy": ref_proxy.model_dump(mode="json"),
                           "mixture": "uniform"})
        cache = None if run_dir is None else run_dir / REFERENCE_FILE
        state = None
        if cache is not None and cache.exists():
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if isinstance(saved, dict) and saved.get("key") == key:
                state = saved["model"]
        if state is None:
            if log is not None:
                log(f"doremi: training the reference model on the uniform mixture ({steps} steps)")
            r = train_proxy(t.cfg, ref_proxy, weights={n: 1.0 for n in t.names})
            state, spent = r.state, r.train_tokens
            if cache is not None:
                save_torch({"key": key, "model": state, "tokens": spent}, cache)
    model = t.new_model()  # decoder-only or encoder-decoder, as the run
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"reference: the model state does not fit this proxy's shape ({e})"
                          ) from None
    model.to(t.device).eval().requires_grad_(False)
    return model, spent
