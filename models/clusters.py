"""k-means scoring of transferred spectra (the paper's k-score).

k-means is fitted on primary spectra of the TRAINING map (baseline-corrected, unscaled, a
random subsample of at most `max_spectra`), and k is the one of `k_values` whose labels of
the VALIDATION map's primary spectra have the best silhouette (on a subsample as well). The
k-score of a model is then the agreement of the labels the same k-means gives the true and
the transferred test spectra (`plumelink.models.metrics.label_agreement`).

Maps are read block by block (`MapReader.iter_blocks`), never whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.preprocess import DEFAULT_BASELINE, Baseline

DEFAULT_K = tuple(range(2, 11))
DEFAULT_MAX_SPECTRA = 20_000
DEFAULT_SILHOUETTE_SPECTRA = 5_000

# progress(done, total)
StepCallback = Callable[[int, int], None]


def sample_primary(
    path: str | os.PathLike[str],
    max_spectra: int,
    *,
    seed: int = 0,
    block_spots: int = 4096,
    baseline: Baseline = DEFAULT_BASELINE,
) -> np.ndarray:
    """A uniform random subsample (≤ max_spectra) of the valid primary spectra of a map,
    baseline-corrected (a package's `Baseline`), float32; streamed block by block."""
    rng = np.random.default_rng(seed)
    with MapReader(path) as reader:
        nx = reader.shape[1]
        n_total = int(reader.lines_done.sum()) * nx
        p = 1.0 if n_total <= max_spectra else max_spectra / n_total * 1.05
        kept = []
        for block, _ in reader.iter_blocks("primary", block_spots=block_spots):
            take = rng.random(len(block)) < p
            if take.any():
                kept.append(baseline.correct(block[take]))
    if not kept:
        raise ValueError(f"map {path} has no valid primary spectrum to fit k-means on")
    out = np.concatenate(kept).astype(np.float32, copy=False)
    if len(out) > max_spectra:
        out = out[np.sort(rng.choice(len(out), max_spectra, replace=False))]
    return out


@dataclass
class KMeansScorer:
    """A k-means model of primary spectra with the record of how k was chosen."""

    model: KMeans
    k: int
    silhouette: dict[int, float] = field(default_factory=dict)
    n_fit: int = 0
    n_silhouette: int = 0

    def labels(self, spectra: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(spectra, dtype=np.float32)).astype(np.int32)

    def record(self) -> dict:
        return {
            "k": self.k,
            "silhouette": {str(k): v for k, v in self.silhouette.items()},
            "n_train_spectra": self.n_fit,
            "n_silhouette_spectra": self.n_silhouette,
            "fitted_on": "primary spectra of the training map (baseline-corrected, unscaled)",
            "k_chosen_by": "largest silhouette of the validation map's primary spectra",
        }


def fit_kmeans(
    train: np.ndarray,
    val: np.ndarray,
    k_values: Sequence[int] = DEFAULT_K,
    *,
    seed: int = 0,
    max_silhouette: int = DEFAULT_SILHOUETTE_SPECTRA,
    progress: StepCallback | None = None,
) -> KMeansScorer:
    """Fit k-means on `train` spectra for each k; keep the k of best silhouette on `val`."""
    train = np.asarray(train, dtype=np.float32)
    val = np.asarray(val, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if len(val) > max_silhouette:
        val = val[np.sort(rng.choice(len(val), max_silhouette, replace=False))]
    ks = sorted({int(k) for k in k_values if 2 <= int(k) <= len(train)})
    if not ks:
        raise ValueError(f"no k in {list(k_values)} fits {len(train)} training spectra (k >= 2)")
    best: tuple[float, int, KMeans] | None = None
    scores: dict[int, float] = {}
    for i, k in enumerate(ks):
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(train)
        labels = model.predict(val)
        n_labels = len(np.unique(labels))
        score = (float(silhouette_score(val, labels, random_state=seed))
                 if 2 <= n_labels < len(val) else float("nan"))
        scores[k] = score
        if np.isfinite(score) and (best is None or score > best[0]):
            best = (score, k, model)
        if progress is not None:
            progress(i + 1, len(ks))
    if best is None:  # no k split the validation spectra: keep the smallest k
        k = ks[0]
        best = (float("nan"), k, KMeans(n_clusters=k, n_init=3, random_state=seed).fit(train))
    return KMeansScorer(model=best[2], k=best[1], silhouette=scores, n_fit=len(train),
                        n_silhouette=len(val))


# -- the live phase map ------------------------------------------------------------------------

PHASE_FEATURES = 64  # block means per spectrum: enough to tell minerals apart, small per spot
DEFAULT_PHASES = 4


def phase_features(spectra: np.ndarray) -> np.ndarray:
    """(n, n_px) spectra -> (n, PHASE_FEATURES) float32: each block's mean above the lowest of
    it and its neighbours (the emission, not the baseline), divided by the spot's total (so
    the phase, not the shot's ablated mass, sets the features)."""
    x = np.asarray(spectra, np.float32)
    n_px = x.shape[1]
    edges = np.linspace(0, n_px, PHASE_FEATURES + 1).astype(int)
    blocks = np.add.reduceat(x, edges[:-1], axis=1) / np.diff(edges).astype(np.float32)
    padded = np.pad(blocks, ((0, 0), (1, 1)), mode="edge")
    floor = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    emission = blocks - floor
    total = emission.sum(axis=1, keepdims=True)
    return np.where(total > 0, emission / np.where(total > 0, total, 1), 0).astype(np.float32)


def phase_labels(features: np.ndarray, k: int = DEFAULT_PHASES, *, seed: int = 0,
                 max_fit: int = DEFAULT_MAX_SPECTRA) -> np.ndarray:
    """k-means phase of each row of FEATURES (NaN rows: -1), labels ordered by phase size
    (0 the largest), so colours stay put as a map grows. Fitted on at most max_fit rows."""
    f = np.asarray(features, np.float32)
    ok = np.isfinite(f).all(axis=1)
    labels = np.full(f.shape[0], -1, np.int16)
    rows = f[ok]
    if rows.shape[0] < k:
        return labels
    rng = np.random.default_rng(seed)
    fit = rows if rows.shape[0] <= max_fit else rows[rng.choice(rows.shape[0], max_fit, False)]
    model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
    raw = model.predict(rows)
    order = np.argsort(-np.bincount(raw, minlength=k))
    rank = np.empty(k, np.int16)
    rank[order] = np.arange(k, dtype=np.int16)
    labels[ok] = rank[raw]
    return labels


__all__ = ["DEFAULT_K", "DEFAULT_MAX_SPECTRA", "DEFAULT_PHASES", "PHASE_FEATURES",
           "KMeansScorer", "fit_kmeans", "phase_features", "phase_labels", "sample_primary"]
