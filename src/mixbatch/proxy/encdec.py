"""A small encoder-decoder transformer for proxy runs on ``objectives.layout: encoder_decoder``.

T5's layout ("Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", Section 3.1, the encoder-decoder of "UL2: Unifying Language Learning Paradigms"):
a bidirectional encoder over ``[mode] inputs`` and a causal decoder over the targets that
cross-attends to the encoder's output in every block. One token embedding is shared by the
encoder, the decoder and the (tied) output head. The size knobs are :class:`ModelConfig`'s, as
for :class:`~mixbatch.proxy.model.ProxyLM`: ``n_layer`` blocks in the encoder and ``n_layer``
in the decoder (T5's convention: twice the decoder-only model's parameters for the same
compute per token), width ``d_model``, ``n_head`` heads, the same MLP, norms, rotary or learned
positions (each stack's positions start at 0; cross-attention has none).

Conventions are the decoder-only proxy's, so the trainer, the evaluation and the online
feedback treat both models alike: ``input_ids`` are the *decoder's* tokens and ``labels`` use
the Hugging Face shift (``logits[:, t]`` predicts ``labels[:, t + 1]``; per-token losses come
back aligned with ``labels``). A training row is ``[start] targets`` with labels
``[-100] targets`` (:func:`decoder_rows` turns the loader's T5-style ``decoder_input_ids`` /
``labels`` into it), the encoder gets ``encoder_ids`` with ``encoder_mask``.

Without ``encoder_ids`` the encoder reads one token per row, ``empty_id`` (the ``[S2S]``
paradigm token: a prefix LM with an empty prefix), and the decoder is a causal LM over
``input_ids``. This is the held-out loss of an encoder-decoder proxy: the same held-out
windows and scored tokens as the decoder-only proxy's validation (nats per token, every token
of a window but its first predicted from the ones before it), so the two compare directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixbatch.proxy.model import (
    IGNORE_INDEX,
    Attention,
    GeluMLP,
    MlpKind,
    ModelConfig,
    PositionKind,
    ProxyOutput,
    SwiGLU,
    attention_mask,
    count_params,
    gpt2_init,
    segment_ids,
    shifted_token_losses,
)

__all__ = ["EncDecLM", "decoder_rows"]


class CrossAttention(nn.Module):
    """Decoder queries over the encoder's output (no positions, as in T5)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H, hd = self.n_head, D // self.n_head
        q = self.q(x).view(B, L, H, hd).transpose(1, 2)
        k, v = self.kv(memory).view(B, memory.shape[1], 2, H, hd).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


