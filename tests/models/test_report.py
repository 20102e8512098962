"""The evaluation report: one self-contained HTML file with the table and embedded figures."""

from __future__ import annotations

import base64
import re

import numpy as np

from plumelink.models.evaluate import MODELS, EvaluationMaps, SpotSpectra
from plumelink.models.report import (
    FIGURES,
    category_colours,
    elements_table,
    metrics_table,
    write_report,
)
from plumelink.pipeline.element_maps import Resolution, line_window
from plumelink.pipeline.line_catalogue import parse_line

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inputs() -> tuple[dict, EvaluationMaps]:
    rng = np.random.default_rng(0)
    shape = (6, 9)
    wl = np.linspace(250, 400, 300)
    metrics = {
        "models": {name: {"euclid": 10.0 + i, "cosine": -0.9, "rse": 0.1 * (i + 1),
                          "k_score": 0.9} for i, name in enumerate(MODELS)},
        "n_spectra": 54,
        "system": "secondary",
        "test_map": "/x/test.h5",
        "kmeans": {"k": 3, "silhouette": {"2": 0.4, "3": 0.5}, "n_train_spectra": 100},
        "compression": {"n_px": 300, "latent_dim": 64, "ratio": 300 / 64,
                        "bytes_per_spectrum_float32": 1200, "bytes_per_latent_float32": 256},
        "confidence": {"definition": "exp(-d)", "spearman_vs_euclid": -0.4,
                       "error_of": "one_step_mlp"},
        "recommended": {"model": "one_step_mlp", "validation_rse": {"pls": 0.2,
                                                                    "one_step_mlp": 0.15}},
        "package": {"folder": "/x/model", "created": "today", "manifest_sha256": "ab" * 32},
        "validation_rse": {"pls": 0.2},
        "timings_s": {"pls": {"per_spectrum_us": 12.0}},
    }
    labels = rng.integers(0, 3, shape).astype(np.int32)
    pred = labels.copy()
    pred[0, :3] = (pred[0, :3] + 1) % 3
    conf = rng.random(shape).astype(np.float32)
    conf[2, 2] = np.nan  # a spot without a pair
    maps = EvaluationMaps(
        shape=shape, primary_wavelength_nm=wl,
        emissivity_true=rng.random(shape).astype(np.float32),
        emissivity_pred=rng.random(shape).astype(np.float32),
        euclid=rng.random(shape).astype(np.float32), cosine=-rng.random(shape).astype(np.float32),
        labels_true=labels, labels_pred=pred, confidence=conf,
        spectra=[SpotSpectra(f"mineral {i}", i, i, rng.random(300), rng.random(300))
                 for i in range(3)],
        rse_per_band={name: rng.random(30) for name in MODELS},
        rse_band_nm=np.linspace(252.5, 397.5, 30),
        secondary_range_nm=(260.0, 370.0),
    )
    window = line_window(parse_line("Ca II 393.37"), wl, Resolution(np.full(300, 1.0), "t"))
    maps.element_windows = (window,)
    maps.elements_true = {window.label: rng.random(shape).astype(np.float32)}
    maps.elements_pred = {window.label: rng.random(shape).astype(np.float32)}
    metrics["element_maps"] = {"lines": {window.label: {"pearson": 0.9123, "spearman": 0.88,
                                                        "n": 54}}}
    return metrics, maps


def test_report_is_one_file_with_the_table_and_every_figure(tmp_path) -> None:
    metrics, maps = _inputs()
    maps.model = "one_step_mlp"
    path = write_report(tmp_path, metrics, maps)
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.count("<table") == 2  # the metrics and the element maps' agreement
    for name in MODELS:
        assert f"<td>{name}</td>" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(FIGURES) == 7
    for (name, _), data in zip(FIGURES, images, strict=True):
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC)
        assert (tmp_path / f"{name}.png").read_bytes() == png
    assert "src=\"http" not in text and "<script" not in text  # self-contained
    assert "compression ratio" in text and "4.688" in text
    assert ("Spearman rank correlation with the actual\nEuclidean error of one_step_mlp: -0.40"
            in text)
    assert "Total emissivity: original vs transferred (one_step_mlp)" in text
    # which model to use: the recommended one, its validation RSEs best first, its test RSE
    assert ("<code>one_step_mlp</code>, the lowest validation RSE (one_step_mlp 0.1500, pls "
            "0.2000); its test RSE here is 0.2000") in text
    assert "<td>0.912</td>" in elements_table(metrics)


def test_cluster_labels_get_one_flat_colour_each() -> None:
    cmap, norm = category_colours(4)
    assert cmap.N == 4
    colours = [cmap(norm(k)) for k in range(4)]
    assert len(set(colours)) == 4
    assert cmap(norm(1.2)) == colours[1]  # no colour between two labels


def test_table_rows_are_sorted_by_rse() -> None:
    metrics, _ = _inputs()
    metrics["models"]["mean"]["rse"] = 0.01
    table = metrics_table(metrics)
    rows = re.findall(r"<tr><td>([a-z_]+)</td>", table)
    assert rows[0] == "mean" and sorted(rows) == sorted(MODELS)


def test_report_progress_counts_figures(tmp_path) -> None:
    metrics, maps = _inputs()
    maps.spectra = maps.spectra[:1]  # fewer than three groups still draws
    seen: list[tuple[int, int]] = []
    write_report(tmp_path, metrics, maps, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(FIGURES), len(FIGURES))
