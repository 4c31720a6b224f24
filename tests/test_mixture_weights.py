"""Weight vectors: validation messages, normalisation, masks, temperature."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixbatch.errors import ConfigError
from mixbatch.mixture.weights import (
    normalize_weights,
    temperature_weights,
    validate_weights,
    weights_from_mapping,
)


def test_normalize_and_mask():
    np.testing.assert_allclose(normalize_weights([2, 1, 1]), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(normalize_weights([2, 1, 1], [True, False, True]), [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(normalize_weights([0, 3]), [0, 1])


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50).filter(lambda w: sum(w) > 0))
def test_normalized_sums_to_one(w):
    p = normalize_weights(w)
    assert p.sum() == pytest.approx(1.0)
    assert (p >= 0).all()
    assert ((p == 0) == (np.array(w) == 0)).all()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1, -1], r"weights\.code: weight must be >= 0"),
        ([float("nan"), 1], r"weights\.web: weight must be a finite number"),
        ([float("inf"), 1], r"weights\.web: weight must be a finite number"),
        ([0, 0], r"weights: all weights are 0"),
        ([1e308, 1e308], r"weights: the weights sum to more than the largest float"),
        ([1], r"weights: expected 2 weights"),
        ([[1, 2]], r"weights: expected a flat list"),
        (["a", 1], r"weights: expected a list of numbers"),
    ],
)
def test_errors_name_the_source(weights, message):
    with pytest.raises(ConfigError, match=message):
        validate_weights(weights, ["web", "code"])


def test_errors_without_names_and_masks():
    with pytest.raises(ConfigError, match=r"weights\[1\]"):
        validate_weights([1, -2])
    with pytest.raises(ConfigError, match="no sources"):
        validate_weights([])
    with pytest.raises(ConfigError, match="available"):
        normalize_weights([1, 0], [False, True])
    with pytest.raises(ConfigError, match="available"):
        normalize_weights([1, 1], [True])
    assert validate_weights([0, 0], allow_all_zero=True).tolist() == [0, 0]


def test_mapping_missing_is_zero_unknown_is_error():
    names = ["web", "code", "books"]
    assert weights_from_mapping({"code": 3, "web": 1}, names).tolist() == [1, 3, 0]
    with pytest.raises(ConfigError, match=r"mix\.wbe: unknown source \(known sources: web"):
        weights_from_mapping({"wbe": 1}, names, field="mix")
    with pytest.raises(ConfigError, match=r"weights\.web: weight must be a number"):
        weights_from_mapping({"web": "1"}, names)
    with pytest.raises(ConfigError, match="all weights are 0"):
        weights_from_mapping({}, names)
    with pytest.raises(ConfigError, match="mapping"):
        weights_from_mapping([1, 2], names)


def test_temperature():
    sizes = [1000, 100, 10, 0]
    natural = [1000 / 1110, 100 / 1110, 10 / 1110, 0]
    np.testing.assert_allclose(temperature_weights(sizes, 1), natural)
    np.testing.assert_allclose(temperature_weights(sizes, 0), [1 / 3, 1 / 3, 1 / 3, 0])
    half = temperature_weights(sizes, 0.5)
    expect = np.sqrt([1000, 100, 10, 0])
    np.testing.assert_allclose(half, expect / expect.sum())
    # Token counts far beyond float range after the power do not overflow.
    big = temperature_weights([1e300, 1e299], 3.0)
    np.testing.assert_allclose(big, [1000 / 1001, 1 / 1001])


@given(st.lists(st.floats(1, 1e12), min_size=2, max_size=20), st.floats(0, 1))
def test_temperature_flattens(sizes, tau):
    p = temperature_weights(sizes, tau)
    natural = np.array(sizes) / np.sum(sizes)
    assert p.sum() == pytest.approx(1.0)
    # A lower temperature exponent never makes the largest source's share bigger.
    assert p.max() <= natural.max() + 1e-12


@pytest.mark.parametrize("tau", [-0.5, float("nan"), float("inf"), "1", True])
def test_temperature_errors(tau):
    with pytest.raises(ConfigError, match="temperature"):
        temperature_weights([1, 2], tau)


def test_temperature_size_errors():
    with pytest.raises(ConfigError, match=r"sizes\.b"):
        temperature_weights([1, -2], 0.5, ["a", "b"])


def test_huge_weights_never_give_empty_shares():
    """Weights of 1e308 once overflowed the sum into shares of 0 (an empty stream)."""
    np.testing.assert_allclose(normalize_weights([1e308, 1e307]), [1 / 1.1, 0.1 / 1.1])
    with pytest.raises(ConfigError, match="sum to more than the largest float"):
        normalize_weights([1e308, 1e308, 1])
    with pytest.raises(ConfigError, match="sum to more than the largest float"):
        weights_from_mapping({"a": 1.7e308, "b": 1.7e308}, ["a", "b"])
