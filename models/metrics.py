"""Transfer quality metrics with the definitions of Vrábel et al. (JAAS 2023).

All take true and predicted primary spectra as (n_spectra, n_px) arrays on the same
(unscaled) intensity axis and return plain floats or per-spectrum arrays for maps.
"""

from __future__ import annotations

import numpy as np


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"true and predicted spectra must be equal 2-D shapes, got "
                         f"{t.shape} and {p.shape}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("spectra contain NaN or infinite values")
    return t, p


def euclidean_distances(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Euclidean distance of each predicted spectrum from its true spectrum."""
    t, p = _pair(y_true, y_pred)
    return np.linalg.norm(t - p, axis=1)


def negative_cosines(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Negative cosine similarity per spectrum: -1 is a perfect match of shape."""
    t, p = _pair(y_true, y_pred)
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(p, axis=1)
    return -np.einsum("ij,ij->i", t, p) / np.maximum(norms, np.finfo(np.float64).tiny)


class RSEAccumulator:
    """Relative squared error Σ(y−ŷ)²/Σ(y−ȳ)² over spectra seen in blocks.

    ȳ is the per-channel mean of the true spectra, so the sums are accumulated in two parts
    (Σy, Σy² per channel) and combined at the end: a map never has to be held whole.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sq_err = 0.0
        self.sq_err_channel: np.ndarray | None = None
        self.sum_y: np.ndarray | None = None
        self.sum_y2: np.ndarray | None = None

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        t, p = _pair(y_true, y_pred)
        if self.sum_y is None:
            self.sum_y = np.zeros(t.shape[1])
            self.sum_y2 = np.zeros(t.shape[1])
            self.sq_err_channel = np.zeros(t.shape[1])
        self.n += t.shape[0]
        sq = ((t - p) ** 2).sum(axis=0)
        self.sq_err_channel += sq
        self.sq_err += float(sq.sum())
        self.sum_y += t.sum(axis=0)
        self.sum_y2 += (t**2).sum(axis=0)

    def value(self) -> float:
        if self.n == 0 or self.sum_y is None or self.sum_y2 is None:
            raise ValueError("no spectra were added")
        total = float((self.sum_y2 - self.sum_y**2 / self.n).sum())
        return self.sq_err / total

    def per_band(self, edges: np.ndarray) -> np.ndarray:
        """RSE over bands of channels [edges[i], edges[i+1]): Σ(y−ŷ)² / Σ(y−ȳ)² within each
        band, so that a band's value weighs its channels by how much they vary (a channel of
        noise alone does not count as much as a line)."""
        if self.n == 0 or self.sq_err_channel is None:
            raise ValueError("no spectra were added")
        spread = self.sum_y2 - self.sum_y**2 / self.n
        starts = np.asarray(edges[:-1], int)
        err = np.add.reduceat(self.sq_err_channel, starts)
        var = np.add.reduceat(spread, starts)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(var > 0, err / var, np.nan)

    def per_channel(self) -> np.ndarray:
        """Σ(y−ŷ)²/Σ(y−ȳ)² of each channel on its own: where along the spectrum the error
        is (NaN where the true spectra do not vary)."""
        if self.n == 0 or self.sq_err_channel is None:
            raise ValueError("no spectra were added")
        spread = self.sum_y2 - self.sum_y**2 / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(spread > 0, self.sq_err_channel / spread, np.nan)


def rse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    acc = RSEAccumulator()
    acc.add(y_true, y_pred)
    return acc.value()


def label_agreement(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Fraction of spectra that the same k-means model puts in the same cluster."""
    a, b = np.asarray(labels_true), np.asarray(labels_pred)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean())
