"""Calibrated prediction intervals for transferred spectra: split-conformal, per confidence bin.

The confidence ranks spots by how trustworthy their transferred spectra are, but says nothing
a scientist can quote. Split-conformal calibration turns it into a statement: on a calibration
map with both spectra (the validation map: never used to fit the networks' weights), the
Euclidean distance between each transferred and true primary spectrum is the nonconformity
score. Spots are binned by confidence (equal-count bins), and each bin's radius is the
ceil((n + 1) * level)-th smallest score of its n spots. For a new spot of the same kind, the
true spectrum then lies within that radius of the transferred one with probability at least
`level` (exchangeability: Vovk's Mondrian conformal prediction), and the radius follows the
confidence: narrow where the model is sure, wide where it is not.

What breaks exchangeability breaks the guarantee: a test map measured on another day (drift
of the instruments or the plasma) shifts the scores, and the empirical coverage on such a map
says by how much (`coverage`).

Per wavelength band: a line is what a scientist reads, and a spectrum's Euclidean error is
mostly that of its strongest lines. With band edges (``band_px``: pixel bounds of ~2 nm bands
of the primary axis), each band gets its own conformal radius per confidence bin, from the
Euclidean distance of the band's pixels alone (`band_distances`): "this spot's Ca II 393 nm
band is within X counts of the truth with 90 % probability". Each band's guarantee holds on
its own (marginally), not for all bands at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.9
DEFAULT_BINS = 5


@dataclass(frozen=True)
class ConformalIntervals:
    """Radius of the `level` interval (Euclidean, in the primary spectra's counts) per
    confidence bin; bin k holds confidence in [edges[k], edges[k+1])."""

    level: float
    edges: np.ndarray  # (n_bins + 1,) increasing; the outer two are -inf and +inf
    radius: np.ndarray  # (n_bins,)
    n_calibration: int
    band_px: np.ndarray | None = None  # (n_bands + 1,) pixel bounds of the bands
    band_radius: np.ndarray | None = None  # (n_bins, n_bands)
    band_nm: np.ndarray | None = None  # (n_bands, 2): first and last wavelength of each band

    def radius_for(self, confidence: np.ndarray) -> np.ndarray:
        """The interval radius of each spot from its confidence (NaN stays NaN)."""
        k, missing = self._bins(confidence)
        out = self.radius[k].astype(np.float64)
        out[missing] = np.nan
        return out

    def _bins(self, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each spot's confidence bin, and where its confidence is not finite."""
        c = np.asarray(confidence, np.float64)
        k = np.clip(np.searchsorted(self.edges, c, side="right") - 1, 0, self.radius.size - 1)
        return k, ~np.isfinite(c)

    def band_radius_for(self, confidence: np.ndarray) -> np.ndarray:
        """The band radii of each spot, shape confidence.shape + (n_bands,) (NaN stays NaN)."""
        if self.band_radius is None:
            raise ValueError("these intervals were calibrated without wavelength bands")
        k, missing = self._bins(confidence)
        out = self.band_radius[k].astype(np.float64)
        out[missing] = np.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": "split-conformal, Mondrian by confidence bins",
            "level": self.level, "edges": [float(e) for e in self.edges],
            "radius": [float(r) for r in self.radius], "n_calibration": self.n_calibration,
            "score": "Euclidean distance between transferred and true primary spectrum "
                     "(unscaled, baseline-corrected counts)"}
        if self.band_radius is not None and self.band_px is not None:
            d["bands"] = {"px": [int(p) for p in self.band_px],
                          "radius": self.band_radius.tolist(),
                          "nm": None if self.band_nm is None else self.band_nm.tolist(),
                          "score": "Euclidean distance over the band's pixels only"}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalIntervals:
        bands = d.get("bands") or {}
        return cls(float(d["level"]), np.asarray(d["edges"], np.float64),
                   np.asarray(d["radius"], np.float64), int(d["n_calibration"]),
                   band_px=(np.asarray(bands["px"], np.int64) if bands else None),
                   band_radius=(np.asarray(bands["radius"], np.float64) if bands else None),
                   band_nm=(np.asarray(bands["nm"], np.float64)
                            if bands.get("nm") is not None else None))


def band_edges(n_px: int, n_bands: int) -> np.ndarray:
    """Pixel bounds of n_bands nearly equal bands of an n_px axis (the report's RSE bands)."""
    if not 1 <= n_bands <= n_px:
        raise ValueError(f"{n_bands} bands do not fit {n_px} pixels")
    return np.linspace(0, n_px, n_bands + 1).astype(np.int64)


