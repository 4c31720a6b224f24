"""DoReMi's reference model: trained first on the uniform mixture, cached in the run folder.

DoReMi (Xie et al. 2023, Algorithm 1, step 1) trains a reference model on a reference mixture
(uniform in the paper's runs) and then steers the proxy by each domain's excess loss over it.
:func:`reference_model` returns that model, frozen:

- ``reference: PATH`` in ``mixture.policy`` loads it: a plain state dict, a dict with a
  ``model`` entry (an online run's ``checkpoint.pt``), or a reference cache file;
- otherwise :func:`mixbatch.proxy.train_proxy` trains it on the uniform mixture over the same
  sources, with the run's proxy shape, optimiser and seed for ``reference_steps`` steps, and it
  is cached as ``RUN_DIR/reference.pt`` together with a key of everything it depends on; a
  later run in the same folder with the same key loads it instead of training again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixbatch.atomic import json_digest
from mixbatch.config import Config
from mixbatch.errors import ConfigError
from mixbatch.online.checkpoint import save_torch
from mixbatch.proxy.model import ProxyLM
from mixbatch.proxy.settings import ProxyConfig
from mixbatch.proxy.train import train_proxy

__all__ = ["REFERENCE_FILE", "config_key", "load_model_state", "reference_model"]

REFERENCE_FILE = "reference.pt"


def config_key(cfg: Config) -> dict[str, Any]:
    """The parts of the config a model trained on it depends on (the policy left out)."""
    data = cfg.model_dump(mode="json")
    data["mixture"].pop("policy", None)
    return data


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from ``path``: plain, or under a ``model`` key."""
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"reference: {p}: file not found") from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise ConfigError(f"reference: {p}: not a torch model state ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"reference: {p}: not a model state dict")
    return obj


def reference_model(cfg: Config, proxy: ProxyConfig, mcfg: Any, steps: int, path: str | None,
                    run_dir: Path | None, device: torch.device,
                    log: Any = None) -> tuple[ProxyLM, int]:
    """The frozen reference model (eval mode, on ``device``) and the training tokens spent on it
    in this call (0 when loaded)."""
    spent = 0
    if path is not None:
        state = load_model_state(path)
    else:
        ref_proxy = proxy.model_copy(update={"steps": steps, "eval_every": None})
        key = {"config": config_key(cfg), "proxy": ref_proxy.model_dump(mode="json"),
               "mixture": "uniform"}
        cache = None if run_dir is None else run_dir / REFERENCE_FILE
        state = None
        if cache is not None and cache.exists():
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if isinstance(saved, dict) and saved.get("key") == json_digest(key):
                state = saved["model"]
        if state is None:
            if log is not None:
                log(f"doremi: training the reference model on the uniform mixture ({steps} steps)")
            names = list(cfg.sources)
            r = train_proxy(cfg, ref_proxy, weights={n: 1.0 for n in names})
            state, spent = r.state, r.train_tokens
            if cache is not None:
                save_torch({"key": json_digest(key), "model": state, "tokens": spent}, cache)
    model = ProxyLM(mcfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"reference: the model state does not fit this proxy's shape ({e})"
                          ) from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, spent
