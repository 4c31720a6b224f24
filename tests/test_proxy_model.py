from __future__ import annotations

import math

import pytest
import torch

from mixbatch.proxy.model import (
    IGNORE_INDEX,
    MlpKind,
    ModelConfig,
    PositionKind,
    ProxyLM,
    attention_mask,
    segment_ids,
)
from mixbatch.torch import per_source_mean

V = 50


def _model(seed: int = 0, **kw) -> ProxyLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, seq_len=kw.pop("seq_len", 64), n_layer=2, d_model=32, n_head=4,
                      **kw)
    return ProxyLM(cfg).eval()


VARIANTS = [
    {},
    {"mlp": MlpKind.GELU, "positions": PositionKind.LEARNED},
    {"mlp": "gelu", "positions": "rotary"},
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_causal_future_tokens_do_not_change_earlier_logits(kw: dict) -> None:
    model = _model(**kw)
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    other = ids.clone()
    other[:, 25:] = (other[:, 25:] + 7) % V
    with torch.no_grad():
        a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(a[:, :25], b[:, :25], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 25:], b[:, 25:])


@pytest.mark.parametrize("kw", VARIANTS)
def test_documents_of_a_packed_row_do_not_see_each_other(kw: dict) -> None:
    model = _model(**kw)
    g = torch.Generator().manual_seed(2)
    doc_a, doc_b = torch.randint(0, V, (20,), generator=g), torch.randint(0, V, (30,), generator=g)
    ids = torch.cat([doc_a, doc_b])[None]
    pos = torch.cat([torch.arange(20), torch.arange(30)])[None]
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V  # a token of document A
    with torch.no_grad():
        packed = model(ids, position_ids=pos).logits
        after = model(changed, position_ids=pos).logits
        alone = model(doc_b[None]).logits  # B in a row of its own, positions 0..29
    torch.testing.assert_close(packed[0, 20:], after[0, 20:], rtol=0, atol=1e-6)
    assert not torch.allclose(packed[0, 5:20], after[0, 5:20])
    torch.testing.assert_close(packed[0, 20:], alone[0], rtol=1e-5, atol=1e-5)


def test_explicit_segments_equal_position_segments() -> None:
    model = _model()
    ids = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(10), torch.arange(14)])[None]
    docs = torch.tensor([[4] * 10 + [9] * 14])
    with torch.no_grad():
        a = model(ids, position_ids=pos).logits
        b = model(ids, position_ids=pos, segments=docs).logits
    torch.testing.assert_close(a, b)


def test_segments_and_mask_from_positions() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0]])  # two documents, then two padding tokens
    seg = segment_ids(pos)
    assert seg.tolist() == [[1, 1, 1, 2, 2, 3, 4]]
    m = attention_mask(seg)[0, 0]
    assert m.shape == (7, 7)
    assert m[2].tolist() == [True, True, True, False, False, False, False]
    assert m[4].tolist() == [False, False, False, True, True, False, False]
    assert m[6].tolist() == [False] * 6 + [True]  # padding sees only itself: no empty rows


def test_loss_equals_hand_computed_cross_entropy() -> None:
    model = _model()
    ids = torch.tensor([[3, 7, 1, 9, 4, 4, 2, 8]])
    labels = ids.clone()
    labels[0, 0] = IGNORE_INDEX
    labels[0, 5] = IGNORE_INDEX
    with torch.no_grad():
        out = model(ids, labels)
    logits = out.logits[0].double()
    expect = [0.0] * 8
    for t in range(1, 8):
        if labels[0, t] == IGNORE_INDEX:
            continue
        row = logits[t - 1].tolist()
        lse = math.log(sum(math.exp(x) for x in row))
        expect[t] = lse - row[int(labels[0, t])]
    assert out.mask[0].tolist() == [False, True, True, True, True, False, True, True]
    torch.testing.assert_close(out.losses[0].double(), torch.tensor(expect, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(sum(expect) / 6, rel=1e-5)


def test_embeddings_are_tied() -> None:
    model = _model().train()
    assert model.head.weight is model.tok_emb.weight
    ids = torch.randint(0, V, (2, 16))
    model(ids, ids).loss.backward()
    assert model.tok_emb.weight.grad is not None
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names  # one parameter, counted and optimised once
    # a saved state loads back into a fresh model and gives the same logits
    other = _model(seed=5)
    other.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert other.head.weight is other.tok_emb.weight
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, model(ids).logits)


def test_param_count() -> None:
    # RegMix's tinyllama_1M shape: 2 x (4 d^2 + 3 d h) = 1.31M, plus RMSNorm gains
    cfg = ModelConfig(vocab_size=50432, seq_len=2048, n_layer=2, d_model=256, n_head=8, d_mlp=512)
    assert cfg.non_embedding_params() == 2 * (4 * 256**2 + 3 * 256 * 512) + 5 * 256
    model = ProxyLM(cfg)
    assert model.num_params() == cfg.non_embedding_params() == 1_312_000
    assert model.num_params(non_embedding=False) == 1_312_000 + 50432 * 256  # head tied
    for kw in VARIANTS:
        m = _model(**kw)
        assert m.num_params() == m.cfg.non_embedding_params()
    gelu = ModelConfig(vocab_size=V, seq_len=8, d_model=32, n_head=4, mlp="gelu")
    assert gelu.hidden == 128
    assert ModelConfig(vocab_size=V, seq_len=8, d_model=128).hidden == 352  # ceil(8*128/3) -> x32


def test_learned_positions_refuse_positions_beyond_context() -> None:
    model = _model(positions="learned", seq_len=16)
    with pytest.raises(ValueError, match="learned positions"):
        model(torch.zeros(1, 20, dtype=torch.long))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=V, seq_len=8, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="even head size"):
        ModelConfig(vocab_size=V, seq_len=8, d_model=12, n_head=4)


def test_per_source_mean_by_hand() -> None:
    losses = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 5.0, 7.0, 9.0]], requires_grad=True)
    src = torch.tensor([[0, 0, 1, 1], [2, 2, 2, -1]])
    mask = torch.tensor([[False, True, True, True], [False, True, True, True]])
    means, counts = per_source_mean(losses, src, 4, mask)
    assert counts.tolist() == [1, 2, 2, 0]
    assert means[:3].tolist() == [1.0, 2.5, 6.0]
    assert math.isnan(means[3].item())
    means[:3].sum().backward()
    assert losses.grad.tolist() == [[0.0, 1.0, 0.5, 0.5], [0.0, 0.5, 0.5, 0.0]]
    plain, n = per_source_mean(losses.detach(), src, 3)  # no mask: every sourced token counts
    assert n.tolist() == [2, 2, 3] and plain.tolist() == [0.5, 2.5, 4.0]
    with pytest.raises(ValueError, match="same shape"):
        per_source_mean(losses, src[:, :2], 3)


@pytest.mark.parametrize("kw", VARIANTS)
def test_bf16_autocast_runs_and_matches_float32(kw: dict) -> None:
    # the GPU path trains under bf16 autocast; CPU autocast exercises the same dtype mixing
    model = _model(**kw).train()
    ids = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(4))
    pos = torch.cat([torch.arange(12), torch.arange(20)]).expand(2, 32)
    ref = model(ids, ids, pos).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, ids, pos)
    assert out.losses.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.item(), abs=0.05)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
