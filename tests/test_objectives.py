"""UL2 denoisers (span layout, round trip, prefix-LM layout), objectives mixed exactly per
sample, resume, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError, DataError, StateError
from mixbatch.objectives import (
    UL2_DENOISERS,
    Denoiser,
    ObjectiveMixer,
    Paradigm,
    Task,
    corrupt,
    noise_mask,
    prefix_lm,
    prefix_lm_mask,
    rationale_example,
    rationale_weights,
)

SENTINELS = np.arange(1000, 1100)
MODES = {"r": 900, "s": 901, "x": 902}


def _restore(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Undo span corruption: put each sentinel's span (from the targets) back in the inputs."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets.tolist():
        if t >= 1000:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs[1:].tolist():
        out.extend(spans[t] if t >= 1000 else [t])
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 400), rate=st.floats(0.01, 0.99), span=st.floats(1.0, 80.0),
       seed=st.integers(0, 2**32))
def test_noise_mask_layout(length: int, rate: float, span: float, seed: int) -> None:
    mask = noise_mask(length, rate, span, np.random.default_rng(seed))
    assert mask.shape == (length,) and not mask[0]  # kept tokens come first
    assert mask.sum() == min(max(round(length * rate), 1), length - 1)
    starts = int((mask & ~np.concatenate([[False], mask[:-1]])).sum())
    assert starts == min(max(1, round(mask.sum() / span)), mask.sum(), length - mask.sum())


@pytest.mark.parametrize("denoiser", UL2_DENOISERS, ids=lambda d: d.name)
def test_every_ul2_denoiser_round_trips(denoiser: Denoiser) -> None:
    tokens = np.random.default_rng(0).integers(0, 256, 300)
    ex = corrupt(tokens, denoiser, MODES[denoiser.paradigm.value], SENTINELS,
                 np.random.default_rng(1))
    assert ex.inputs[0] == MODES[denoiser.paradigm.value]
    if denoiser.paradigm is Paradigm.S:
        assert np.array_equal(ex.tokens[1:], tokens) and ex.targets.size == round(300 * 0.25)
    else:
        assert np.array_equal(_restore(ex.inputs, ex.targets), tokens)
        noise = (ex.targets < 1000).sum()
        assert noise == round(300 * denoiser.rate)


def test_paradigm_tokens() -> None:
    assert [p.token for p in Paradigm] == ["[NLU]", "[S2S]", "[NLG]"]


def test_spans_are_capped_at_the_sentinels() -> None:
    tokens = np.arange(400)
    ex = corrupt(tokens, Denoiser("x", "x", 0.5, 3.0), 902, SENTINELS[:5], np.random.default_rng(0))
    assert (ex.inputs >= 1000).sum() == 5 and np.array_equal(_restore(ex.inputs, ex.targets), tokens)


def test_prefix_lm_layout_and_mask() -> None:
    tokens = np.arange(20)
    ex = corrupt(tokens, Denoiser("s", "s", 0.25), 901, SENTINELS, np.random.default_rng(0))
    seq, prefix, loss = prefix_lm(ex)
    assert prefix == 16 and seq.size == 21  # mode + 15 kept + 5 predicted
    assert loss.nonzero()[0].tolist() == list(range(15, 20))  # positions predicting the targets
    m = prefix_lm_mask(6, 3)
    assert m[0].tolist() == [True, True, True, False, False, False]  # sees the whole prefix
    assert m[4].tolist() == [True, True, True, True, True, False]  # causal after it


def _mixer(weights=(1, 1, 2, 1, 1, 1, 1), seed: int = 7) -> ObjectiveMixer:
    return ObjectiveMixer(UL2_DENOISERS, weights, seed, MODES, SENTINELS)


def test_mixer_is_exact_and_deterministic_and_resumes() -> None:
    docs = [np.random.default_rng(i).integers(0, 256, 64) for i in range(200)]
    a = _mixer()
    chosen, examples = a.next(docs)
    w = np.array([1, 1, 2, 1, 1, 1, 1]) / 8
    counts = np.cumsum(np.eye(7)[chosen], axis=0)
    target = np.arange(1, 201)[:, None] * w
    assert np.abs(counts - target).max() < 1.0  # every prefix within one sample
    b = _mixer()
    c1, e1 = b.next(docs[:90])
    saved = b.state_dict()
    c = _mixer()
    c.load_state_dict(saved)
    c2, e2 = c.next(docs[90:])
    assert np.array_equal(np.concatenate([c1, c2]), chosen)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(e1 + e2, examples, strict=True))
    with pytest.raises(StateError, match="saved for other objectives"):
        _mixer(seed=8).load_state_dict(saved)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Denoiser("bad", "r", 1.5, 3.0), r"denoiser 'bad'.rate"),
    (lambda: Denoiser("bad", "r", 0.15, 0.5), r"denoiser 'bad'.mean_span"),
    (lambda: Denoiser("bad", "q", 0.15), r"denoiser 'bad'.paradigm: expected r, s or x"),
    (lambda: _mixer(weights=(1, 1)), "objectives.weights: expected 7"),
    (lambda: ObjectiveMixer(UL2_DENOISERS, [1] * 7, 0, {"r": 1}, SENTINELS),
     "objectives.mode_ids: no token id for paradigm 's'"),
    (lambda: corrupt(np.arange(1), UL2_DENOISERS[0], 900, SENTINELS, np.random.default_rng(0)),
     "cannot be corrupted"),
])
def test_bad_settings_are_one_line(build, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_rationale_tasks() -> None:
    rec = {"input": "2 + 3?", "answer": "5", "rationale": "2 plus 3 is 5"}
    assert rationale_example(rec, Task.LABEL) == ("[label] 2 + 3?", "5")
    assert rationale_example(rec, Task.RATIONALE) == ("[rationale] 2 + 3?", "2 plus 3 is 5")
    assert rationale_weights(1.0) == (0.5, 0.5) and rationale_weights(0.0) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="rationale_weight"):
        rationale_weights(-1.0)
    with pytest.raises(DataError, match=r"^line 3: field 'rationale' must be a non-empty"):
        rationale_example({"input": "x", "answer": "y"}, Task.LABEL, where="line 3")
