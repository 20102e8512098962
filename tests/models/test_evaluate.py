"""Evaluation of a tiny model package on the tiny simulated test map."""

from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest

from plumelink.models.clusters import fit_kmeans, sample_primary
from plumelink.models.evaluate import (
    METRIC_KEYS,
    MODELS,
    TransferModels,
    evaluate_package,
    package_identity,
)
from plumelink.models.metrics import label_agreement, rse
from plumelink.models.package import PackageMismatchError, load_package
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs

K_VALUES = (2, 3, 4)


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    maps, model = tiny_model
    out = tmp_path_factory.mktemp("report")
    calls: list[tuple] = []
    metrics, result_maps = evaluate_package(model, maps["test"], out, k_values=K_VALUES,
                                            progress=lambda *a: calls.append(a))
    return metrics, result_maps, out, calls


@pytest.fixture(scope="module")
def test_pairs(tiny_model):
    maps, _ = tiny_model
    return preprocess_pairs(load_pairs(maps["test"]))


def test_metrics_json_has_exactly_the_required_keys_and_finite_values(evaluated, tiny_model):
    metrics, _, out, calls = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    package = load_package(tiny_model[1])
    assert set(MODELS) == set(metrics["models"])  # the fixture's package has every model
    assert set(TransferModels.from_package(package).names) == set(metrics["models"])
    for name, values in metrics["models"].items():
        assert set(values) == set(METRIC_KEYS), name
        assert all(math.isfinite(v) for v in values.values()), name
    assert metrics["n_spectra"] == 128
    assert metrics["package"] == package_identity(package)
    assert set(metrics["timings_s"]) >= set(MODELS)
    assert {c[0] for c in calls} == {"kmeans", "evaluate", "report"}
    assert calls[-1][0] == "report"


def test_mean_predictor_rse_is_near_one(evaluated):
    metrics = evaluated[0]
    assert metrics["models"]["mean"]["rse"] == pytest.approx(1.0, abs=0.3)
    assert metrics["models"]["pls"]["rse"] < metrics["models"]["mean"]["rse"]


def test_metrics_agree_with_a_direct_numpy_computation(evaluated, tiny_model, test_pairs):
    metrics, maps, _, _ = evaluated
    models = TransferModels.from_package(load_package(tiny_model[1]))
    y = test_pairs.primary.astype(np.float64)
    shown = metrics["shown_model"]
    per_spot = {}
    for name in sorted({"pls", "vae_mlp", shown}):
        pred = models.predict(name, test_pairs.secondary).astype(np.float64)
        euclid = np.sqrt(((y - pred) ** 2).sum(axis=1))
        cosine = -(y * pred).sum(axis=1) / (np.linalg.norm(y, axis=1)
                                            * np.linalg.norm(pred, axis=1))
        per_spot[name] = euclid, cosine
        m = metrics["models"][name]
        assert m["euclid"] == pytest.approx(euclid.mean(), rel=1e-4)
        assert m["cosine"] == pytest.approx(cosine.mean(), rel=1e-4)
        total = ((y - y.mean(axis=0)) ** 2).sum()
        assert m["rse"] == pytest.approx(((y - pred) ** 2).sum() / total, rel=1e-4)
        assert m["rse"] == pytest.approx(rse(y, pred), rel=1e-6)
    # per-spot maps of the shown (recommended) model at a few spots
    assert shown == metrics["recommended"]["model"]
    euclid, cosine = per_spot[shown]
    for j in (0, 17, 101):
        iy, ix = test_pairs.iy[j], test_pairs.ix[j]
        assert maps.euclid[iy, ix] == pytest.approx(euclid[j], rel=1e-4)
        assert maps.cosine[iy, ix] == pytest.approx(cosine[j], rel=1e-4)


def test_kmeans_scores_true_spectra_against_themselves_as_one(tiny_model, test_pairs):
    maps, _ = tiny_model
    scorer = fit_kmeans(sample_primary(maps["train"], 1000), sample_primary(maps["val"], 1000),
                        K_VALUES)
    assert scorer.k in K_VALUES
    assert set(scorer.silhouette) == set(K_VALUES)
    labels = scorer.labels(test_pairs.primary)
    assert label_agreement(labels, scorer.labels(test_pairs.primary.copy())) == 1.0
    assert set(np.unique(labels)) <= set(range(scorer.k))


def test_kmeans_record_and_extras(evaluated):
    metrics = evaluated[0]
    km = metrics["kmeans"]
    assert km["k"] in K_VALUES and set(km["silhouette"]) == {str(k) for k in K_VALUES}
    assert km["train_map"].endswith("train.h5") and km["val_map"].endswith("val.h5")
    comp = metrics["compression"]
    assert comp["ratio"] == pytest.approx(4062 / 64)
    assert comp["bytes_per_latent_float32"] == 256
    conf = metrics["confidence"]
    assert conf["method"] == "consistency"
    assert -1.0 <= conf["spearman_vs_euclid"] <= 1.0
    assert set(conf["candidates"]) >= {"consistency", "prior", "posterior_var"}


def test_evaluate_maps_have_the_test_map_shape(evaluated):
    _, maps, _, _ = evaluated
    assert maps.euclid.shape == (8, 16)
    assert np.isfinite(maps.euclid).all() and np.isfinite(maps.confidence).all()
    assert ((maps.confidence > 0) & (maps.confidence <= 1)).all()
    assert (maps.labels_true >= 0).all()
    assert 3 <= len(maps.spectra) <= 4 and maps.spectra_by == "mineral"
    assert len({s.label for s in maps.spectra}) == len(maps.spectra)  # one spot per mineral
    assert len({s.iy for s in maps.spectra}) > 1  # drawn across the map, not from line 0


def test_evaluation_compares_element_maps_and_finds_where_models_lose(evaluated):
    metrics, maps, _, _ = evaluated
    labels = [w.label for w in maps.element_windows]
    assert {"Si I 288.16", "Al I 309.27", "Ca II 393.37"} <= set(labels)
    lines = metrics["element_maps"]["lines"]
    assert set(lines) <= set(labels) and lines
    for label, record in lines.items():
        assert -1.0 <= record["pearson"] <= 1.0 and record["n"] == 128
        a, b = maps.elements_true[label], maps.elements_pred[label]
        assert np.isclose(record["pearson"], np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert set(maps.rse_per_band) == set(metrics["models"])
    wl = maps.primary_wavelength_nm
    assert wl[0] < maps.rse_band_nm[0] < maps.rse_band_nm[-1] < wl[-1]
    for per in maps.rse_per_band.values():
        assert per.shape == maps.rse_band_nm.shape and np.nanmin(per) >= 0
    lo, hi = maps.secondary_range_nm
    assert 255 < lo < 265 and 365 < hi < 375  # the secondary's axis: the rest is primary-only


def test_axis_mismatch_is_a_clear_error(tiny_model, tmp_path):
    maps, model = tiny_model
    bad = tmp_path / "shifted.h5"
    shutil.copy(maps["test"], bad)
    with h5py.File(bad, "r+") as f:
        f["map/secondary/wavelength"][...] += 0.5
    with pytest.raises(PackageMismatchError, match=r"secondary \(secondary\) axis.*nm"):
        evaluate_package(model, bad, None, k_values=K_VALUES)


def test_missing_training_map_names_the_override(tiny_model, tmp_path):
    maps, model = tiny_model
    with pytest.raises(FileNotFoundError, match="--train"):
        evaluate_package(model, maps["test"], None, train_path=tmp_path / "nope.h5")
