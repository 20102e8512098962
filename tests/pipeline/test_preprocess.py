"""Preprocessing: the paper's baseline against direct per-spectrum references, and the scaler.

Tolerance of the vectorised baseline against the float64 references: every pixel within
max(1e-3 counts, 1 float32 ulp of the reference value, 5e-7 of the spectrum's largest reference
value): the smoothing is a float32 FFT, whose error scales with the spectrum's range (measured
2.6e-7 of it, 0.014 counts on humps up to the uint16 ceiling; shot noise is >= 1 count).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.pipeline.preprocess import SpectralScaler, baseline, correct_baseline


def _loop_baseline(s: np.ndarray, min_window: int, smooth_window: int, std: float) -> np.ndarray:
    """The definition, one pixel at a time (pandas' alignment, truncated edge windows)."""
    s = np.asarray(s, dtype=np.float64)
    n = s.size
    right = np.array([s[max(0, i - min_window + 1) : i + 1].min() for i in range(n)])
    left = np.array([s[i : i + min_window].min() for i in range(n)])
    m = (right + left) / 2
    k = np.arange(smooth_window)
    w = np.exp(-0.5 * ((k - (smooth_window - 1) / 2) / std) ** 2)
    out = np.empty(n)
    for i in range(n):
        idx = i + (smooth_window - 1) // 2 - smooth_window + 1 + k
        inside = (idx >= 0) & (idx < n)
        out[i] = (w[inside] * m[idx[inside]]).sum() / w[inside].sum()
    return out


def _pandas_baseline(
    s: np.ndarray, min_window: int = 100, smooth_window: int = 50, std: float = 50 / 6
) -> np.ndarray:
    """The definition as the paper's pandas code reads (module docstring of preprocess)."""
    pd = pytest.importorskip("pandas")
    x = pd.Series(np.asarray(s, dtype=np.float64))
    right = x.rolling(min_window, min_periods=1).min()
    left = x[::-1].rolling(min_window, min_periods=1).min()[::-1]
    m = (right + left) / 2
    g = m.rolling(smooth_window, min_periods=1, win_type="gaussian", center=True)
    return g.mean(std=std).to_numpy()


def _assert_agrees(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == ref.shape
    tol = np.maximum(1e-3, np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64))
    tol = np.maximum(tol, 5e-7 * np.abs(np.atleast_2d(ref)).max(axis=-1, keepdims=True)
                     .reshape((*ref.shape[:-1], 1)))
    excess = np.abs(got.astype(np.float64) - ref) - tol
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0, f"off by {excess[worst]:.3g} beyond tolerance at {worst}"


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    physics = BenchPhysics(seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 20000, 24)
    return physics.shoot(x, rng.uniform(0, 20000, 24)).spectra


@pytest.mark.parametrize("system", ["primary", "secondary"])
def test_matches_pandas_reference_on_simulated_spectra(
    simulated: dict[str, np.ndarray], system: str
) -> None:
    raw = simulated[system]
    _assert_agrees(baseline(raw), np.stack([_pandas_baseline(s) for s in raw]))


def test_matches_pandas_reference_over_the_whole_uint16_range() -> None:
    rng = np.random.default_rng(1)
    px = np.arange(3000)
    spectra = []
    for _ in range(12):
        hump = rng.uniform(0, 60000) * np.exp(-(((px - rng.uniform(0, 3000)) / 900) ** 2))
        s = 500 + hump + rng.normal(0, 50, px.size)
        s[rng.integers(0, px.size, 30)] += rng.uniform(0, 5000, 30)
        spectra.append(np.clip(s, 0, 65535))
    spectra.extend(rng.integers(0, 65536, (4, px.size)))  # white noise over the full range
    raw = np.stack(spectra).astype(np.uint16)
    _assert_agrees(baseline(raw), np.stack([_pandas_baseline(s) for s in raw]))


@pytest.mark.parametrize(
    ("n_px", "min_window", "smooth_window", "std"),
    [(300, 100, 50, 50 / 6), (257, 7, 51, 3.0), (120, 200, 50, 50 / 6), (40, 3, 64, 20.0),
     (5, 1, 1, 1.0), (1, 100, 50, 50 / 6)],
)
def test_matches_pixel_loop_reference_including_edges_and_odd_windows(
    n_px: int, min_window: int, smooth_window: int, std: float
) -> None:
    rng = np.random.default_rng(n_px)
    raw = (1000 + 300 * np.sin(np.arange(n_px) / 17) + rng.integers(0, 400, (3, n_px)))
    raw = raw.astype(np.uint16)
    got = baseline(raw, min_window, smooth_window, std)
    _assert_agrees(got, np.stack([_loop_baseline(s, min_window, smooth_window, std) for s in raw]))


def test_flat_spectrum_with_lines_keeps_the_lines_and_nothing_else() -> None:
    px = np.arange(2000)
    lines = {300: 5000.0, 700: 1200.0, 1200: 20000.0, 1700: 300.0}
    s = np.full(px.size, 1000.0)
    for centre, height in lines.items():
        s += height * np.exp(-0.5 * ((px - centre) / 2.0) ** 2)
    b = baseline(s)
    assert np.all(b <= s + 1e-3)  # the baseline lies under the spectrum
    np.testing.assert_allclose(b, 1000.0, atol=1e-3)
    corrected = correct_baseline(s)
    far = np.ones(px.size, bool)
    for centre in lines:
        far[centre - 15 : centre + 16] = False
    assert np.abs(corrected[far]).max() <= 1e-3
    for centre, height in lines.items():
        assert corrected[centre] == pytest.approx(height, abs=1e-3)


def test_slope_leaves_the_offset_of_a_two_sided_minimum_centred_half_a_pixel_left() -> None:
    # Rising slope a: right-aligned min = s[i-99], left-aligned min = s[i]: mean s[i] - 49.5a;
    # the even 50-px Gaussian window is centred at i - 0.5: baseline = s[i] - 50a inside.
    a = 0.5
    s = 1000 + a * np.arange(1500)
    inside = slice(99 + 25, 1500 - 100 - 24)
    np.testing.assert_allclose(correct_baseline(s)[inside], 50 * a, atol=1e-3)


def test_edges_renormalise_partial_windows() -> None:
    s = np.full(500, 1234.0)
    np.testing.assert_array_equal(baseline(s), np.float32(1234.0))  # no droop at either end
    ramp = np.arange(500, dtype=np.float64)
    got = baseline(ramp)
    _assert_agrees(got, _loop_baseline(ramp, 100, 50, 50 / 6))
    assert got[0] > 0 and got[-1] < ramp[-1]  # edge windows are truncated, not zero-filled


def test_one_spectrum_and_dtypes_give_the_same_baseline(simulated: dict[str, np.ndarray]) -> None:
    raw = simulated["primary"][:3]
    block = baseline(raw)
    one = baseline(raw[1])
    assert one.shape == (raw.shape[1],) and one.dtype == np.float32
    np.testing.assert_allclose(one, block[1], rtol=0, atol=1e-4)
    for dtype in (np.int32, np.float32, np.float64):
        np.testing.assert_allclose(baseline(raw.astype(dtype)), block, rtol=0, atol=1e-4)


def test_chunked_block_equals_spectrum_by_spectrum(simulated: dict[str, np.ndarray]) -> None:
    raw = np.concatenate([simulated["primary"]] * 3)  # several chunks
    block = baseline(raw)
    single = np.stack([baseline(s) for s in raw])
    np.testing.assert_allclose(block, single, rtol=0, atol=1e-4)
    assert baseline(raw[:0]).shape == (0, raw.shape[1])


def test_correct_baseline_is_spectra_minus_baseline(simulated: dict[str, np.ndarray]) -> None:
    raw = simulated["secondary"][:4]
    corrected = correct_baseline(raw)
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected, raw - baseline(raw).astype(np.float64), atol=2e-3)
    # continuum removed down to the noise floor (the minimum sits under the noise), lines kept
    assert 0 < np.median(corrected) < 0.1 * np.median(raw)
    assert corrected.max() > 1000


