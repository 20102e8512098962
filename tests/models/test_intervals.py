"""Split-conformal prediction intervals: the guarantee on exchangeable data, radii that follow
the confidence, clear errors, and the evaluation's coverage on the test map."""

from __future__ import annotations

import numpy as np
import pytest

from plumelink.models.intervals import ConformalIntervals, calibrate, coverage


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
    assert "Prediction intervals" in (tmp_path / "report" / "report.html").read_text("utf-8")
