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
    from plumelink.models.evaluate import EvaluationMaps, SpotSpectra

FIGURES = (
    ("emissivity", "Total emissivity: original vs transferred ({model})"),
    ("elements", "Element maps from the original and the transferred spectra ({model})"),
    ("rse_wavelength", "Where each model loses: RSE per wavelength"),
    ("distances", "Euclidean and negative-cosine distance per spot ({model})"),
    ("kmeans", "k-means labels of original and transferred spectra; disagreements marked"),
    ("confidence", "Transfer confidence per spot, confidence vs actual error, and the "
                   "calibrated prediction interval"),
    ("spectra", "Original vs transferred spectra at spots of different groups across the map, "
                "with the primary-only ranges and the strongest line enlarged"),
)
ZOOM_HALF_NM = 0.8  # half width of the strong-line inset


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _image(ax: Any, data: np.ndarray, title: str, cmap: Any = "viridis",
           ticks: Any = None, **kw: Any) -> None:
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, interpolation="nearest",
                   origin="upper", aspect="equal", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (spot)")
    ax.set_ylabel("y (line)")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, ticks=ticks)


def _subplots(*args: Any, **kw: Any) -> tuple[Any, Any]:
    """Subplots laid out by matplotlib's constrained layout: titles never run into the axes
    above them."""
    return plt.subplots(*args, layout="constrained", **kw)


def _shared_limits(*maps: np.ndarray) -> dict[str, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in maps])
    if values.size == 0:
        return {}
    return {"vmin": float(np.percentile(values, 1)), "vmax": float(np.percentile(values, 99))}


def figure_emissivity(maps: EvaluationMaps) -> bytes:
    fig, axes = _subplots(1, 2, figsize=(10, 4))
    lim = _shared_limits(maps.emissivity_true, maps.emissivity_pred)
    _image(axes[0], maps.emissivity_true, "original primary", "inferno", **lim)
    _image(axes[1], maps.emissivity_pred, "transferred primary", "inferno", **lim)
    return _png(fig)


def figure_distances(maps: EvaluationMaps) -> bytes:
    fig, axes = _subplots(1, 2, figsize=(10, 4))
    _image(axes[0], maps.euclid, "Euclidean distance", "magma")
    _image(axes[1], maps.cosine, "negative cosine (−1 = same shape)", "magma")
    return _png(fig)


