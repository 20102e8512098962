"""The evaluation report: one self-contained report.html (PNG figures as base64 data URIs) and
the same PNGs next to it, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from plumelink.models.evaluate import EvaluationMaps

FIGURES = (
    ("emissivity", "Total emissivity: original vs transferred (vae_mlp)"),
    ("distances", "Euclidean and negative-cosine distance per spot (vae_mlp)"),
    ("kmeans", "k-means labels of original and transferred spectra; disagreements marked"),
    ("confidence", "Transfer confidence per spot, and confidence vs actual error"),
    ("spectra", "Original vs transferred spectra at spots of three different groups"),
)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _image(ax: Any, data: np.ndarray, title: str, cmap: str = "viridis", **kw: Any) -> None:
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, interpolation="nearest",
                   origin="upper", aspect="equal", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (spot)")
    ax.set_ylabel("y (line)")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def _shared_limits(*maps: np.ndarray) -> dict[str, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in maps])
    if values.size == 0:
        return {}
    return {"vmin": float(np.percentile(values, 1)), "vmax": float(np.percentile(values, 99))}


def figure_emissivity(maps: EvaluationMaps) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lim = _shared_limits(maps.emissivity_true, maps.emissivity_pred)
    _image(axes[0], maps.emissivity_true, "original primary", "inferno", **lim)
    _image(axes[1], maps.emissivity_pred, "transferred primary", "inferno", **lim)
    return _png(fig)


def figure_distances(maps: EvaluationMaps) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _image(axes[0], maps.euclid, "Euclidean distance", "magma")
    _image(axes[1], maps.cosine, "negative cosine (−1 = same shape)", "magma")
    return _png(fig)


def figure_kmeans(maps: EvaluationMaps, k: int) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    true = np.where(maps.labels_true >= 0, maps.labels_true, np.nan).astype(float)
    pred = np.where(maps.labels_pred >= 0, maps.labels_pred, np.nan).astype(float)
    lim = {"vmin": -0.5, "vmax": k - 0.5}
    _image(axes[0], true, f"labels of original spectra (k={k})", "tab10", **lim)
    _image(axes[1], pred, "labels of transferred spectra", "tab10", **lim)
    differ = (maps.labels_true >= 0) & (maps.labels_true != maps.labels_pred)
    _image(axes[2], pred, f"disagreements marked ({int(differ.sum())} spots)", "tab10", **lim)
    yy, xx = np.nonzero(differ)
    axes[2].scatter(xx, yy, marker="x", c="k", s=12, linewidths=0.8)
    return _png(fig)


def figure_confidence(maps: EvaluationMaps) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _image(axes[0], maps.confidence, "confidence (higher = more trustworthy)", "cividis")
    ok = np.isfinite(maps.confidence) & np.isfinite(maps.euclid)
    axes[1].scatter(maps.confidence[ok], maps.euclid[ok], s=4, alpha=0.5)
    axes[1].set_xlabel("confidence")
    axes[1].set_ylabel("Euclidean distance (actual error)")
    axes[1].set_title("confidence vs error", fontsize=9)
    return _png(fig)


def figure_spectra(maps: EvaluationMaps) -> bytes:
    rows = max(1, len(maps.spectra))
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows), squeeze=False)
    wl = maps.primary_wavelength_nm
    for ax, spot in zip(axes[:, 0], maps.spectra, strict=False):
        ax.plot(wl, spot.true, lw=0.7, label="original")
        ax.plot(wl, spot.predicted, lw=0.7, alpha=0.8, label="transferred")
        ax.set_title(f"{maps.spectra_by} {spot.label} at spot (y={spot.iy}, x={spot.ix})",
                     fontsize=9)
        ax.set_ylabel("counts")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("wavelength (nm)")
    return _png(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metrics_table(metrics: dict[str, Any]) -> str:
    """Table 1 of the paper: one row per model, best RSE first."""
    rows = sorted(metrics["models"].items(), key=lambda kv: kv[1]["rse"])
    val = metrics.get("validation_rse", {})
    timing = metrics.get("timings_s", {})
    head = ("<tr><th>model</th><th>Euclidean ↓</th><th>cosine ↓</th><th>RSE ↓</th>"
            "<th>k-score ↑</th><th>validation RSE</th><th>µs / spectrum</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(m['euclid'])}</td><td>{_fmt(m['cosine'])}"
        f"</td><td>{_fmt(m['rse'])}</td><td>{_fmt(m['k_score'])}</td>"
        f"<td>{_fmt(val.get(name))}</td>"
        f"<td>{_fmt((timing.get(name) or {}).get('per_spectrum_us'))}</td></tr>"
        for name, m in rows)
    return f'<table class="metrics">{head}{body}</table>'


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#eee}"""


def write_report(out_dir: str | Path, metrics: dict[str, Any], maps: EvaluationMaps,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the figures (PNG) and report.html into out_dir; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = int(metrics.get("kmeans", {}).get("k", 10))
    draw = {
        "emissivity": lambda: figure_emissivity(maps),
        "distances": lambda: figure_distances(maps),
        "kmeans": lambda: figure_kmeans(maps, k),
        "confidence": lambda: figure_confidence(maps),
        "spectra": lambda: figure_spectra(maps),
    }
    sections = []
    for i, (name, caption) in enumerate(FIGURES):
        png = draw[name]()
        (out / f"{name}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        sections.append(f"<h2>{html.escape(caption)}</h2>"
                        f'<img alt="{name}" src="data:image/png;base64,{data}">')
        if progress is not None:
            progress(i + 1, len(FIGURES))
    pkg = metrics.get("package", {})
    comp = metrics.get("compression", {})
    conf = metrics.get("confidence", {})
    km = metrics.get("kmeans", {})
    sil = ", ".join(f"k={k_}: {_fmt(v)}" for k_, v in km.get("silhouette", {}).items())
    text = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>plumelink evaluation</title>
<style>{_STYLE}</style></head><body>
<h1>Spectral transfer evaluation</h1>
<p>Model package <code>{_fmt(pkg.get('folder'))}</code> (created {_fmt(pkg.get('created'))},
manifest sha256 {_fmt(str(pkg.get('manifest_sha256', ''))[:12])}…), secondary system
<code>{_fmt(metrics.get('system'))}</code>, test map <code>{_fmt(metrics.get('test_map'))}</code>:
{metrics.get('n_spectra')} paired spectra, evaluated {_fmt(metrics.get('evaluated'))}.</p>
<h2>Metrics (unscaled, baseline-corrected primary spectra)</h2>
{metrics_table(metrics)}
<p>k-means fitted on the primary training map ({km.get('n_train_spectra')} spectra), k =
{km.get('k')} chosen by silhouette on the validation map ({sil}).</p>
<p>Shared latent library: a primary spectrum of {comp.get('n_px')} channels stored as
{comp.get('latent_dim')} latent values, compression ratio {_fmt(comp.get('ratio'))}
({comp.get('bytes_per_spectrum_float32')} vs {comp.get('bytes_per_latent_float32')} bytes as
float32).</p>
<p>Confidence: {_fmt(conf.get('definition'))}. Spearman rank correlation with the actual
Euclidean error of vae_mlp: {_fmt(conf.get('spearman_vs_vae_mlp_euclid'))} (negative is
good).</p>
{''.join(sections)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["FIGURES", "metrics_table", "write_report"]