def band_distances(true: np.ndarray, predicted: np.ndarray, band_px: np.ndarray) -> np.ndarray:
    """(n, n_bands) Euclidean distance of each spectrum's pixels in each band."""
    diff = np.asarray(true, np.float64) - np.asarray(predicted, np.float64)
    return np.sqrt(np.add.reduceat(diff * diff, np.asarray(band_px[:-1]), axis=1))


def _conformal(scores: np.ndarray, level: float) -> np.ndarray:
    """The finite-sample conformal quantile of each column of (n, ...) scores."""
    scores = np.sort(scores, axis=0)
    rank = min(scores.shape[0], math.ceil((scores.shape[0] + 1) * level))
    return scores[rank - 1]


def calibrate(distances: np.ndarray, confidence: np.ndarray, level: float = DEFAULT_LEVEL,
              n_bins: int = DEFAULT_BINS, *, band_scores: np.ndarray | None = None,
              band_px: np.ndarray | None = None,
              band_nm: np.ndarray | None = None) -> ConformalIntervals:
    """Radii from calibration spots' true distances and confidences; per band too when
    band_scores ((n, n_bands) `band_distances`) and their band_px are given."""
    d = np.asarray(distances, np.float64)
    c = np.asarray(confidence, np.float64)
    if d.shape != c.shape or d.ndim != 1:
        raise ValueError(f"distances {d.shape} and confidence {c.shape} must be equal 1-D arrays")
    if not 0 < level < 1:
        raise ValueError(f"the interval level must be between 0 and 1, got {level}")
    if (band_scores is None) != (band_px is None):
        raise ValueError("band scores need their band edges and the other way round")
    if band_scores is not None:
        band_scores = np.asarray(band_scores, np.float64)
        if band_scores.shape != (d.size, len(band_px) - 1):
            raise ValueError(f"band scores {band_scores.shape} do not match {d.size} spots "
                             f"and {len(band_px) - 1} bands")
    ok = np.isfinite(d) & np.isfinite(c)
    if band_scores is not None:
        ok &= np.isfinite(band_scores).all(axis=1)
        band_scores = band_scores[ok]
    d, c = d[ok], c[ok]
    n_bins = int(max(1, min(n_bins, d.size // max(1, math.ceil(1 / (1 - level))))))
    if d.size < math.ceil(1 / (1 - level)):
        raise ValueError(f"{d.size} calibration spots are too few for a {level:.0%} interval "
                         f"(at least {math.ceil(1 / (1 - level))})")
    inner = np.quantile(c, np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else np.empty(0)
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    k = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, n_bins - 1)
    radius = np.full(n_bins, np.nan)
    bands = None if band_scores is None else np.full((n_bins, band_scores.shape[1]), np.nan)
    for b in range(n_bins):
        inside = k == b
        if not inside.any():
            continue
        radius[b] = _conformal(d[inside], level)
        if bands is not None:
            bands[b] = _conformal(band_scores[inside], level)
    return ConformalIntervals(
        float(level), edges, radius, int(d.size),
        band_px=None if band_px is None else np.asarray(band_px, np.int64),
        band_radius=bands, band_nm=None if band_nm is None else np.asarray(band_nm, np.float64))


def coverage(intervals: ConformalIntervals, distances: np.ndarray,
             confidence: np.ndarray) -> dict[str, float]:
    """Empirical coverage and width of the intervals on spots with known true spectra."""
    d = np.asarray(distances, np.float64)
    r = intervals.radius_for(confidence)
    ok = np.isfinite(d) & np.isfinite(r)
    if not ok.any():
        raise ValueError("no spot has both a distance and a confidence")
    return {"level": intervals.level, "coverage": float(np.mean(d[ok] <= r[ok])),
            "mean_radius": float(np.mean(r[ok])), "median_radius": float(np.median(r[ok])),
            "n": int(ok.sum())}


def band_coverage(intervals: ConformalIntervals, band_scores: np.ndarray,
                  confidence: np.ndarray) -> dict[str, Any]:
    """Empirical coverage and median width of each band's interval on spots with known truth:
    where along the spectrum the guarantee holds and where the day shift breaks it."""
    s = np.asarray(band_scores, np.float64)
    r = intervals.band_radius_for(np.asarray(confidence))
    ok = np.isfinite(s).all(axis=1) & np.isfinite(r).all(axis=1)
    if not ok.any():
        raise ValueError("no spot has both band distances and a confidence")
    cov = np.mean(s[ok] <= r[ok], axis=0)
    return {"level": intervals.level, "coverage": cov.tolist(),
            "median_radius": np.median(r[ok], axis=0).tolist(),
            "nm": None if intervals.band_nm is None else intervals.band_nm.tolist(),
            "worst_band": int(np.argmin(cov)), "min_coverage": float(cov.min()),
            "max_coverage": float(cov.max()), "n": int(ok.sum())}