def category_colours(k: int) -> tuple[Any, Any]:
    """(colormap, norm) giving each of k labels one flat colour (labels are categories: no
    colour ramp, no values between them)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    base = plt.get_cmap("tab10" if k <= 10 else "tab20")
    cmap = ListedColormap([base(i % base.N) for i in range(k)])
    return cmap, BoundaryNorm(np.arange(-0.5, k + 0.5), k)


def figure_kmeans(maps: EvaluationMaps, k: int) -> bytes:
    fig, axes = _subplots(1, 3, figsize=(14, 4))
    true = np.where(maps.labels_true >= 0, maps.labels_true, np.nan).astype(float)
    pred = np.where(maps.labels_pred >= 0, maps.labels_pred, np.nan).astype(float)
    cmap, norm = category_colours(k)
    lim = {"norm": norm, "ticks": np.arange(k)}
    _image(axes[0], true, f"labels of original spectra (k={k})", cmap, **lim)
    _image(axes[1], pred, "labels of transferred spectra", cmap, **lim)
    differ = (maps.labels_true >= 0) & (maps.labels_true != maps.labels_pred)
    _image(axes[2], pred, f"disagreements marked ({int(differ.sum())} spots)", cmap, **lim)
    yy, xx = np.nonzero(differ)
    axes[2].scatter(xx, yy, marker="x", c="k", s=12, linewidths=0.8)
    return _png(fig)


def figure_confidence(maps: EvaluationMaps, per_band: dict[str, Any] | None = None) -> bytes:
    with_radius = maps.interval_radius is not None
    with_bands = with_radius and bool(per_band) and per_band.get("nm") is not None
    n = 2 + with_radius + with_bands
    fig, axes = _subplots(1, n, figsize=(5 * n, 4))
    _image(axes[0], maps.confidence, "confidence (higher = more trustworthy)", "cividis")
    ok = np.isfinite(maps.confidence) & np.isfinite(maps.euclid)
    axes[1].scatter(maps.confidence[ok], maps.euclid[ok], s=4, alpha=0.5)
    axes[1].set_xlabel("confidence")
    axes[1].set_ylabel("Euclidean distance (actual error)")
    axes[1].set_title("confidence vs error", fontsize=9)
    if with_radius:
        level = f"{maps.interval_level:.0%}"
        order = np.argsort(maps.confidence[ok])
        axes[1].plot(maps.confidence[ok][order], maps.interval_radius[ok][order], "r-", lw=1,
                     label=f"{level} interval radius")
        axes[1].legend(fontsize=8)
        outside = ok & (maps.euclid > maps.interval_radius)
        _image(axes[2], maps.interval_radius, f"{level} interval radius; x = truth outside "
               f"({int(outside.sum())} of {int(ok.sum())})", "cividis")
        yy, xx = np.nonzero(outside)
        axes[2].scatter(xx, yy, marker="x", c="r", s=10, linewidths=0.7)
    if with_bands:
        ax = axes[3]
        nm = np.asarray(per_band["nm"], np.float64).mean(axis=1)
        ax.plot(nm, 100 * np.asarray(per_band["coverage"]), "o-", ms=2, lw=0.8,
                label="test map")
        ax.axhline(100 * maps.interval_level, color="r", lw=0.8, ls="--", label="nominal")
        if maps.secondary_range_nm is not None:
            for lo, hi in ((nm[0], maps.secondary_range_nm[0]),
                           (maps.secondary_range_nm[1], nm[-1])):
                if hi > lo:
                    ax.axvspan(lo, hi, color="0.9", zorder=0)
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("coverage (%)")
        ax.set_title("coverage of each ~2 nm band's interval (grey: primary only)", fontsize=9)
        ax.legend(fontsize=8)
    return _png(fig)


def _zooms(maps: EvaluationMaps, spot: SpotSpectra) -> list[tuple[str, float, float]]:
    """(title, lo, hi) of the insets of one spot: the primary-only ranges (no secondary
    pixel there: the transfer extrapolates) and the spot's strongest line."""
    wl = maps.primary_wavelength_nm
    out = []
    if maps.secondary_range_nm is not None:
        lo, hi = maps.secondary_range_nm
        if wl[0] < lo:
            out.append((f"primary only, < {lo:.0f} nm", float(wl[0]), lo))
        if wl[-1] > hi:
            out.append((f"primary only, > {hi:.0f} nm", hi, float(wl[-1])))
    peak = float(wl[int(np.argmax(spot.true))])
    out.append((f"strongest line, {peak:.2f} nm", peak - ZOOM_HALF_NM, peak + ZOOM_HALF_NM))
    return out


