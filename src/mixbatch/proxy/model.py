"""A small decoder-only transformer for proxy runs: CPU-friendly, unchanged on GPU.

The shape follows RegMix's ``tinyllama_1M`` proxy (sail-sg/regmix,
``model_training/lit_gpt/config.py``: 2 layers, width 256, 8 heads, SwiGLU 512, RMSNorm, RoPE)
with one change that matters at proxy scale: input and output embeddings are tied, so a byte
vocabulary costs 258 x d parameters, not twice that.

Packed rows hold several documents. Attention never crosses a document boundary: the segments
of a row are read from ``position_ids`` (a new segment starts wherever the position is 0, as the
loader writes them), and ``scaled_dot_product_attention`` gets a block-diagonal causal mask.
Rotary angles use the same ``position_ids``, so every document starts at position 0.

A prefix LM ("UL2: Unifying Language Learning Paradigms", the S-denoiser and the decoder-only
layout of every denoiser): ``prefix_len`` (B,) gives each row a prefix of that many tokens over
which attention is bidirectional, causal after it: query ``i`` sees key ``j`` when
``j <= i`` or ``j < prefix_len`` (and both lie in one segment). ``prefix_len = 0`` is plain
causal attention.

Losses follow the Hugging Face convention: ``labels`` are the input tokens with ``-100`` where
nothing is predicted, and the model shifts (``logits[:, t]`` predicts ``labels[:, t + 1]``).
Per-token losses come back aligned with ``labels`` (column 0 is always 0, never counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "MlpKind",
    "ModelConfig",
    "PositionKind",
    "ProxyLM",
    "ProxyOutput",
    "attention_mask",
    "segment_ids",
    "shifted_token_losses",
]


class PositionKind(str, Enum):
    ROTARY = "rotary"
    LEARNED = "learned"


class MlpKind(str, Enum):
    SWIGLU = "swiglu"
    GELU = "gelu"


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape. ``seq_len`` is the context (only learned positions are bound to it).

    ``d_mlp`` defaults to ``4 * d_model`` for GELU and to ``8/3 * d_model`` rounded up to a
    multiple of 32 for SwiGLU (LLaMA's rule; the same parameter count as GELU's 4x).
    """

    vocab_size: int
    seq_len: int
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    d_mlp: int | None = None
    mlp: MlpKind = MlpKind.SWIGLU
    positions: PositionKind = PositionKind.ROTARY
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.positions == PositionKind.ROTARY and (self.d_model // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size, got "
                             f"{self.d_model // self.n_head} (d_model / n_head)")
        object.__setattr__(self, "mlp", MlpKind(self.mlp))
        object.__setattr__(self, "positions", PositionKind(self.positions))

    @property
    def hidden(self) -> int:
        if self.d_mlp is not None:
            return self.d_mlp
        if self.mlp == MlpKind.GELU:
            return 4 * self.d_model
        hidden = -(-8 * self.d_model // 3)  # ceil(8d / 3)
        return -(-hidden // 32) * 32

    def non_embedding_params(self) -> int:
        """Parameters outside the embeddings, by formula (what :meth:`ProxyLM.num_params` counts)."""
        d, h = self.d_model, self.hidden
        mlp = 3 * d * h if self.mlp == MlpKind.SWIGLU else 2 * d * h
        return self.n_layer * (4 * d * d + mlp + 2 * d) + d


# ---------------------------------------------------------------------------------------------
# segments and masks
# ---------------------------------------------------------------------------------------------
def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment index of every token of each row: a new segment wherever the position is 0.

    Padding (position 0 on every token, as the loader writes it) becomes one-token segments,
    which attend only to themselves: no row of the mask is ever empty.
    """
    return torch.cumsum((position_ids == 0).to(torch.int32), dim=-1)


def attention_mask(segments: torch.Tensor, prefix_len: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, L, L), True where a query may attend to a key; with
    ``prefix_len`` (B,) also every key before the row's prefix length (bidirectional prefix)."""
    L = segments.shape[-1]
    same = segments[:, :, None] == segments[:, None, :]
    seen = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    if prefix_len is not None:
        keys = torch.arange(L, device=segments.device)
        seen = seen | (keys[None, None, :] < prefix_len.to(segments.device)[:, None, None])
    return (same & seen)[:, None]


# ---------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------
def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + d/2]) by the angle of each position (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope
            # float32 angles; back to the activations' dtype (bf16 under autocast)
            q, k = _rotary(q, cos, sin).type_as(v), _rotary(k, cos, sin).type_as(v)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = (SwiGLU if cfg.mlp == MlpKind.SWIGLU else GeluMLP)(cfg.d_model, cfg.hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross entropy with the Hugging Face shift, aligned with ``labels``.

    Returns ``(losses, mask)``, both (B, L): ``losses[:, t]`` is the loss of predicting
    ``labels[:, t]`` from ``logits[:, t - 1]`` (computed in float32); ``mask`` marks the tokens
    that count (``labels != -100``, never column 0). Losses are 0 where ``mask`` is False.
    """
    B, L, V = logits.shape
    target = labels[:, 1:]
    lost = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), target.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(B, L - 1)
    losses = F.pad(lost, (1, 0))
    mask = F.pad(target != IGNORE_INDEX, (1, 0), value=False)
    return losses, mask


def gpt2_init(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 initialisation of ``model``: N(0, init_std) for every matrix, residual projections
    (``proj`` / ``down``) scaled by 1/sqrt(2 n_layer); norm gains stay 1."""
    std = cfg.init_std
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        scale = std / math.sqrt(2 * cfg.n_layer) if name.endswith(("proj.weight",
                                                                   "down.weight")) else std
        nn.init.normal_(p, 0.0, scale)


def count_params(model: nn.Module, non_embedding: bool = True) -> int:
    """``model``'s parameters (a tied head counted once); without its ``tok_emb`` and
    ``pos_emb`` by default."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.tok_emb.weight.numel()
        if model.pos_emb is not None:
            n -= model.pos_emb.weight.numel()
    return int(n)


@dataclass
class ProxyOutput:
    logits: torch.Tensor  # (B, L, V)
    losses: torch.Tensor | None = None  # (B, L), aligned with labels; 0 where not counted
    mask: torch.Tensor | None = None  # (B, L) bool, the tokens that count

    @property
    def loss(self) -> torch.Tensor:
        """Token-mean loss over the counted tokens (0 when there are none)."""
        if self.losses is None or self.mask is None:
            raise ValueError("no labels were given, so there is no loss")
        return self.losses.sum() / self.mask.sum().clamp(min=1)


class ProxyLM(nn.Module):
    """Decoder-only LM: token embedding, ``n_layer`` pre-norm blocks, final RMSNorm, tied head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (nn.Embedding(cfg.seq_len, cfg.d_model)
                        if cfg.positions == PositionKind.LEARNED else None)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        hd = cfg.d_model // cfg.n_head
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        gpt2_init(self, self.cfg)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied head counted once); without the embeddings by default."""
        return count_params(self, non_embedding)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                segments: torch.Tensor | None = None,
                prefix_len: torch.Tensor | None = None) -> ProxyOutput:
        """Logits, and per-token losses when ``labels`` are given.

        ``position_ids`` (B, L): positions restarting at 0 for every document of a packed row;
        they set the rotary angles (or learned positions) and, unless ``segments`` are given,
        the document boundaries. Without them a row is one causal sequence at 0..L-1.
        ``segments`` (B, L): explicit segment ids (e.g. ``doc_ids``); tokens attend only to
        earlier tokens of the same segment.
        ``prefix_len`` (B,): per-row prefix lengths (module docstring); ``None`` or all 0 is
        causal.
        """
        B, L = input_ids.shape
        if prefix_len is not None and prefix_len.shape != (B,):
            raise ValueError(f"prefix_len: expected shape ({B},), got {tuple(prefix_len.shape)}")
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
            mask = (None if segments is None and prefix_len is None else attention_mask(
                torch.zeros_like(input_ids) if segments is None else segments, prefix_len))
        else:
            mask = attention_mask(segment_ids(position_ids) if segments is None else segments,
                                  prefix_len)
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            if int(position_ids.max()) >= self.cfg.seq_len:
                raise ValueError(f"position {int(position_ids.max())} is beyond the learned "
                                 f"positions (seq_len {self.cfg.seq_len})")
            x = x + self.pos_emb(position_ids)
        else:
            angles = position_ids[:, None, :, None].float() * self.inv_freq  # (B, 1, L, hd/2)
            rope = (angles.cos(), angles.sin())
        for block in self.blocks:
            x = block(x, rope, mask)
        logits = self.head(self.norm(x))
        if labels is None:
            return ProxyOutput(logits)
        losses, valid = shifted_token_losses(logits, labels)
        return ProxyOutput(logits, losses, valid)
