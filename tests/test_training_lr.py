from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, StateError
from mixbatch.training.lr import TokenLR, TokenSchedule


def _opt(lr: float = 1e-2) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _run(sched: TokenLR, clock: list[tuple[int, int]]) -> list[float]:
    out = []
    for tokens, stage in clock:
        sched.step(tokens, stage)
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out


def test_cosine_warmup_then_decay_to_min() -> None:
    s = TokenSchedule("cosine", total_tokens=1000, warmup_tokens=100, min_ratio=0.1)
    lr = TokenLR(_opt(1.0), s)
    got = _run(lr, [(50, 0), (100, 0), (550, 0), (1000, 0), (2000, 0)])
    assert got == pytest.approx([0.5, 1.0, 0.55, 0.1, 0.1])


def test_wsd_stable_then_linear_decay() -> None:
    s = TokenSchedule("wsd", total_tokens=1000, warmup_tokens=0, decay_fraction=0.2, min_ratio=0)
    got = _run(TokenLR(_opt(2.0), s), [(10, 0), (800, 0), (900, 0), (1000, 0)])
    assert got == pytest.approx([2.0, 2.0, 1.0, 0.0])


def test_power_follows_beta_a_n_to_the_b_capped_at_peak() -> None:
    s = TokenSchedule("power", total_tokens=10**10, batch_size=8, decay_fraction=0.0)
    got = _run(TokenLR(_opt(0.02), s), [(10**3, 0), (10**7, 0), (10**9, 0)])
    want = [min(0.02, 8 * 4.0 * n ** -0.51) for n in (10**3, 10**7, 10**9)]
    assert got == pytest.approx(want)
    assert got[0] == 0.02 and got[2] < got[1] < 0.02  # capped early, falling with tokens


def test_rewarm_at_a_stage_change_and_none_without() -> None:
    base = {"shape": "cosine", "total_tokens": 1000, "warmup_tokens": 100, "min_ratio": 0.0}
    clock = [(t, 0 if t <= 500 else 1) for t in range(100, 1001, 100)]
    plain = _run(TokenLR(_opt(1.0), TokenSchedule(**base)), clock)
    warm = _run(TokenLR(_opt(1.0), TokenSchedule(**base, rewarm_tokens=200)), clock)
    assert warm[:5] == plain[:5]
    at_switch = plain[4]  # tokens 500: the LR when stage 1 began
    # 100 tokens into the re-warm: half-way from the switch LR back to the peak
    assert warm[5] == pytest.approx(at_switch + (1.0 - at_switch) * 0.5)
    assert warm[6] == pytest.approx(1.0)
    assert warm[-1] == pytest.approx(0.0) and warm[7] > plain[7]
    # the stage changing does nothing without re-warming
    assert plain == _run(TokenLR(_opt(1.0), TokenSchedule(**base)), [(t, 0) for t, _ in clock])


@pytest.mark.parametrize("cut", [1, 4, 5, 7])
def test_resume_is_exact_anywhere(cut: int) -> None:
    s = TokenSchedule("power", total_tokens=2000, warmup_tokens=150, batch_size=3,
                      rewarm_tokens=300, decay_fraction=0.25, min_ratio=0.05)
    clock = [(t, int(t > 900)) for t in range(137, 2000, 173)]
    whole = _run(TokenLR(_opt(0.05), s), clock)
    first = TokenLR(_opt(0.05), s)
    _run(first, clock[:cut])
    state = first.state_dict()
    assert "_loader" not in state
    # plain types only: a checkpoint file loads with torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    second = TokenLR(_opt(0.05), s)
    second.load_state_dict(state)
    assert second.schedule is s
    assert _run(second, clock[cut:]) == whole[cut:]


class _Loader:
    def __init__(self) -> None:
        import numpy as np

        self.fed_tokens = np.zeros(2, dtype=np.int64)


def test_reads_the_loader_token_counts() -> None:
    loader = _Loader()
    lr = TokenLR(_opt(1.0), TokenSchedule("wsd", 100, warmup_tokens=40), loader=loader)
    loader.fed_tokens[:] = [10, 10]
    lr.step()
    assert lr.get_last_lr() == pytest.approx([0.5])


def test_bad_input_is_one_line() -> None:
    with pytest.raises(ConfigError, match="has no token counts"):
        TokenLR(_opt(), TokenSchedule("cosine", 100), loader=object())
    # a torch DataLoader (e.g. around a MixbatchDataset) counts no tokens: the error says how
    with pytest.raises(ConfigError, match=r"\(DataLoader\) has no token counts .* "
                                          r"call step\(tokens\) with the tokens trained$"):
        TokenLR(_opt(), TokenSchedule("wsd", 100), loader=torch.utils.data.DataLoader([1]))
    lr = TokenLR(_opt(), TokenSchedule("cosine", 100))
    with pytest.raises(ConfigError, match=r"call step\(tokens\)"):
        lr.step()
    lr.step(50)
    with pytest.raises(ConfigError, match="tokens went backwards"):
        lr.step(40)
    lr.step(60, 2)
    with pytest.raises(ConfigError, match="stage went backwards"):
        lr.step(70, 1)
    with pytest.raises(ConfigError, match=r"lr\.warmup_tokens"):
        TokenSchedule("cosine", 100, warmup_tokens=100)
    with pytest.raises(ConfigError, match=r"lr\.shape"):
        TokenSchedule("linear", 100)
    with pytest.raises(StateError, match="differs"):
        TokenLR(_opt(), TokenSchedule("wsd", 100)).load_state_dict(lr.state_dict())
    assert not math.isnan(lr.get_last_lr()[0])


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from(["cosine", "wsd", "power", "constant"]),
       steps=st.lists(st.integers(0, 400), min_size=1, max_size=12),
       switch=st.integers(0, 12), cut=st.integers(0, 12),
       rewarm=st.one_of(st.none(), st.integers(1, 500)))
def test_property_bounded_and_resumable(shape, steps, switch, cut, rewarm) -> None:
    s = TokenSchedule(shape, total_tokens=3000, warmup_tokens=100, min_ratio=0.1,
                      rewarm_tokens=rewarm, batch_size=2)
    clock, t = [], 0
    for i, d in enumerate(steps):
        t += d
        clock.append((t, int(i >= switch)))
    whole = _run(TokenLR(_opt(0.5), s), clock)
    assert all(0.0 <= v <= 0.5 + 1e-12 for v in whole)
    first = TokenLR(_opt(0.5), s)
    _run(first, clock[:cut])
    second = TokenLR(_opt(0.5), s)
    second.load_state_dict(first.state_dict())
    assert _run(second, clock[cut:]) == whole[cut:]
