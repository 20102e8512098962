"""Baselines a chemometrician would compare against: PLS, KNN, PDS and the mean spectrum.

Each maps scaled secondary spectra to scaled primary spectra (`fit(X, Y)`, `predict(X)`),
with its hyperparameter chosen on the validation map (`select`). All keep their fitted
state in plain numpy arrays, so a model package can store them without pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cross_decomposition import PLSRegression
from sklearn.neighbors import KNeighborsRegressor

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray, np.ndarray], float]  # (true, predicted) -> lower is better


def _as32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass
class MeanPredictor:
    """Predicts the mean training primary spectrum whatever the input: the floor to beat."""

    mean: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> MeanPredictor:
        self.mean = _as32(y.mean(axis=0))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.mean is not None, "fit first"
        return np.broadcast_to(self.mean, (len(x), self.mean.size)).copy()

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean}


class PLSModel:
    """PLS regression (NIPALS), stored as its linear map y = x @ coef + intercept."""

    def __init__(self, n_components: int = 16):
        self.n_components = int(n_components)
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> PLSModel:
        pls = PLSRegression(n_components=self.n_components, scale=False, max_iter=1000)
        pls.fit(x, y)
        # sklearn >= 1.3: predict(x) = (x - x_mean) @ coef_.T + intercept_; fold the centring
        # into one affine map so the model is two arrays.
        coef = pls.coef_.T.astype(np.float64)
        self.coef = _as32(coef)
        self.intercept = _as32(pls.intercept_ - pls._x_mean @ coef)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.coef is not None and self.intercept is not None, "fit first"
        return _as32(x) @ self.coef + self.intercept

    def state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept,
                "n_components": np.array([self.n_components])}


class KNNModel:
    """k-nearest-neighbour regression: the mean primary spectrum of the k closest pairs."""

    def __init__(self, k: int = 5):
        self.k = int(k)
        self._knn: KNeighborsRegressor | None = None
        self.train_x: np.ndarray | None = None
        self.train_y: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> KNNModel:
        self.train_x, self.train_y = _as32(x), _as32(y)
        self._knn = KNeighborsRegressor(n_neighbors=self.k).fit(self.train_x, self.train_y)
        return self

    PREDICT_CHUNK = 1024  # queries at a time: the library gathers queries x k x channels

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self._knn is not None and self.train_y is not None, "fit first"
        x = _as32(x)
        out = np.empty((len(x), self.train_y.shape[1]), np.float32)
        for i in range(0, len(x), self.PREDICT_CHUNK):
            out[i:i + self.PREDICT_CHUNK] = self._knn.predict(x[i:i + self.PREDICT_CHUNK])
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"train_x": self.train_x, "train_y": self.train_y, "k": np.array([self.k])}


class PDSModel:
    """Piecewise direct standardisation with a global regression outside the overlap.

    Each primary channel inside the secondary's range is regressed (ridge) on a window of
    secondary channels around the same wavelength; channels the secondary does not cover
    (primary-only ranges) come from a global PLS on the whole secondary spectrum.
    """

    FIT_CHUNK = 512  # rows of the windowed design held at once while fitting

    def __init__(self, primary_nm: np.ndarray, secondary_nm: np.ndarray, half_window: int = 5,
                 ridge: float = 1e-2, global_components: int = 16):
        self.primary_nm = np.asarray(primary_nm, dtype=np.float64)
        self.secondary_nm = np.asarray(secondary_nm, dtype=np.float64)
        self.half_window = int(half_window)
        self.ridge = float(ridge)
        self.global_components = int(global_components)
        centre = np.interp(self.primary_nm, self.secondary_nm, np.arange(self.secondary_nm.size))
        self.inside = (self.primary_nm >= self.secondary_nm[0]) & (
            self.primary_nm <= self.secondary_nm[-1])
        lo = np.clip(np.rint(centre).astype(int) - self.half_window, 0,
                     self.secondary_nm.size - 2 * self.half_window - 1)
        self.window_start = lo  # (n_primary,)
        self.weights: np.ndarray | None = None  # (n_inside, window + 1) incl. intercept
        self.global_model = PLSModel(global_components)

    def _windows(self, x: np.ndarray) -> np.ndarray:
        """(n, n_inside, window) secondary values around each covered primary channel."""
        width = 2 * self.half_window + 1
        idx = self.window_start[self.inside][:, None] + np.arange(width)[None, :]
        return x[:, idx]

    def fit(self, x: np.ndarray, y: np.ndarray) -> PDSModel:
        x, y = _as32(x), _as32(y)
        n, c, w = len(x), int(self.inside.sum()), 2 * self.half_window + 1
        gram, rhs = np.zeros((c, w + 1, w + 1)), np.zeros((c, w + 1))
        # normal equations accumulated over row chunks: the whole windowed design in float64
        # would need n x c x (w + 1) x 8 bytes (~12 GB for 20,000 pairs)
        for i in range(0, n, self.FIT_CHUNK):
            win = self._windows(x[i:i + self.FIT_CHUNK]).astype(np.float64)  # (rows, c, w)
            design = np.concatenate([win, np.ones((len(win), c, 1))], axis=2)
            gram += np.einsum("ncw,ncv->cwv", design, design)
            rhs += np.einsum("ncw,nc->cw", design,
                             y[i:i + self.FIT_CHUNK, self.inside].astype(np.float64))
        gram += self.ridge * n * np.eye(w + 1)[None]
        gram[:, w, w] -= self.ridge * n  # do not shrink the intercept
        self.weights = np.linalg.solve(gram, rhs[..., None])[..., 0].astype(np.float32)
        if (~self.inside).any():
            self.global_model.fit(x, y[:, ~self.inside])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.weights is not None, "fit first"
        x = _as32(x)
        out = np.empty((len(x), self.primary_nm.size), dtype=np.float32)
        win = self._windows(x)
        out[:, self.inside] = (
            np.einsum("ncw,cw->nc", win, self.weights[:, :-1]) + self.weights[:, -1]
        )
        if (~self.inside).any():
            out[:, ~self.inside] = self.global_model.predict(x)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "window_start": self.window_start,
                "inside": self.inside, "global_coef": self.global_model.coef,
                "global_intercept": self.global_model.intercept}


def select(
    make: Callable[[int], object],
    candidates: Sequence[int],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    score: Score,
) -> tuple[object, int, dict[int, float]]:
    """Fit one model per candidate hyperparameter; keep the best on validation.

    (The published notebook's KNN search never updated its best score; here every
    candidate is compared with the best so far.)
    """
    best_model, best_value, best_score = None, candidates[0], np.inf
    scores: dict[int, float] = {}
    for value in candidates:
        model = make(value).fit(*train)  # type: ignore[attr-defined]
        s = float(score(val[1], model.predict(val[0])))  # type: ignore[attr-defined]
        scores[value] = s
        log.info("%s(%d): validation score %.5g", type(model).__name__, value, s)
        if s < best_score:
            best_model, best_value, best_score = model, value, s
    return best_model, best_value, scores
