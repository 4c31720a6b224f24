"""Small proxy language models for offline mixture search (CPU-friendly, GPU-ready).

``train_proxy(cfg, ProxyConfig.demo(), weights={...})`` trains one proxy on one mixture and
returns its validation loss per source on the held-out documents; ``ProxyLM`` is the model and
``per_source_mean`` turns per-token losses into per-source means. Needs torch.
"""

from mixbatch.proxy.model import MlpKind, ModelConfig, PositionKind, ProxyLM, ProxyOutput
from mixbatch.proxy.train import Device, ProxyConfig, ProxyResult, Schedule, lr_at, train_proxy
from mixbatch.torch.feedback import per_source_mean

__all__ = [
    "Device",
    "MlpKind",
    "ModelConfig",
    "PositionKind",
    "ProxyConfig",
    "ProxyLM",
    "ProxyOutput",
    "ProxyResult",
    "Schedule",
    "lr_at",
    "per_source_mean",
    "train_proxy",
]
