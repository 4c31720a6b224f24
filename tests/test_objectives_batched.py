"""The vectorised objective stage against the per-row construction it replaced (the oracle):
the same examples, field for field, for any rows, denoisers, weights and layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbatch.errors import ConfigError
from mixbatch.objectives import UL2_DENOISERS, corrupt
from mixbatch.objectives.batched import corrupt_rows
from mixbatch.objectives.config import ObjectivesConfig
from mixbatch.objectives.reference import reference_apply
from mixbatch.objectives.stage import ObjectiveStage

DENOISER = st.fixed_dictionaries({
    "paradigm": st.sampled_from(["r", "s", "x"]),
    "rate": st.floats(0.01, 0.99),
    "mean_span": st.floats(1.0, 40.0)})


@settings(max_examples=80, deadline=None)
@given(data=st.data(), layout=st.sampled_from(["prefix_lm", "encoder_decoder"]),
       B=st.integers(1, 12), L=st.integers(2, 90), sentinels=st.integers(1, 12),
       seed=st.integers(0, 2**31), preset=st.booleans())
def test_stage_equals_the_per_row_oracle(data: st.DataObject, layout: str, B: int, L: int,
                                         sentinels: int, seed: int, preset: bool) -> None:
    if preset:
        spec = ObjectivesConfig(layout=layout, sentinels=sentinels)
    else:
        ds = data.draw(st.lists(DENOISER, min_size=1, max_size=4))
        spec = ObjectivesConfig(layout=layout, sentinels=sentinels, denoisers=[
            {"name": f"d{i}", **d} for i, d in enumerate(ds)])
    k = 3
    a, b = (ObjectiveStage(spec, seed, 300, 299, L, k) for _ in range(2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    short = 0
    for _ in range(data.draw(st.integers(1, 3))):  # a few steps: sample numbers move on
        ids = rng.integers(0, 299, (B, L))
        src = rng.integers(0, k, (B, L))
        # real tokens: a prefix of each row (pad rows), anything (holes), or none / one
        kind = rng.integers(0, 4, B)
        cut = rng.integers(0, L + 1, B)
        prefix = np.arange(L)[None, :] < cut[:, None]
        holes = rng.random((B, L)) < 0.7
        real = np.where((kind == 0)[:, None], True,
                        np.where((kind == 1)[:, None], prefix,
                                 np.where((kind == 2)[:, None], holes, np.arange(L) < 1)))
        src = np.where(real, src, -1)
        rows = np.sort(rng.choice(B + 3, B, replace=False))  # this rank's global rows
        ga, gb = a.assign(B + 3), b.assign(B + 3)
        batch = {"input_ids": ids, "source_ids": src, "step": 5}
        got, want = a.apply(batch, ga, rows), reference_apply(b, batch, gb, rows)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
            if isinstance(want[key], np.ndarray):
                assert got[key].dtype == want[key].dtype, key
        short += int(((src >= 0).sum(axis=1) < 2).sum())
        assert a.short_rows == short


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(2, 300), min_size=1, max_size=8), seed=st.integers(0, 99),
       data=st.data())
def test_corrupt_rows_is_corrupt_row_by_row(lengths: list[int], seed: int,
                                            data: st.DataObject) -> None:
    which = data.draw(st.lists(st.integers(0, len(UL2_DENOISERS) - 1), min_size=len(lengths),
                               max_size=len(lengths)))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, sum(lengths))
    modes, sentinels = {"r": 900, "s": 901, "x": 902}, np.arange(1000, 1100)
    samples = np.arange(len(lengths)) * 7 + 3
    ex = corrupt_rows(tokens, np.array(lengths), np.array(which), samples, UL2_DENOISERS,
                      modes, sentinels, seed)
    at = np.cumsum([0, *lengths])
    i_at, t_at = np.cumsum([0, *ex.in_len]), np.cumsum([0, *ex.tg_len])
    from mixbatch.plan.permutation import derive_key
    for r, d in enumerate(which):
        den = UL2_DENOISERS[d]
        one = corrupt(tokens[at[r]:at[r + 1]], den, modes[den.paradigm.value], sentinels,
                      np.random.default_rng(derive_key(seed, "objective", int(samples[r]))))
        np.testing.assert_array_equal(one.inputs, ex.inputs[i_at[r]:i_at[r + 1]])
        np.testing.assert_array_equal(one.targets, ex.targets[t_at[r]:t_at[r + 1]])


def test_rows_too_short_are_refused() -> None:
    with pytest.raises(ConfigError, match="a row of 1 tokens"):
        corrupt_rows(np.zeros(3), np.array([2, 1]), np.array([0, 0]), np.array([0, 1]),
                     UL2_DENOISERS, {"r": 1, "s": 2, "x": 3}, np.arange(5, 9), 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=20))
def test_row_generators_start_as_default_rng(keys: list[int]) -> None:
    from mixbatch.objectives.seeding import row_generators, seed_words

    keys = [*keys, 0, 1, 2**32 - 1, 2**32, 2**64 - 1]
    words = seed_words(np.asarray(keys, dtype=np.uint64))
    for k, w, gen in zip(keys, words, row_generators(keys), strict=True):
        np.testing.assert_array_equal(w, np.random.SeedSequence(k).generate_state(4, np.uint64))
        want = np.random.default_rng(k)
        assert gen.bit_generator.state == want.bit_generator.state
        np.testing.assert_array_equal(gen.choice(50, 7, replace=False),
                                      want.choice(50, 7, replace=False))