@pytest.mark.parametrize(
    ("spectra", "kwargs", "match"),
    [
        (np.array([[1.0, np.nan, 3.0]]), {}, "NaN or inf .*spectrum 0, pixel 1"),
        (np.array([1.0, np.inf]), {}, "NaN or inf"),
        (np.zeros((2, 3, 4)), {}, "shape"),
        (np.zeros((2, 0)), {}, "no pixels"),
        (np.zeros(5, complex), {}, "real numbers"),
        (np.zeros(5), {"min_window": 0}, "min_window"),
        (np.zeros(5), {"smooth_window": 2.5}, "smooth_window"),
        (np.zeros(5), {"smooth_std": -1.0}, "smooth_std"),
    ],
)
def test_bad_input_is_refused_by_name(spectra: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        baseline(spectra, **kwargs)


# -- SpectralScaler ----------------------------------------------------------------------------


def _data(n: int = 500, n_px: int = 64, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(2000, 300, (n, n_px)) * rng.uniform(0.01, 10, n_px)
    return x.astype(np.float32)


def test_transform_standardises_and_inverse_is_exact_to_float32_rounding() -> None:
    x = _data()
    scaler = SpectralScaler().fit(x)
    z = scaler.transform(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0, dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0, dtype=np.float64), 1, atol=1e-5)
    back = scaler.inverse_transform(z)
    assert back.dtype == np.float32
    ulp = np.spacing(np.abs(x)).astype(np.float64)
    assert np.all(np.abs(back.astype(np.float64) - x) <= ulp)
    one = scaler.transform(x[7])
    assert one.shape == (x.shape[1],)
    np.testing.assert_array_equal(one, z[7])


def test_streaming_fit_equals_one_shot_fit() -> None:
    x = _data(2600)
    edges = [0, 1, 8, 108, 141, 1300, 2600]  # includes a block above the internal chunk size
    streamed = SpectralScaler().fit(x[a:b] for a, b in itertools.pairwise(edges))
    whole = SpectralScaler().fit(x)
    assert streamed.n_samples == whole.n_samples == 2600
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(streamed.mean, x64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(streamed.scale, x64.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(streamed.scale, whole.scale, rtol=1e-10)


def test_to_dict_round_trips_through_json_and_can_keep_streaming() -> None:
    x = _data(300)
    first = SpectralScaler().fit(x[:200])
    d = json.loads(json.dumps(first.to_dict()))
    assert d["mode"] == "train" and d["n_samples"] == 200
    again = SpectralScaler.from_dict(d)
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.scale, first.scale)
    np.testing.assert_array_equal(again.transform(x), first.transform(x))
    again.partial_fit(x[200:])  # e.g. more training maps after a restart
    np.testing.assert_allclose(again.scale, SpectralScaler().fit(x).scale, rtol=1e-10)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"kind": "other"}, "SpectralScaler"), ({"mode": "live"}, "mode"),
     ({"n_samples": 0}, "n_samples"), ({"scale": [1.0, 0.0, 1.0]}, "scale"),
     ({"mean": [1.0]}, "length"), ({"var": [1.0, float("nan"), 1.0]}, "finite")],
)
def test_from_dict_refuses_broken_parameters(change: dict, match: str) -> None:
    d = SpectralScaler().fit(_data(10, 3)).to_dict() | change
    with pytest.raises(ValueError, match=match):
        SpectralScaler.from_dict(d)