def figure_spectra(maps: EvaluationMaps) -> bytes:
    rows = max(1, len(maps.spectra))
    n_zoom = max((len(_zooms(maps, s)) for s in maps.spectra), default=1)
    fig = plt.figure(figsize=(14, 2.9 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, 2 + n_zoom)
    wl = maps.primary_wavelength_nm
    for r, spot in enumerate(maps.spectra):
        ax = fig.add_subplot(grid[r, :2])
        ax.plot(wl, spot.true, lw=0.7, label="original")
        ax.plot(wl, spot.predicted, lw=0.7, alpha=0.8, label="transferred")
        ax.set_title(f"{maps.spectra_by} {spot.label} at spot (y={spot.iy}, x={spot.ix})",
                     fontsize=9)
        ax.set_ylabel("counts")
        ax.legend(fontsize=8, loc="upper right")
        if r == rows - 1:
            ax.set_xlabel("wavelength (nm)")
        for c, (title, lo, hi) in enumerate(_zooms(maps, spot)):
            ax.axvspan(lo, hi, color="0.85", zorder=0)
            inset = fig.add_subplot(grid[r, 2 + c])
            sel = (wl >= lo) & (wl <= hi)
            inset.plot(wl[sel], spot.true[sel], lw=0.8)
            inset.plot(wl[sel], spot.predicted[sel], lw=0.8, alpha=0.8)
            inset.set_title(title, fontsize=8)
            inset.tick_params(labelsize=7)
    return _png(fig)


def figure_rse_wavelength(maps: EvaluationMaps) -> bytes:
    """RSE of each channel for every model, the primary-only ranges shaded."""
    fig, ax = _subplots(1, 1, figsize=(12, 4))
    wl = maps.primary_wavelength_nm
    for name, per in sorted(maps.rse_per_band.items()):
        ax.step(maps.rse_band_nm, per, where="mid", lw=1.0, label=name)
    if maps.secondary_range_nm is not None:
        lo, hi = maps.secondary_range_nm
        for a, b in ((wl[0], lo), (hi, wl[-1])):
            if b > a:
                ax.axvspan(a, b, color="0.9", zorder=0)
        ax.text(0.01, 0.97, "shaded: primary only (no secondary pixel)", fontsize=8,
                transform=ax.transAxes, va="top")
    ax.set_yscale("log")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("RSE of the band (~2 nm)")
    ax.legend(fontsize=8, ncol=3)
    return _png(fig)


def figure_elements(maps: EvaluationMaps, agreement: dict[str, Any]) -> bytes:
    """Each line's map from the original and the transferred spectra side by side, on one
    colour scale, two lines per row."""
    n = max(1, len(maps.element_windows))
    rows = (n + 1) // 2
    fig, axes = _subplots(rows, 4, figsize=(16, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[2 * len(maps.element_windows):]:
        ax.set_visible(False)
    for i, w in enumerate(maps.element_windows):
        r, c = divmod(i, 2)
        a, b = maps.elements_true[w.label], maps.elements_pred[w.label]
        lim = _shared_limits(a, b)
        r_text = agreement.get(w.label, {}).get("pearson")
        note = "" if r_text is None else f", r = {r_text:.2f}"
        _image(axes[r, 2 * c], a, f"{w.label} nm, original", "viridis", **lim)
        _image(axes[r, 2 * c + 1], b, f"{w.label} nm, transferred{note}", "viridis", **lim)
    return _png(fig)


def elements_table(metrics: dict[str, Any]) -> str:
    lines = metrics.get("element_maps", {}).get("lines", {})
    if not lines:
        return ""
    head = "<tr><th>line</th><th>Pearson r</th><th>Spearman ρ</th><th>spots</th></tr>"
    body = "".join(f"<tr><td>{html.escape(k)} nm</td><td>{v['pearson']:.3f}</td>"
                   f"<td>{v['spearman']:.3f}</td><td>{v['n']}</td></tr>"
                   for k, v in lines.items())
    return f'<table class="metrics">{head}{body}</table>'


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


# each metric rounded to what its differences mean
_SPEC = {"euclid": ",.0f", "cosine": ".5f", "rse": ".4f", "k_score": ".3f",
         "validation": ".4f", "us": ".1f"}


def metrics_table(metrics: dict[str, Any]) -> str:
    """Table 1 of the paper: one row per model, best RSE first."""
    rows = sorted(metrics["models"].items(), key=lambda kv: kv[1]["rse"])
    val = metrics.get("validation_rse", {})
    timing = metrics.get("timings_s", {})
    head = ("<tr><th>model</th><th>Euclidean ↓</th><th>cosine ↓</th><th>RSE ↓</th>"
            "<th>k-score ↑</th><th>validation RSE</th><th>µs / spectrum</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_fmt(m['euclid'], _SPEC['euclid'])}</td>"
        f"<td>{_fmt(m['cosine'], _SPEC['cosine'])}</td><td>{_fmt(m['rse'], _SPEC['rse'])}</td>"
        f"<td>{_fmt(m['k_score'], _SPEC['k_score'])}</td>"
        f"<td>{_fmt(val.get(name), _SPEC['validation'])}</td>"
        f"<td>{_fmt((timing.get(name) or {}).get('per_spectrum_us'), _SPEC['us'])}</td></tr>"
        for name, m in rows)
    return f'<table class="metrics">{head}{body}</table>'


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#eee}"""


def _intervals_text(metrics: dict[str, Any]) -> str:
    iv = metrics.get("intervals")
    if not iv:
        return ""
    cal, test = iv["calibration"], iv["test"]
    return (f"<p><b>Prediction intervals</b> ({html.escape(cal['method'])}, calibrated on "
            f"{cal['n_calibration']} validation spots): the true primary spectrum lies within "
            f"the spot's radius of the transferred one with nominal probability "
            f"{cal['level']:.0%}. On this test map: coverage <b>{test['coverage']:.1%}</b> of "
            f"{test['n']} spots, median radius {test['median_radius']:,.0f} counts "
            f"(mean {test['mean_radius']:,.0f}).{_band_text(test.get('per_band'))}</p>")


def _band_text(per_band: dict[str, Any] | None) -> str:
    if not per_band or per_band.get("nm") is None:
        return ""
    lo, hi = per_band["nm"][per_band["worst_band"]]
    return (f" Per ~2 nm band (the interval of each band's pixels alone): coverage from "
            f"{per_band['min_coverage']:.1%} (worst band {lo:.1f}–{hi:.1f} nm) to "
            f"{per_band['max_coverage']:.1%}.")


def _recommended_text(metrics: dict[str, Any]) -> str:
    rec = metrics.get("recommended")
    if not rec:
        return ""
    scores = rec.get("validation_rse") or {}
    listed = ", ".join(f"{html.escape(n)} {v:.4f}" for n, v in
                       sorted(scores.items(), key=lambda kv: kv[1]))
    test = (metrics.get("models", {}).get(rec["model"]) or {}).get("rse")
    return (f"<p><b>Which model to use:</b> <code>{html.escape(rec['model'])}</code>, the "
            f"lowest validation RSE ({listed or 'none recorded'}); "
            + (f"its test RSE here is {test:.4f}. " if test is not None else "")
            + "<code>plumelink transfer</code> uses it unless <code>--use</code> names "
            "another; the per-spot figures below show it.</p>")


def write_report(out_dir: str | Path, metrics: dict[str, Any], maps: EvaluationMaps,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the figures (PNG) and report.html into out_dir; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = int(metrics.get("kmeans", {}).get("k", 10))
    agreement = metrics.get("element_maps", {}).get("lines", {})
    draw = {
        "emissivity": lambda: figure_emissivity(maps),
        "elements": lambda: figure_elements(maps, agreement),
        "rse_wavelength": lambda: figure_rse_wavelength(maps),
        "distances": lambda: figure_distances(maps),
        "kmeans": lambda: figure_kmeans(maps, k),
        "confidence": lambda: figure_confidence(
            maps, ((metrics.get("intervals") or {}).get("test") or {}).get("per_band")),
        "spectra": lambda: figure_spectra(maps),
    }
    sections = []
    for i, (name, caption) in enumerate(FIGURES):
        if name == "elements" and not maps.element_windows:
            continue
        if name == "rse_wavelength" and not maps.rse_per_band:
            continue
        png = draw[name]()
        (out / f"{name}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        extra = elements_table(metrics) if name == "elements" else ""
        caption = caption.format(model=maps.model)
        sections.append(f"<h2>{html.escape(caption)}</h2>{extra}"
                        f'<img alt="{name}" src="data:image/png;base64,{data}">')
        if progress is not None:
            progress(i + 1, len(FIGURES))
    pkg = metrics.get("package", {})
    comp = metrics.get("compression", {})
    conf = metrics.get("confidence", {})
    km = metrics.get("kmeans", {})
    sil = ", ".join(f"k={k_}: {_fmt(v)}" for k_, v in km.get("silhouette", {}).items())
    rho = _fmt(conf.get("spearman_vs_euclid"), "+.2f")
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
{_intervals_text(metrics)}
{_recommended_text(metrics)}
<p>Confidence: {_fmt(conf.get('definition'))}. Spearman rank correlation with the actual
Euclidean error of {_fmt(conf.get('error_of', 'vae_mlp'))}: {rho} (negative is good).</p>
{''.join(sections)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["FIGURES", "category_colours", "elements_table", "metrics_table", "write_report"]
