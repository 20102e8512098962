"""Element maps: each chosen emission line's area above a local baseline, per spot of a map.

A line's area is a fixed linear function of the spectrum: the counts summed over a window of
`window_fwhm` spectrometer resolutions (FWHM at that wavelength) around the line, minus a
straight baseline fitted by least squares to two side bands just outside the window. So every
line is one weight vector, and a block of spectra gives all its line maps in one matrix
product (fast enough for the live view, per raster line). Side-band pixels within one FWHM of
other strong table lines are left out of the baseline fit where enough pixels remain.

The resolution comes from the map's instrument snapshot (`resolution_fwhm_nm`, linear over the
axis like the spectrograph model); where a map has none (imported data), 3 pixels is assumed
and the output says so. Other elements' lines inside the window are named as interferences
with their LTE strength relative to the chosen line (equal mass fractions): whether they
matter depends on the sample, which the scientist knows and the software does not.

Output (`write_element_maps`): /lines (NXentry), one NXdata per line and per ratio, signal
(ny, nx) float32 (NaN where the spot is invalid), axes y and x in µm, attributes element, ion,
wavelength_nm, window_nm, interferences; readable by silx and any HDF5 reader.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import map_layout as L
from .line_catalogue import (
    DEFAULT_TEMPERATURE_K,
    ROMAN,
    Candidate,
    EmissionLine,
    candidates,
    line_strengths,
    parse_line,
)
from .map_reader import MapReader
from .transfer import SETTINGS_KEY

DEFAULT_WINDOW_FWHM = 3.0  # integration window, in resolution FWHMs (a Gaussian's 99.9 %)
BAND_GAP_FWHM = 0.5  # between the window and each baseline band
BAND_WIDTH_FWHM = 2.0  # each baseline band
ASSUMED_FWHM_PX = 3.0  # resolution assumed where the map does not record it
MIN_FWHM_PX = 2.0  # a sampled line is never narrower than about two pixels
NORMALISATIONS = ("none", "total")  # "total": line area / the spot's total emission
INTERFERENCE_MIN_STRENGTH = 1e-3  # relative to the chosen line, equal mass fractions
BAND_EXCLUSION_MIN_STRENGTH = 1e-2  # lines this strong are kept out of the baseline bands
SYSTEMS = ("primary", "secondary", "transferred")
ENTRY = "lines"


class ElementMapError(ValueError):
    """A line or ratio that cannot be mapped on this map (the message says why)."""


@dataclass(frozen=True)
class Resolution:
    """Spectrometer FWHM along its axis, and where the figure came from."""

    fwhm_nm: np.ndarray  # per pixel
    source: str

    def at(self, axis: np.ndarray, wavelength_nm: float) -> float:
        return float(np.interp(wavelength_nm, axis, self.fwhm_nm))


def _recorded_fwhm(settings: dict[str, Any], system: str) -> Any:
    """resolution_fwhm_nm of a simulated map's spectrograph profile, or of an acquired map's
    bench profile (the spectrometer's options)."""
    acquired = settings.get("spectrometers", {}).get(system, {})
    for record in (settings.get(system), acquired, acquired.get("options") if
                   isinstance(acquired, dict) else None):
        if isinstance(record, dict) and record.get("resolution_fwhm_nm") is not None:
            return record["resolution_fwhm_nm"]
    return None


def resolution(settings: dict[str, Any], system: str, axis: np.ndarray) -> Resolution:
    """The FWHM of `system` ("primary"/"secondary") from a map's instrument snapshot."""
    try:
        values = [float(v) for v in _recorded_fwhm(settings, system)]
    except (TypeError, ValueError):
        values = None
    if values is not None and len(values) == 2 and all(np.isfinite(values)) and min(values) > 0:
        frac = (axis - axis[0]) / (axis[-1] - axis[0])
        fwhm = values[0] + (values[1] - values[0]) * frac
        fwhm = np.maximum(fwhm, MIN_FWHM_PX * np.abs(np.gradient(axis)))
        return Resolution(fwhm, f"instrument snapshot: {values[0]:g}-{values[1]:g} nm FWHM, "
                          f"at least {MIN_FWHM_PX:g} pixels")
    step = float(np.median(np.abs(np.diff(axis))))
    return Resolution(np.full(axis.shape, ASSUMED_FWHM_PX * step),
                      f"not recorded in the map; assumed {ASSUMED_FWHM_PX:g} pixels "
                      f"({ASSUMED_FWHM_PX * step:.3g} nm)")


@dataclass(frozen=True)
class LineWindow:
    """Where a line is integrated, its baseline, and the weights that do both."""

    line: EmissionLine
    fwhm_nm: float
    window_nm: tuple[float, float]
    bands_nm: tuple[tuple[float, float], tuple[float, float]]
    weights: np.ndarray = field(repr=False)  # (n_px,): area = spectrum @ weights
    interferences: tuple[Candidate, ...] = ()

    @property
    def label(self) -> str:
        return self.line.label


def _band(axis: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.flatnonzero((axis >= lo) & (axis <= hi))


def _window_weights(axis: np.ndarray, w0: float, fwhm: float, window_fwhm: float,
                    avoid_nm: list[float], what: str, system: str
                    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float],
                               tuple[tuple[float, float], tuple[float, float]]]:
    """(area weights, baseline-at-w0 weights, window, bands) of a window centred on w0.

    Baseline b(l) = a + c (l - w0) fitted to the side bands (without pixels within one FWHM
    of `avoid_nm`, where enough remain); area = sum over the window of (s - b) dl."""
    if not window_fwhm > 0:
        raise ElementMapError(f"the window must be a positive number of FWHMs, got {window_fwhm}")
    half = window_fwhm * fwhm / 2
    gap, width = BAND_GAP_FWHM * fwhm, BAND_WIDTH_FWHM * fwhm
    bands = ((w0 - half - gap - width, w0 - half - gap), (w0 + half + gap, w0 + half + gap + width))
    if w0 - half < axis[0] or w0 + half > axis[-1]:
        raise ElementMapError(
            f"{what} nm lies outside the {system} axis ({axis[0]:.2f}-{axis[-1]:.2f} nm) "
            "or too close to its edge for its window")
    window = _band(axis, w0 - half, w0 + half)
    if window.size < 2:
        raise ElementMapError(f"the window of {what} ({2 * half:.3g} nm) holds "
                              f"{window.size} pixel(s) of the {system} axis; widen it")
    band = np.concatenate([_band(axis, *bands[0]), _band(axis, *bands[1])])
    clean = np.array([i for i in band if all(abs(axis[i] - a) > fwhm for a in avoid_nm)], int)
    if clean.size >= 2:
        band = clean
    if band.size == 0:
        raise ElementMapError(f"no pixels of the {system} axis are left for the baseline of "
                              f"{what} nm")
    step = np.gradient(axis)
    design_band = np.stack([np.ones(band.size), axis[band] - w0], axis=1)
    if np.ptp(axis[band]) == 0:
        design_band = design_band[:, :1]
    design_window = np.stack([np.ones(window.size), axis[window] - w0], axis=1)
    design_window = design_window[:, : design_band.shape[1]]
    fit = np.linalg.pinv(design_band)  # (1 or 2, n_band): baseline coefficients
    weights = np.zeros(axis.size)
    weights[window] = step[window]
    weights[band] -= (step[window] @ design_window) @ fit
    at_center = np.zeros(axis.size)
    at_center[band] = fit[0]  # b(w0) = a
    return weights, at_center, (w0 - half, w0 + half), bands


def window_weights(wavelength_nm: float, axis: np.ndarray, res: Resolution,
                   window_fwhm: float = DEFAULT_WINDOW_FWHM, avoid_nm: list[float] = ()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(area weights, baseline-at-centre weights) of a window around any wavelength (a peak
    that may be no table line), its baseline kept off the wavelengths in avoid_nm."""
    fwhm = res.at(axis, wavelength_nm)
    weights, at_center, _, _ = _window_weights(axis, float(wavelength_nm), fwhm, window_fwhm,
                                               list(avoid_nm), f"{wavelength_nm:.2f}",
                                               "spectrometer")
    return weights, at_center


def line_window(line: EmissionLine, axis: np.ndarray, res: Resolution, *,
                window_fwhm: float = DEFAULT_WINDOW_FWHM,
                temperature_k: float = DEFAULT_TEMPERATURE_K, system: str = "primary"
                ) -> LineWindow:
    """The integration window and baseline of LINE on a spectrometer AXIS (nm, increasing)."""
    w0 = line.wavelength_nm
    fwhm = res.at(axis, w0)
    half = window_fwhm * fwhm / 2
    reach = half + (BAND_GAP_FWHM + BAND_WIDTH_FWHM + 1.0) * fwhm
    target = line_strengths(temperature_k)[line.index]
    avoid = [c.line.wavelength_nm for c in candidates(w0, reach, temperature_k)
             if c.line.index != line.index and c.strength >= BAND_EXCLUSION_MIN_STRENGTH * target]
    weights, _, window, bands = _window_weights(axis, w0, fwhm, window_fwhm, avoid, line.label,
                                                system)
    near = candidates(w0, half + fwhm / 2, temperature_k, exclude=(line.element,))
    interferences = tuple(
        Candidate(c.line, c.offset_nm, c.strength / target) for c in near
        if c.strength >= INTERFERENCE_MIN_STRENGTH * target)
    return LineWindow(line, fwhm, window, bands, weights, interferences)


def line_areas(spectra: np.ndarray, windows: list[LineWindow]) -> np.ndarray:
    """(n, n_px) spectra -> (n, n_lines) areas above the local baselines (counts x nm)."""
    weights = np.stack([w.weights for w in windows], axis=1).astype(np.float32)
    return np.asarray(spectra, np.float32) @ weights


@dataclass
class ElementMap:
    """One line's (or one ratio's) map; NaN where the spot has no valid spectrum."""

    name: str
    values: np.ndarray  # (ny, nx) float32
    window: LineWindow | None = None  # a line map
    ratio: tuple[str, str] | None = None  # a ratio map: (numerator, denominator) labels
    truth_spearman: float | None = None  # against the element's true wt%, when asked


@dataclass
class ElementMaps:
    source: Path
    system: str
    x_um: np.ndarray
    y_um: np.ndarray
    resolution: Resolution
    maps: list[ElementMap]
    temperature_k: float
    normalise: str = "none"


def _resolve_system(reader: MapReader, system: str) -> str:
    if system not in SYSTEMS:
        raise ElementMapError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    transferred = SETTINGS_KEY in reader.settings
    if system == "transferred":
        if not transferred:
            raise ElementMapError(
                f"{L.describe(reader.path)} is not a transferred map (made by plumelink "
                "transfer); use --system primary or secondary")
        return "primary"
    return system


def _split_ratio(text: str) -> tuple[str, str]:
    num, sep, den = text.partition("/")
    if not sep or not num.strip() or not den.strip():
        raise ElementMapError(f"bad ratio {text!r}: expected 'LINE/LINE', "
                              "e.g. 'Ca II 393.37/Si I 288.16'")
    return num.strip(), den.strip()


def element_maps(map_path: str | os.PathLike[str], lines: list[str], ratios: list[str] = (),
                 system: str = "primary", *, window_fwhm: float = DEFAULT_WINDOW_FWHM,
                 temperature_k: float = DEFAULT_TEMPERATURE_K, normalise: str = "none",
                 truth: bool = False, block_spots: int = 8192) -> ElementMaps:
    """Line maps (and ratio maps) of a map file's spectra of one system.

    normalise="total" divides each line area by the spot's total emission (the map's
    emissivity), the usual first correction for shot-to-shot ablated mass and plasma
    changes; ratios are left as they are (they cancel those already)."""
    if normalise not in NORMALISATIONS:
        raise ElementMapError(f"unknown normalisation {normalise!r}; expected one of "
                              f"{NORMALISATIONS}")
    ratio_pairs = [_split_ratio(r) for r in ratios]
    if not lines and not ratio_pairs:
        raise ElementMapError("give at least one line (e.g. --line 'Ca II 393.37') or ratio")
    with MapReader(map_path) as reader:
        stored = _resolve_system(reader, system)
        axis = reader.wavelength_nm(stored).astype(np.float64)
        res = resolution(reader.settings, stored, axis)
        names = list(dict.fromkeys([*lines, *(n for pair in ratio_pairs for n in pair)]))
        parsed = [parse_line(n, (float(axis[0]), float(axis[-1])), temperature_k) for n in names]
        windows = {n: line_window(p, axis, res, window_fwhm=window_fwhm,
                                  temperature_k=temperature_k, system=system)
                   for n, p in zip(names, parsed, strict=True)}
        order = list(dict.fromkeys(windows[n].label for n in names))
        by_label = {w.label: w for w in windows.values()}
        ny, nx = reader.shape
        flat = np.full((ny * nx, len(order)), np.nan, np.float32)
        wins = [by_label[label] for label in order]
        for spectra, index in reader.iter_blocks(stored, block_spots):
            flat[index] = line_areas(spectra, wins)
        grids = {label: flat[:, i].reshape(ny, nx) for i, label in enumerate(order)}
        scale = np.ones((ny, nx), np.float32)
        if normalise == "total":
            total = reader.emissivity(stored)
            scale = np.where(total > 0, 1.0 / total, np.nan).astype(np.float32)
        maps = [ElementMap(windows[n].label, grids[windows[n].label] * scale, window=windows[n])
                for n in dict.fromkeys(lines)]
        maps = list({m.name: m for m in maps}.values())
        for num, den in ratio_pairs:
            a, b = grids[windows[num].label], grids[windows[den].label]
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(b > 0, a / b, np.nan).astype(np.float32)
            maps.append(ElementMap(f"{windows[num].label}/{windows[den].label}", values,
                                   ratio=(windows[num].label, windows[den].label)))
        if truth:
            _add_truth(reader, maps)
        return ElementMaps(Path(map_path), system, reader.x_um.copy(), reader.y_um.copy(), res,
                           maps, temperature_k, normalise)


def _add_truth(reader: MapReader, maps: list[ElementMap]) -> None:
    """Spearman rank correlation of each line map with its element's true wt% (simulated
    maps with ground truth only)."""
    from scipy.stats import spearmanr

    if not reader.has_truth:
        raise ElementMapError(f"{L.describe(reader.path)} holds no ground truth (simulate "
                              "with --truth); --truth compares the maps with it")
    elements = reader.truth_elements
    composition = reader.truth_composition()
    for m in maps:
        if m.window is None or m.window.line.element not in elements:
            continue
        true = composition[..., elements.index(m.window.line.element)]
        ok = np.isfinite(m.values) & np.isfinite(true)
        if ok.sum() >= 3 and np.ptp(true[ok]) > 0:
            m.truth_spearman = float(spearmanr(m.values[ok], true[ok]).statistic)


def _group_name(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_over_")


def write_element_maps(result: ElementMaps, out: str | os.PathLike[str], *,
                       overwrite: bool = False) -> Path:
    """Write the maps as NXdata groups of a new HDF5 file (atomically: all or nothing)."""
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{L.describe(target)} already exists; not overwriting")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["NX_class"] = "NXroot"
            f.attrs["default"] = ENTRY
            entry = f.create_group(ENTRY)
            entry.attrs.update(NX_class="NXentry", source_map=str(result.source),
                               system=result.system, resolution=result.resolution.source,
                               temperature_k=result.temperature_k,
                               normalisation=result.normalise)
            entry.attrs["default"] = _group_name(result.maps[0].name)
            for m in result.maps:
                _write_one(entry, m, result)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _write_one(entry: h5py.Group, m: ElementMap, result: ElementMaps) -> None:
    g = entry.create_group(_group_name(m.name))
    signal = "ratio" if m.ratio else "intensity"
    g.attrs.update(NX_class="NXdata", signal=signal, axes=["y", "x"], title=m.name)
    d = g.create_dataset(signal, data=m.values.astype(np.float32))
    if m.ratio:
        d.attrs["long_name"] = f"{m.name} line area ratio ({result.system})"
        g.attrs.update(numerator=m.ratio[0], denominator=m.ratio[1])
    else:
        w = m.window
        if result.normalise == "total":
            d.attrs.update(long_name=f"{m.name} nm line area / total emission ({result.system})",
                           units="nm")
        else:
            d.attrs.update(long_name=f"{m.name} nm line area ({result.system}, counts·nm)",
                           units="counts*nm")
        g.attrs.update(
            element=w.line.element, ion=ROMAN[w.line.ion - 1], wavelength_nm=w.line.wavelength_nm,
            window_nm=np.array(w.window_nm), baseline_bands_nm=np.array(w.bands_nm),
            fwhm_nm=w.fwhm_nm,
            interferences=np.array([c.line.label for c in w.interferences],
                                   dtype=h5py.string_dtype()),
            interference_relative_strength=np.array([c.strength for c in w.interferences]))
        if m.truth_spearman is not None:
            g.attrs["truth_spearman"] = m.truth_spearman
    for name, values in (("y", result.y_um), ("x", result.x_um)):
        a = g.create_dataset(name, data=values.astype(np.float64))
        a.attrs.update(units="um", long_name=f"{name} (µm)")