def test_zero_variance_channel_gets_scale_one_and_round_trips() -> None:
    x = _data(100, 5)
    x[:, 2] = 1234.5
    x[:, 4] = 0.0
    scaler = SpectralScaler().fit(x[:37]).partial_fit(x[37:])
    assert scaler.scale[2] == 1.0 and scaler.scale[4] == 1.0
    z = scaler.transform(x)
    assert np.isfinite(z).all() and not z[:, 2].any()
    np.testing.assert_array_equal(scaler.inverse_transform(z)[:, 2], x[:, 2])


def test_scaler_refuses_nan_wrong_width_and_unfitted_use() -> None:
    x = _data(20, 6)
    with pytest.raises(RuntimeError, match="not fitted"):
        SpectralScaler().transform(x)
    scaler = SpectralScaler().fit(x)
    with pytest.raises(ValueError, match="7 pixels, the scaler was fitted on 6"):
        scaler.transform(np.zeros((2, 7)))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scaler.transform(bad)
    with pytest.raises(ValueError, match="NaN"):
        SpectralScaler().fit(bad)
    with pytest.raises(ValueError, match="no spectra"):
        SpectralScaler().fit([])
    with pytest.raises(ValueError, match="mode"):
        SpectralScaler("live")  # type: ignore[arg-type]


