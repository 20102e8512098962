"""Day-to-day drift and input noise augmentations: identity when off, drawn magnitudes,
determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plumelink.models.augment import (
    DriftConfig,
    InputNoise,
    SpectralDrift,
    augmented,
    legendre_basis,
    shift_pixels,
)
from plumelink.models.fit import ArraySource

N_PX = 400


def _spectra(n: int = 2000, noise: float = 1.0) -> torch.Tensor:
    """Positive spectra: a continuum and three lines of random height."""
    rng = np.random.default_rng(1)
    p = np.arange(N_PX)
    lines = sum(np.exp(-0.5 * ((p - c) / 2.0) ** 2) for c in (80, 200, 330))
    x = 50 + rng.uniform(100, 1000, (n, 1)) * lines[None, :] + rng.normal(0, noise, (n, N_PX))
    return torch.from_numpy(x.astype(np.float32))


def _drift(config: DriftConfig) -> SpectralDrift:
    return SpectralDrift(config, np.zeros(N_PX), np.ones(N_PX))


def test_off_is_the_identity() -> None:
    x = _spectra(10)
    drift = SpectralDrift(DriftConfig(), np.full(N_PX, 3.0), np.full(N_PX, 2.0))
    assert not drift.config.active
    assert drift(x) is x
    batch = (x, torch.ones(10, 5))
    assert drift.first(batch)[0] is x and drift.first(batch)[1] is batch[1]


def test_drawn_gain_has_the_stated_spread_and_keeps_the_shape() -> None:
    x = _spectra()
    torch.manual_seed(0)
    out = _drift(DriftConfig(gain=0.06)).counts(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    ratio = (out / x).double()
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5)  # one gain a row
    log_gain = ratio[:, 0].log()
    assert 0.054 < float(log_gain.std()) < 0.066
    assert abs(float(log_gain.mean())) < 0.006
    assert float(log_gain.abs().max()) < 5 * 0.06


def test_response_curve_is_smooth_and_of_the_stated_size() -> None:
    x = torch.ones(2000, N_PX)
    torch.manual_seed(0)
    factor = _drift(DriftConfig(response=0.02, response_order=2)).counts(x).double()
    assert abs(float(factor.mean()) - 1) < 0.002
    # |P_k| <= 1 and two terms: no pixel beyond 1 +- 2 x 5 sigma
    assert float((factor - 1).abs().max()) < 2 * 5 * 0.02
    coef_std = float((factor[:, -1] - factor[:, 0]).std()) / 2  # P_1 alone changes sign
    assert 0.017 < coef_std < 0.023
    curvature = factor.diff(n=2, dim=1).abs().max()
    assert float(curvature) < 1e-4  # smooth: no pixel-to-pixel structure


def test_shift_moves_lines_by_at_most_the_stated_pixels() -> None:
    x = _spectra(3000, noise=0.0)
    torch.manual_seed(0)
    out = _drift(DriftConfig(shift_px=0.1)).counts(x)
    p = torch.arange(60, 100, dtype=torch.float64)  # around the line at pixel 80
    line = slice(60, 100)

    def centroid(s: torch.Tensor) -> torch.Tensor:
        w = (s[:, line].double() - 50).clamp(min=0)
        return (w * p).sum(1) / w.sum(1)

    moved = centroid(out) - centroid(x)
    assert float(moved.abs().max()) <= 0.1 + 1e-3
    assert float(moved.max()) > 0.08 and float(moved.min()) < -0.08  # both directions drawn
    assert torch.allclose(out.sum(1)[:, None], x.sum(1)[:, None], rtol=1e-3)  # counts kept


def test_shift_pixels_is_linear_interpolation() -> None:
    ramp = torch.arange(10, dtype=torch.float32)[None, :].repeat(3, 1)
    out = shift_pixels(ramp, torch.tensor([0.25, -0.5, 1.0]))
    assert torch.allclose(out[0, 1:], ramp[0, 1:] - 0.25)
    assert torch.allclose(out[1, :-1], ramp[1, :-1] + 0.5)
    assert torch.equal(out[2, 1:], ramp[2, :-1])  # one whole pixel: moved by one index


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    x = _spectra(50)
    drift = _drift(DriftConfig(gain=0.05, shift_px=0.05, response=0.02))
    torch.manual_seed(3)
    a = drift(x)
    torch.manual_seed(3)
    b = drift(x)
    torch.manual_seed(4)
    c = drift(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_scaled_batches_are_drifted_in_counts() -> None:
    x = _spectra(20)
    mean, scale = x.mean(0).numpy(), np.full(N_PX, float(x.std()))
    drift = SpectralDrift(DriftConfig(gain=0.1), mean, scale)
    scaled = (x - torch.from_numpy(mean)) / torch.from_numpy(scale).float()
    torch.manual_seed(0)
    out = drift(scaled) * torch.from_numpy(scale).float() + torch.from_numpy(mean)
    torch.manual_seed(0)
    expected = _drift(DriftConfig(gain=0.1)).counts(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-2)


def test_legendre_basis_is_orthogonal() -> None:
    basis = legendre_basis(1001, 3).double()
    gram = basis @ basis.T / 1001
    off_diagonal = gram - torch.diag(torch.diag(gram))
    assert float(off_diagonal.abs().max()) < 2e-3


@pytest.mark.parametrize("changes", [dict(gain=-0.1), dict(shift_px=1.5),
                                     dict(response=float("nan")), dict(response_order=0)])
def test_bad_magnitudes_are_refused(changes) -> None:
    with pytest.raises(ValueError, match="DriftConfig"):
        DriftConfig(**changes)


def test_floor_is_left_alone_by_gain_and_response() -> None:
    x = _spectra(200, noise=0.0)
    floor = np.full(N_PX, 50.0)  # the continuum of _spectra
    drift = SpectralDrift(DriftConfig(gain=0.2, response=0.05), np.zeros(N_PX), np.ones(N_PX),
                          floor=floor)
    torch.manual_seed(0)
    out = drift.counts(x)
    line_free = slice(0, 40)
    assert torch.allclose(out[:, line_free], x[:, line_free])
    assert not torch.allclose(out[:, 80], x[:, 80], rtol=1e-2)  # the lines are drifted


def test_input_noise_has_the_stated_spread_on_the_inputs_only() -> None:
    x = _spectra(2000)
    target = torch.ones(2000, 5)
    assert InputNoise(0.0)(x) is x  # off: the identity
    torch.manual_seed(0)
    noisy, same_target = InputNoise(0.2).first((x, target))
    assert same_target is target and noisy.shape == x.shape and noisy.dtype == x.dtype
    added = (noisy - x).double()
    assert 0.195 < float(added.std()) < 0.205
    assert abs(float(added.mean())) < 0.002
    per_row = added.std(dim=1)
    assert float(per_row.min()) > 0.15  # every spectrum gets noise, not a few
    torch.manual_seed(0)
    assert torch.equal(InputNoise(0.2)(x), noisy)  # seeded: the same draw


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1"])
def test_input_noise_refuses_a_bad_spread(bad) -> None:
    with pytest.raises(ValueError, match="input noise"):
        InputNoise(bad)


def test_augmented_source_applies_the_active_augmentations_to_the_inputs_only() -> None:
    x, y = _spectra(64).numpy(), np.ones((64, 5), np.float32)
    source = ArraySource(x, y)
    off = (_drift(DriftConfig()), InputNoise(0.0))
    assert augmented(source, "cpu", *off) is source  # nothing active: the source itself
    torch.manual_seed(0)
    noisy = augmented(source, "cpu", *off[:1], InputNoise(0.5))
    (inputs, targets), = list(noisy.batches(64, None))
    assert torch.equal(targets, torch.from_numpy(y))
    added = (inputs - torch.from_numpy(x)).double()
    assert 0.4 < float(added.std()) < 0.6 and noisy.n_samples == 64