def _mlp(cfg: ModelConfig) -> nn.Module:
    return (SwiGLU if cfg.mlp == MlpKind.SWIGLU else GeluMLP)(cfg.d_model, cfg.hidden)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = _mlp(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_x = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.cross = CrossAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = _mlp(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None, memory: torch.Tensor, keys: torch.Tensor
                ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        x = x + self.cross(self.norm_x(x), memory, keys)
        return x + self.mlp(self.norm2(x))


class EncDecLM(nn.Module):
    """Encoder-decoder LM with shared embeddings and a tied head (module docstring)."""

    def __init__(self, cfg: ModelConfig, empty_id: int) -> None:
        super().__init__()
        if not 0 <= empty_id < cfg.vocab_size:
            raise ValueError(f"empty_id {empty_id} is outside the vocabulary ({cfg.vocab_size})")
        self.cfg, self.empty_id = cfg, int(empty_id)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (nn.Embedding(cfg.seq_len, cfg.d_model)
                        if cfg.positions == PositionKind.LEARNED else None)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.enc_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied, and shared by both stacks
        hd = cfg.d_model // cfg.n_head
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation as :meth:`ProxyLM.reset_parameters` (residual projections
        scaled by 1/sqrt(2 n_layer))."""
        gpt2_init(self, self.cfg)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the shared embedding counted once); without the embeddings by default."""
        return count_params(self, non_embedding)

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        x = self.tok_emb(ids)
        if self.pos_emb is not None:
            if int(pos.max()) >= self.cfg.seq_len:
                raise ValueError(f"position {int(pos.max())} is beyond the learned positions "
                                 f"(seq_len {self.cfg.seq_len})")
            return x + self.pos_emb(pos), None
        angles = pos[:, None, :, None].float() * self.inv_freq
        return x, (angles.cos(), angles.sin())

    def encode(self, encoder_ids: torch.Tensor, encoder_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output (B, Le, D) and the keys the decoder may read (B, 1, 1, Le):
        bidirectional over the real tokens (``encoder_mask``, default all); a row with none
        (a short row left as padding) reads its first position so no softmax is empty."""
        B, Le = encoder_ids.shape
        real = (torch.ones_like(encoder_ids, dtype=torch.bool) if encoder_mask is None
                else encoder_mask.bool())
        real = real.clone()
        real[:, 0] |= ~real.any(dim=1)
        keys = real[:, None, None, :]
        pos = torch.arange(Le, device=encoder_ids.device).expand(B, Le)
        x, rope = self._embed(encoder_ids, pos)
        for block in self.encoder:
            x = block(x, rope, keys)
        return self.enc_norm(x), keys

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None,
                segments: torch.Tensor | None = None,
                prefix_len: torch.Tensor | None = None, *,
                encoder_ids: torch.Tensor | None = None,
                encoder_mask: torch.Tensor | None = None) -> ProxyOutput:
        """Decoder logits (and per-token losses with ``labels``, Hugging Face shift).

        ``input_ids``, ``position_ids``, ``segments``: the decoder's row, as for
        :meth:`ProxyLM.forward` (packed documents stay apart in self-attention; every
        document reads the whole encoder row). ``encoder_ids`` / ``encoder_mask`` (B, Le):
        the encoder's row; None: the one-token row ``[empty_id]`` (module docstring).
        ``prefix_len`` is the decoder-only layout's; it is refused here.
        """
        if prefix_len is not None:
            raise ValueError("prefix_len: the encoder-decoder proxy takes its inputs in "
                             "encoder_ids, not as a prefix of the decoder's row")
        B, L = input_ids.shape
        if encoder_ids is None:
            encoder_ids = torch.full((B, 1), self.empty_id, dtype=input_ids.dtype,
                                     device=input_ids.device)
            encoder_mask = None
        memory, keys = self.encode(encoder_ids, encoder_mask)
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
            mask = None if segments is None else attention_mask(segments)
        else:
            mask = attention_mask(segment_ids(position_ids) if segments is None else segments)
        x, rope = self._embed(input_ids, position_ids)
        for block in self.decoder:
            x = block(x, rope, mask, memory, keys)
        logits = self.head(self.norm(x))
        if labels is None:
            return ProxyOutput(logits)
        losses, valid = shifted_token_losses(logits, labels)
        return ProxyOutput(logits, losses, valid)


def decoder_rows(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decoder's rows of a T5-style ``encoder_decoder`` batch in the proxy's convention:
    ``ids`` ``[start] targets`` then padding, ``labels`` ``[-100] targets`` (Hugging Face
    shift) and ``sources`` (the row's source on every scored token, -1 elsewhere), each
    ``[B, Wt + 1]``."""
    dec, lab = np.asarray(batch["decoder_input_ids"]), np.asarray(batch["labels"])
    B = dec.shape[0]
    scored = lab != IGNORE_INDEX
    ids = np.concatenate([dec[:, :1], np.where(scored, lab, dec[:, :1])], axis=1)
    labels = np.concatenate([np.full((B, 1), IGNORE_INDEX, dtype=lab.dtype), lab], axis=1)
    row_source = np.asarray(batch["source_ids"])[:, 0]  # the row's source (-1: a short row)
    sources = np.where(labels != IGNORE_INDEX, row_source[:, None], -1)
    return ids.astype(np.int64), labels.astype(np.int64), sources.astype(np.int64)