def test_per_map_mode_uses_each_maps_own_statistics_train_mode_does_not() -> None:
    train, other = _data(400, 8, seed=5), _data(400, 8, seed=6) * 1.5
    z_map, per_map = SpectralScaler.fit_transform_map(other)
    assert per_map.mode == "per-map" and per_map.to_dict()["mode"] == "per-map"
    np.testing.assert_allclose(z_map.mean(axis=0, dtype=np.float64), 0, atol=1e-5)
    z_train = SpectralScaler().fit(train).transform(other)  # the model's statistics, fixed
    assert np.abs(z_train.mean(axis=0)).min() > 0.1


def test_global_spread_keeps_relative_channel_weights_and_round_trips() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(500, 6)) * np.array([1.0, 1.0, 1.0, 1.0, 30.0, 100.0]) + 50.0
    scaler = SpectralScaler("train", spread="global").fit(x)
    z = scaler.transform(x)
    # one scale for all channels: the loud channels stay loud after scaling
    assert np.ptp(scaler.scale) == 0.0
    np.testing.assert_allclose(z.std(axis=0)[5] / z.std(axis=0)[0], x.std(axis=0)[5] / x.std(
        axis=0)[0], rtol=1e-5)
    np.testing.assert_allclose((z**2).mean(), 1.0, rtol=1e-5)  # unit variance on average
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-6, atol=1e-4)  # float32
    again = SpectralScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again.spread == "global"
    np.testing.assert_array_equal(again.transform(x), z)
    with pytest.raises(ValueError, match="spread must be one of"):
        SpectralScaler("train", spread="pixel")  # type: ignore[arg-type]


def test_preprocessor_record_round_trips_and_reads_older_records() -> None:
    from plumelink.pipeline.preprocess import Baseline, Preprocessor

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1000, size=(20, 300)).astype(np.float32)
    scalers = [SpectralScaler("train", "global").fit(correct_baseline(raw)) for _ in range(2)]
    pre = Preprocessor(*scalers, Baseline(min_window=80), fit="in memory")
    record = pre.to_dict()
    assert record["version"] == 1 and record["baseline"]["min_window"] == 80
    back = Preprocessor.from_dict(record, *scalers)
    assert back.baseline == pre.baseline and back.fit == "in memory"
    np.testing.assert_array_equal(back.secondary_inputs(raw), pre.secondary_inputs(raw))
    np.testing.assert_array_equal(
        pre.secondary_inputs(raw),
        scalers[1].transform(correct_baseline(raw, min_window=80)))
    old = {"baseline": {"function": "plumelink.pipeline.preprocess.correct_baseline",
                        "min_window": 100, "smooth_window": 50, "smooth_std": 50 / 6}}
    assert Preprocessor.from_dict(old, *scalers).baseline == Baseline()
    assert Preprocessor.from_dict(None, *scalers).baseline == Baseline()
    with pytest.raises(ValueError, match="version 2"):
        Preprocessor.from_dict({**record, "version": 2}, *scalers)
