"""Split-conformal prediction intervals: the guarantee on exchangeable data, radii that follow
the confidence, clear errors, and the evaluation's coverage on the test map."""

from __future__ import annotations

import numpy as np
import pytest

from plumelink.models.intervals import (
    ConformalIntervals,
    band_coverage,
    band_distances,
    band_edges,
    calibrate,
    coverage,
)


def heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Errors whose spread falls as the confidence rises (as a useful confidence does)."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    return np.abs(rng.normal(0.0, 1.0 + 9.0 * (1 - conf))), conf


def test_coverage_holds_on_exchangeable_spots() -> None:
    d, c = heteroscedastic(2000, 0)
    intervals = calibrate(d, c, level=0.9, n_bins=5)
    result = coverage(intervals, *heteroscedastic(20_000, 1))
    assert 0.88 <= result["coverage"] <= 0.93
    # the radius follows the confidence: the surest bin is the narrowest
    assert intervals.radius[-1] < intervals.radius[0] / 3


def test_finite_sample_rank_and_bins_by_hand() -> None:
    d = np.arange(1.0, 21.0)  # 20 spots, one bin: the ceil(21 * 0.9) = 19th smallest
    intervals = calibrate(d, np.zeros(20), level=0.9, n_bins=1)
    assert intervals.radius.tolist() == [19.0]
    np.testing.assert_array_equal(intervals.radius_for(np.array([0.3, np.nan])), [19.0, np.nan])


def test_round_trip_through_the_manifest_record() -> None:
    intervals = calibrate(*heteroscedastic(500, 2))
    again = ConformalIntervals.from_dict(intervals.to_dict())
    c = np.linspace(-0.5, 1.5, 41)
    np.testing.assert_array_equal(again.radius_for(c), intervals.radius_for(c))


@pytest.mark.parametrize("kwargs, words", [
    ({"level": 1.0}, "between 0 and 1"),
    ({"level": 0.0}, "between 0 and 1"),
])
def test_bad_levels_are_refused(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        calibrate(*heteroscedastic(100, 3), **kwargs)


def test_too_few_spots_are_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        calibrate(np.ones(5), np.ones(5), level=0.9)
    with pytest.raises(ValueError, match="equal 1-D"):
        calibrate(np.ones(5), np.ones(4))


def test_evaluation_reports_coverage_and_width_on_the_test_map(tiny_model, tmp_path) -> None:
    from plumelink.models.evaluate import evaluate_package

    maps, model = tiny_model
    metrics, emaps = evaluate_package(model, maps["test"], tmp_path / "report")
    iv = metrics["intervals"]
    assert iv["calibration"]["level"] == 0.9 and iv["calibration"]["n_calibration"] > 0
    radius = emaps.interval_radius
    ok = np.isfinite(radius) & np.isfinite(emaps.euclid)
    assert iv["test"]["coverage"] == pytest.approx(float(np.mean(emaps.euclid[ok] <= radius[ok])))
    assert iv["test"]["median_radius"] == pytest.approx(float(np.median(radius[ok])))
    text = (tmp_path / "report" / "report.html").read_text("utf-8")
    assert "Prediction intervals" in text
    # per ~2 nm band: one coverage per band of the primary axis, and the report says the range
    bands = iv["test"]["per_band"]
    assert len(bands["coverage"]) == len(bands["nm"]) == 81
    assert all(0.0 <= c <= 1.0 for c in bands["coverage"])
    assert bands["min_coverage"] == min(bands["coverage"])
    lo, hi = bands["nm"][bands["worst_band"]]
    assert f"worst band {lo:.1f}–{hi:.1f} nm" in text
    wl = emaps.primary_wavelength_nm
    assert bands["nm"][0][0] == pytest.approx(wl[0]) and bands["nm"][-1][1] == pytest.approx(wl[-1])


def _spectra_with_band_errors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and predicted spectra (n, 40) whose error grows with 1 - confidence, and is
    ten times larger in the last of four bands (where a transfer extrapolates)."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    spread = (1.0 + 4.0 * (1 - conf))[:, None] * np.repeat([1.0, 1.0, 1.0, 10.0], 10)
    true = rng.normal(100.0, 5.0, (n, 40))
    return true, true + rng.normal(0.0, 1.0, (n, 40)) * spread, conf


def test_band_distances_split_the_euclidean_distance() -> None:
    true, pred, _ = _spectra_with_band_errors(50, 4)
    px = band_edges(40, 4)
    assert px.tolist() == [0, 10, 20, 30, 40]
    d = band_distances(true, pred, px)
    assert d.shape == (50, 4)
    np.testing.assert_allclose((d**2).sum(axis=1), ((true - pred) ** 2).sum(axis=1))
    np.testing.assert_allclose(d[:, 1], np.linalg.norm(true[:, 10:20] - pred[:, 10:20], axis=1))
    with pytest.raises(ValueError, match="do not fit"):
        band_edges(3, 4)


def test_band_intervals_cover_each_band_and_follow_its_error() -> None:
    px = band_edges(40, 4)
    true, pred, conf = _spectra_with_band_errors(3000, 5)
    intervals = calibrate(np.linalg.norm(true - pred, axis=1), conf,
                          band_scores=band_distances(true, pred, px), band_px=px,
                          band_nm=np.array([[0, 1], [1, 2], [2, 3], [3, 4]], float))
    assert intervals.band_radius.shape == (5, 4)
    # the extrapolated band is ~10 x wider, and every band is narrower where confidence is high
    assert (intervals.band_radius[:, 3] > 5 * intervals.band_radius[:, 0]).all()
    assert (intervals.band_radius[-1] < intervals.band_radius[0]).all()
    t2, p2, c2 = _spectra_with_band_errors(20_000, 6)
    result = band_coverage(intervals, band_distances(t2, p2, px), c2)
    assert all(0.88 <= c <= 0.93 for c in result["coverage"])
    # round trip through the manifest and transfer records, NaN confidence stays NaN
    again = ConformalIntervals.from_dict(intervals.to_dict())
    radii = again.band_radius_for(np.array([0.1, np.nan, 0.95]))
    np.testing.assert_array_equal(radii[0], intervals.band_radius_for(np.array([0.1]))[0])
    assert np.isnan(radii[1]).all() and radii.shape == (3, 4)
    np.testing.assert_array_equal(again.band_nm, intervals.band_nm)


def test_band_scores_must_match_the_spots_and_bands() -> None:
    d, c = heteroscedastic(100, 7)
    with pytest.raises(ValueError, match="do not match"):
        calibrate(d, c, band_scores=np.ones((100, 3)), band_px=band_edges(40, 4))
    with pytest.raises(ValueError, match="need their band edges"):
        calibrate(d, c, band_scores=np.ones((100, 4)))
    with pytest.raises(ValueError, match="without wavelength bands"):
        calibrate(d, c).band_radius_for(np.ones(3))
