"""Metrics with the paper's definitions, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from plumelink.models.metrics import (
    RSEAccumulator,
    euclidean_distances,
    label_agreement,
    negative_cosines,
    rse,
)


def test_euclidean_and_cosine_by_hand() -> None:
    y = np.array([[3.0, 4.0], [1.0, 0.0]])
    p = np.array([[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(euclidean_distances(y, p), [5.0, np.sqrt(2.0)])
    q = np.array([[6.0, 8.0], [0.0, 1.0]])
    np.testing.assert_allclose(negative_cosines(y, q), [-1.0, 0.0], atol=1e-12)


def test_rse_by_hand_and_in_blocks() -> None:
    y = np.array([[1.0, 2.0], [3.0, 6.0]])
    p = np.array([[1.0, 3.0], [2.0, 6.0]])
    # per-channel means (2, 4); total = (1+1) + (4+4) = 10; error = 1 + 1 = 2
    assert rse(y, p) == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    big_y, big_p = rng.normal(size=(100, 7)), rng.normal(size=(100, 7))
    acc = RSEAccumulator()
    for start in range(0, 100, 33):
        acc.add(big_y[start : start + 33], big_p[start : start + 33])
    assert acc.value() == pytest.approx(rse(big_y, big_p), rel=1e-12)
    assert rse(big_y, big_y.mean(axis=0, keepdims=True).repeat(100, 0)) == pytest.approx(1.0)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        rse(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        euclidean_distances(np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="no spectra"):
        RSEAccumulator().value()
    with pytest.raises(ValueError, match="differ in shape"):
        label_agreement(np.zeros(3), np.zeros(4))
    assert label_agreement(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75


def test_rse_per_channel_by_hand() -> None:
    y = np.array([[1.0, 2.0, 5.0], [3.0, 6.0, 5.0]])
    p = np.array([[1.0, 3.0, 4.0], [2.0, 6.0, 5.0]])
    acc = RSEAccumulator()
    acc.add(y[:1], p[:1])
    acc.add(y[1:], p[1:])
    # channel 0: error 1 over spread 2; channel 1: 1 over 8; channel 2 does not vary: NaN
    np.testing.assert_allclose(acc.per_channel(), [0.5, 0.125, np.nan])
    # bands pool errors and spreads: (1 + 1) / (2 + 8), then channel 2's 1 / 0
    np.testing.assert_allclose(acc.per_band(np.array([0, 2, 3])), [0.2, np.nan])
    with pytest.raises(ValueError, match="no spectra"):
        RSEAccumulator().per_channel()
