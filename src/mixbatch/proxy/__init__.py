"""Small proxy language models for offline mixture search (CPU-friendly, GPU-ready).

``train_proxy(cfg, ProxyConfig.demo(), weights={...})`` trains one proxy on one mixture and
returns its validation loss per source on the held-out documents; ``Trainer`` is the one
training loop every proxy run drives (online policies add hooks); ``ProxyLM`` is the model and
``per_source_mean`` turns per-token losses into per-source means. Needs torch.
"""

from mixbatch.proxy.model import MlpKind, ModelConfig, PositionKind, ProxyLM, ProxyOutput
from mixbatch.proxy.settings import Device, ProxyConfig, Schedule, lr_at
from mixbatch.proxy.train import ProxyResult, train_proxy
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from mixbatch.torch.feedback import per_source_mean

__all__ = ["Device", "Hooks", "MlpKind", "ModelConfig", "PositionKind", "ProxyConfig", "ProxyLM",
           "ProxyOutput", "ProxyResult", "Schedule", "Step", "Trainer", "lr_at",
           "per_source_mean", "train_proxy"]
