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

    def radius_for(self, confidence: np.ndarray) -> np.ndarray:
        """The interval radius of each spot from its confidence (NaN stays NaN)."""
        c = np.asarray(confidence, np.float64)
        k = np.clip(np.searchsorted(self.edges, c, side="right") - 1, 0, self.radius.size - 1)
        out = self.radius[k].astype(np.float64)
        out[~np.isfinite(c)] = np.nan
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": "split-conformal, Mondrian by confidence bins",
                "level": self.level, "edges": [float(e) for e in self.edges],
                "radius": [float(r) for r in self.radius], "n_calibration": self.n_calibration,
                "score": "Euclidean distance between transferred and true primary spectrum "
                         "(unscaled, baseline-corrected counts)"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalIntervals:
        return cls(float(d["level"]), np.asarray(d["edges"], np.float64),
                   np.asarray(d["radius"], np.float64), int(d["n_calibration"]))


def calibrate(distances: np.ndarray, confidence: np.ndarray, level: float = DEFAULT_LEVEL,
              n_bins: int = DEFAULT_BINS) -> ConformalIntervals:
    """Radii from calibration spots' true distances and confidences."""
    d = np.asarray(distances, np.float64)
    c = np.asarray(confidence, np.float64)
    if d.shape != c.shape or d.ndim != 1:
        raise ValueError(f"distances {d.shape} and confidence {c.shape} must be equal 1-D arrays")
    if not 0 < level < 1:
        raise ValueError(f"the interval level must be between 0 and 1, got {level}")
    ok = np.isfinite(d) & np.isfinite(c)
    d, c = d[ok], c[ok]
    n_bins = int(max(1, min(n_bins, d.size // max(1, math.ceil(1 / (1 - level))))))
    if d.size < math.ceil(1 / (1 - level)):
        raise ValueError(f"{d.size} calibration spots are too few for a {level:.0%} interval "
                         f"(at least {math.ceil(1 / (1 - level))})")
    inner = np.quantile(c, np.linspace(0, 1, n_bins + 1)[1:-1]) if n_bins > 1 else np.empty(0)
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    k = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, n_bins - 1)
    radius = np.empty(n_bins)
    for b in range(n_bins):
        scores = np.sort(d[k == b])
        rank = min(scores.size, math.ceil((scores.size + 1) * level))  # finite-sample rank
        radius[b] = scores[rank - 1] if scores.size else np.nan
    return ConformalIntervals(float(level), edges, radius, int(d.size))


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
