"""Line identification: the peaks of a spectrum, each with its height, its area above a local
baseline (the element maps' window and baseline) and the table lines that could be it.

A peak is a local maximum that stands `min_snr` noise levels above its surroundings
(prominence, scipy.signal.find_peaks); the noise is estimated from the spectrum itself (the
median absolute pixel-to-pixel difference), so no dark frame is needed. Candidates are the
table lines within one resolution FWHM of the peak, strongest first by LTE strength at the
chosen plasma temperature (equal mass fractions: the scientist weighs them against the
sample). `peak_table` works on one spot or on a map's mean spectrum; `write_peak_csv`
writes it for a spreadsheet.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import find_peaks

from . import map_layout as L
from .element_maps import Resolution, resolution, window_weights
from .line_catalogue import DEFAULT_TEMPERATURE_K, Candidate, candidates
from .map_reader import MapReader

DEFAULT_MIN_SNR = 8.0
MAX_CANDIDATES = 4


@dataclass(frozen=True)
class Peak:
    wavelength_nm: float
    height: float  # counts above the local baseline at the maximum
    area: float  # counts x nm above the local baseline, over the element maps' window
    fwhm_nm: float  # the resolution there (the candidates' search radius)
    candidates: tuple[Candidate, ...]

    @property
    def best(self) -> str:
        return ", ".join(c.line.label for c in self.candidates) or "no table line"


def noise_level(spectrum: np.ndarray) -> float:
    """Noise of one spectrum from its pixel-to-pixel differences (robust to lines)."""
    d = np.diff(np.asarray(spectrum, np.float64))
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)) or 1.0


def find_spectrum_peaks(wavelength_nm: np.ndarray, spectrum: np.ndarray, res: Resolution, *,
                        min_snr: float = DEFAULT_MIN_SNR,
                        temperature_k: float = DEFAULT_TEMPERATURE_K,
                        elements: tuple[str, ...] | None = None,
                        max_peaks: int | None = None) -> list[Peak]:
    """The peaks of one spectrum, strongest first (at most max_peaks)."""
    axis = np.asarray(wavelength_nm, np.float64)
    y = np.asarray(spectrum, np.float64)
    if y.shape != axis.shape:
        raise ValueError(f"spectrum has {y.size} pixels but its axis {axis.size}")
    if not np.isfinite(y).all():
        raise ValueError("the spectrum holds NaN or inf; no peaks can be found in it")
    noise = noise_level(y)
    index, props = find_peaks(y, prominence=min_snr * noise)
    order = np.argsort(props["prominences"])[::-1][:max_peaks]
    peaks = []
    every = axis[index]
    for i in index[order]:
        w0 = float(axis[i])
        fwhm = res.at(axis, w0)
        others = every[(every != w0) & (np.abs(every - w0) < 6 * fwhm)].tolist()
        try:
            weights, baseline_at_peak = window_weights(w0, axis, res, avoid_nm=others)
        except ValueError:  # too close to an end of the axis for a window and baseline
            continue
        area = float(y @ weights)
        height = float(y[i] - baseline_at_peak @ y)
        found = candidates(w0, fwhm, temperature_k, elements=elements)[:MAX_CANDIDATES]
        peaks.append(Peak(w0, height, area, fwhm, tuple(found)))
    return peaks


@dataclass(frozen=True)
class PeakTable:
    source: Path
    system: str
    what: str  # "spot (iy, ix)" or "mean of N spectra"
    wavelength_nm: np.ndarray
    spectrum: np.ndarray
    peaks: list[Peak]


def _spectrum(reader: MapReader, system: str, spot: tuple[int, int] | None
              ) -> tuple[np.ndarray, str]:
    if spot is None:
        total, n = None, 0
        for block, _ in reader.iter_blocks(system):
            s = block.astype(np.float64).sum(axis=0)
            total = s if total is None else total + s
            n += block.shape[0]
        if not n:
            raise ValueError(f"{L.describe(reader.path)} holds no valid {system} spectrum")
        return total / n, f"mean of {n} spectra"
    iy, ix = spot
    ny, nx = reader.shape
    if not (0 <= iy < ny and 0 <= ix < nx):
        raise ValueError(f"spot ({iy}, {ix}) is outside map file {L.describe(reader.path)} "
                         f"of {ny} x {nx} spots")
    if not reader.lines_done[iy]:
        raise ValueError(f"line {iy} of {L.describe(reader.path)} is not acquired")
    sysline = getattr(reader.read_line(iy), system)
    if not sysline.valid[ix]:
        raise ValueError(f"the {system} spectrum of spot ({iy}, {ix}) of "
                         f"{L.describe(reader.path)} is invalid")
    return sysline.spectra[ix].astype(np.float64), f"spot (iy={iy}, ix={ix})"


def peak_table(map_path: str | os.PathLike[str], system: str = "primary",
               spot: tuple[int, int] | None = None, *, min_snr: float = DEFAULT_MIN_SNR,
               temperature_k: float = DEFAULT_TEMPERATURE_K,
               elements: tuple[str, ...] | None = None,
               max_peaks: int | None = 40) -> PeakTable:
    """The peaks of one spot's spectrum (spot=(iy, ix)) or of the map's mean spectrum."""
    with MapReader(map_path) as reader:
        axis = reader.wavelength_nm(system).astype(np.float64)
        spectrum, what = _spectrum(reader, system, spot)
        res = resolution(reader.settings, system, axis)
    peaks = find_spectrum_peaks(axis, spectrum, res, min_snr=min_snr,
                                temperature_k=temperature_k, elements=elements,
                                max_peaks=max_peaks)
    return PeakTable(Path(map_path), system, what, axis, spectrum, peaks)


CSV_HEADER = ("wavelength_nm", "height_counts", "area_counts_nm", "fwhm_nm", "candidates",
              "candidate_offsets_nm", "candidate_relative_strengths")


def write_peak_csv(table: PeakTable, out: str | os.PathLike[str], *,
                   overwrite: bool = False) -> Path:
    """One row per peak: wavelength, height, area, and the candidate lines (';'-separated)."""
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{L.describe(target)} already exists; not overwriting")
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow([f"# {table.source} {table.system}, {table.what}"])
        writer.writerow(CSV_HEADER)
        for p in table.peaks:
            writer.writerow([f"{p.wavelength_nm:.4f}", f"{p.height:.6g}", f"{p.area:.6g}",
                             f"{p.fwhm_nm:.4g}", "; ".join(c.line.label for c in p.candidates),
                             "; ".join(f"{c.offset_nm:+.4f}" for c in p.candidates),
                             "; ".join(f"{c.strength:.3g}" for c in p.candidates)])
    return target
