"""Small proxy language models for mixture search (CPU-friendly, GPU-ready; needs torch):
``train_proxy(cfg, ProxyConfig.demo(), weights={...})`` trains one on one mixture and returns
its held-out loss per source; ``Trainer`` is the loop every proxy run drives through hooks.
"""

from mixbatch.proxy.model import MlpKind, ModelConfig, PositionKind, ProxyLM, ProxyOutput
from mixbatch.proxy.settings import Device, ProxyConfig, Schedule, lr_at
from mixbatch.proxy.train import ProxyResult, train_proxy
from mixbatch.proxy.trainer import Hooks, Step, Trainer
from mixbatch.torch.feedback import per_source_mean

__all__ = ["Device", "Hooks", "MlpKind", "ModelConfig", "PositionKind", "ProxyConfig", "ProxyLM",
           "ProxyOutput", "ProxyResult", "Schedule", "Step", "Trainer", "lr_at",
           "per_source_mean", "train_proxy"]
