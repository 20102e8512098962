"""Baselines recover relations they are built for, and select hyperparameters on validation."""

from __future__ import annotations

import numpy as np

from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel, select
from plumelink.models.metrics import rse


def _linear_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 3))
    x = latent @ np.random.default_rng(98).normal(size=(3, 40)) + 0.01 * rng.normal(size=(n, 40))
    y = latent @ np.random.default_rng(99).normal(size=(3, 30))
    return x.astype(np.float32), y.astype(np.float32)


def test_pls_recovers_a_low_rank_linear_map_and_selection_prefers_enough_components() -> None:
    train, val = _linear_pairs(400, 0), _linear_pairs(200, 1)
    model, n, scores = select(PLSModel, [1, 3, 6], train, val, rse)
    assert n in (3, 6)
    assert scores[1] > 10 * scores[n]
    assert rse(val[1], model.predict(val[0])) < 1e-3
    # the stored affine map reproduces sklearn's own prediction
    from sklearn.cross_decomposition import PLSRegression

    reference = PLSRegression(n_components=n, scale=False).fit(*train).predict(val[0])
    np.testing.assert_allclose(model.predict(val[0]), reference, rtol=1e-3, atol=1e-4)


def test_knn_selection_updates_its_best_score() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(600, 2)).astype(np.float32)
    y = np.sin(3 * x).astype(np.float32) + 0.3 * rng.normal(size=(600, 2)).astype(np.float32)
    _, k, scores = select(KNNModel, [1, 15, 300], (x[:400], y[:400]), (x[400:], y[400:]), rse)
    assert k == 15, scores  # noisy targets: 1 overfits, 300 oversmooths
    assert scores[15] < min(scores[1], scores[300])


def test_pds_maps_a_shifted_overlap_and_predicts_outside_it_globally() -> None:
    rng = np.random.default_rng(4)
    secondary_nm = np.linspace(260.0, 370.0, 221)
    primary_nm = np.linspace(245.0, 407.0, 163)
    amplitudes = rng.uniform(0, 1, size=(500, 3))
    centres = np.array([280.0, 320.0, 355.0])

    def render(axis: np.ndarray, shift: float) -> np.ndarray:
        return (amplitudes[:, :, None] * np.exp(
            -0.5 * ((axis[None, None, :] - centres[None, :, None] - shift) / 2.0) ** 2
        )).sum(axis=1)

    x = render(secondary_nm, 0.0).astype(np.float32)
    y = render(primary_nm, 0.3).astype(np.float32)
    y[:, primary_nm > 380] = (amplitudes[:, :1] * 0.5).astype(np.float32)  # primary-only part
    model = PDSModel(primary_nm, secondary_nm, half_window=3, ridge=1e-6).fit(x[:400], y[:400])
    assert (~model.inside).sum() == ((primary_nm < 260) | (primary_nm > 370)).sum()
    assert rse(y[400:], model.predict(x[400:])) < 1e-3


def test_mean_predictor_is_the_floor() -> None:
    x, y = _linear_pairs(300, 5)
    pred = MeanPredictor().fit(x, y).predict(x[:10])
    np.testing.assert_allclose(pred, np.repeat(y.mean(axis=0, keepdims=True), 10, 0), rtol=1e-6)
    assert rse(y, MeanPredictor().fit(x, y).predict(x)) > 0.99


def test_pds_and_knn_work_in_chunks_with_the_same_result(monkeypatch) -> None:
    """Chunked PDS normal equations and chunked KNN queries (for 300k-spectrum maps) must give
    what one pass over all rows gives."""
    rng = np.random.default_rng(7)
    secondary_nm = np.linspace(260.0, 370.0, 60)
    primary_nm = np.linspace(245.0, 407.0, 80)
    x = rng.normal(size=(300, 60)).astype(np.float32)
    y = (x @ rng.normal(size=(60, 80))).astype(np.float32)
    one_pass = PDSModel(primary_nm, secondary_nm, half_window=2).fit(x, y)
    monkeypatch.setattr(PDSModel, "FIT_CHUNK", 7)
    chunked = PDSModel(primary_nm, secondary_nm, half_window=2).fit(x, y)
    np.testing.assert_allclose(chunked.weights, one_pass.weights, rtol=1e-5, atol=1e-6)

    knn = KNNModel(3).fit(x[:200], y[:200])
    whole = knn.predict(x[200:])
    monkeypatch.setattr(KNNModel, "PREDICT_CHUNK", 9)
    np.testing.assert_array_equal(knn.predict(x[200:]), whole)
    assert whole.shape == (100, 80) and whole.dtype == np.float32
