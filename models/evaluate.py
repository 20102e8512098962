"""Apply a model package to spectra and maps, and evaluate it on a test map (Table 1 of the paper).

Every model's prediction follows the path of `train.py`'s validation RSE: baseline-corrected
spectra (`preprocess_pairs`), the package's scalers (train-fitted, or fitted on the map itself
for the paper's "per-map" mode), the scaled prediction of the network or baseline, and the
primary scaler's inverse. Metrics are on unscaled, baseline-corrected primary spectra:

- euclid: Euclidean distance per spectrum, averaged;
- cosine: negative cosine similarity per spectrum, averaged (−1 = same shape);
- rse: Σ(y−ŷ)² / Σ(y−ȳ)² over all spectra and channels, ȳ the per-channel mean of the true
  spectra (`RSEAccumulator`, streamed);
- k_score: agreement of the k-means labels of true and predicted spectra, k-means fitted on the
  primary training map, k chosen by silhouette on the validation map (`clusters.py`).

`evaluate_package` streams the test map block by block and keeps only per-spot scalars
(distance, label, confidence, emissivity) and a few spectra for the report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

from plumelink.models import confidence as C
from plumelink.models.choice import model_to_use, recommended_model
from plumelink.models.clusters import (
    DEFAULT_K,
    DEFAULT_MAX_SPECTRA,
    fit_kmeans,
    sample_primary,
)
from plumelink.models.fit import predict
from plumelink.models.intervals import (
    ConformalIntervals,
    band_coverage,
    band_distances,
    band_edges,
    calibrate,
    coverage,
)
from plumelink.models.metrics import RSEAccumulator, euclidean_distances, negative_cosines
from plumelink.models.package import (
    MANIFEST,
    ModelPackage,
    PackageMismatchError,
    check_data,
    load_package,
)
from plumelink.pipeline.element_maps import LineWindow, line_areas, line_window, resolution
from plumelink.pipeline.emissivity import total_emissivity
from plumelink.pipeline.line_catalogue import parse_line
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import PairedSpectra, iter_pair_blocks, preprocess_pairs
from plumelink.pipeline.preprocess import Baseline, Preprocessor, SpectralScaler

if TYPE_CHECKING:
    from plumelink.models.line_transfer import LineTransfer

log = logging.getLogger(__name__)

MODELS = ("vae_mlp", "one_step_mlp", "pls", "knn", "pds", "mean")
METRIC_KEYS = ("euclid", "cosine", "rse", "k_score")

# progress(stage, done, total); stages: "kmeans", "evaluate", "report"
ProgressCallback = Callable[[str, int, int], None]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def pick_system(package: ModelPackage, system: str | None) -> str:
    """The secondary system to use: the one given, or the package's only one."""
    if system is not None:
        if system not in package.latent_mlps:
            raise PackageMismatchError(
                f"the model package has no secondary system {system!r}; it has "
                f"{', '.join(repr(s) for s in package.systems)}")
        return system
    if len(package.systems) != 1:
        raise ValueError(f"the model package has secondary systems {package.systems}; "
                         "choose one (--system)")
    return package.systems[0]


def system_fingerprint(package: ModelPackage, system: str) -> dict[str, Any]:
    """The maps a system was fitted on: its own record when it joined the package later
    (`plumelink join`: maps of the primary with that system), else the package's; so that
    a joined system is calibrated and evaluated against maps of its own spectrometer."""
    entry = (package.manifest.get("secondary") or {}).get(system) or {}
    return entry.get("fingerprint") or package.manifest.get("fingerprint") or {}


def package_identity(package: ModelPackage) -> dict[str, Any]:
    """Who made a transferred map or metrics: package folder, manifest hash, training data."""
    m = package.manifest
    digest = hashlib.sha256((package.folder / MANIFEST).read_bytes()).hexdigest()
    fingerprint = m.get("fingerprint", {})
    return {
        "folder": str(package.folder.resolve()),
        "manifest_sha256": digest,
        "created": m.get("created", ""),
        "format_version": m.get("format_version", 0),
        "plumelink_version": (m.get("versions") or {}).get("plumelink") or "",
        "systems": list(package.systems),
        "latent_dim": int(package.vae.latent),
        "train_map": (fingerprint.get("train") or {}).get("path", ""),
        "train_sha256": (fingerprint.get("train") or {}).get("sha256", ""),
        "val_map": (fingerprint.get("val") or {}).get("path", ""),
        "val_sha256": (fingerprint.get("val") or {}).get("sha256", ""),
    }


@dataclass
class TransferModels:
    """Every model of one secondary system of a package, applied like train.py scores them."""

    package: ModelPackage
    system: str
    preprocessor: Preprocessor  # the package's, or the map's own with per-map scaling
    latent_stats: C.LatentStats | None = None

    @classmethod
    def from_package(cls, package: ModelPackage, system: str | None = None) -> TransferModels:
        system = pick_system(package, system)
        return cls(package, system, package.preprocessor(system))

    @property
    def per_map(self) -> bool:
        return self.preprocessor.per_map

    @property
    def primary_scaler(self) -> SpectralScaler:
        return self.preprocessor.primary

    @property
    def secondary_scaler(self) -> SpectralScaler:
        return self.preprocessor.secondary

    def fit_map_scalers(self, secondary: Iterable[np.ndarray],
                        primary: Iterable[np.ndarray] | None = None) -> None:
        """The paper's per-map scaling: scalers fitted on this map's baseline-corrected spectra.

        Without primary spectra (plain transfer) the training primary scaler inverts."""
        self.preprocessor = self.preprocessor.for_map(secondary, primary)

    @property
    def names(self) -> list[str]:
        have = {"vae_mlp"}
        if self.system in self.package.one_step:
            have.add("one_step_mlp")
        have |= set(self.package.baselines.get(self.system, {}))
        return [n for n in MODELS if n in have] + sorted(have - set(MODELS))

    def scale_secondary(self, corrected: np.ndarray) -> np.ndarray:
        return self.preprocessor.secondary.transform(corrected).astype(np.float32)

    def predict_scaled(self, name: str, s_scaled: np.ndarray) -> np.ndarray:
        if name == "vae_mlp":
            return predict(self.package.composed(self.system), s_scaled)
        if name == "one_step_mlp":
            return predict(self.package.one_step[self.system], s_scaled)
        return self.package.baselines[self.system][name].predict(s_scaled)

    def predict(self, name: str, corrected: np.ndarray) -> np.ndarray:
        """Unscaled, baseline-corrected primary spectra from baseline-corrected secondaries."""
        return self.preprocessor.primary_spectra(
            self.predict_scaled(name, self.scale_secondary(corrected)))

    def transfer(self, corrected: np.ndarray) -> tuple[np.ndarray, C.TransferOutput]:
        """vae_mlp prediction (unscaled) and its latents and confidence distances."""
        out = C.transfer_with_distances(self.package.latent_mlps[self.system], self.package.vae,
                                        self.scale_secondary(corrected), stats=self.latent_stats,
                                        decoder=self.package.decoders.get(self.system))
        return self.preprocessor.primary_spectra(out.scaled), out


class PackageTransfer:
    """A model package as the `BlockTransfer` of `plumelink.pipeline.transfer.transfer_map`.

    Input: raw secondary counts; output: transferred primary spectra (unscaled,
    baseline-corrected) and the confidence of `plumelink.models.confidence`, computed by its
    `FusedTransfer` (folded layers, small groups of spectra; float32 rounding away from
    `TransferModels.transfer`, the reference). The spectra are those of ``model``, by default
    the package's best on validation (`plumelink.models.choice`); the confidence is always
    the latent space's for the same input. precision "bf16": the matrix products in
    bfloat16, on a CPU with bf16 instructions only (ValueError elsewhere).
    """

    def __init__(self, package: ModelPackage, system: str | None = None,
                 method: str = C.DEFAULT_METHOD, precision: str = "fp32",
                 model: str | None = None, confidence_precision: str = "auto"):
        if method not in C.METHODS or method == "mahalanobis":
            raise ValueError(f"confidence method for transfer must be one of "
                             f"{[m for m in C.METHODS if m != 'mahalanobis']}, got {method!r}")
        precision, confidence_precision = C.resolve_precisions(precision, confidence_precision)
        self.models = TransferModels.from_package(package, system)
        #: why this model transfers: the package's best on validation unless ``model`` names one
        self.choice = recommended_model(package.manifest, self.models.system, self.models.names)
        #: the model whose spectra this transfer writes (its confidence is always the
        #: latent space's: the VAE path's distances for the same input)
        self.model_name = model_to_use(self.choice, self.models.names, model)
        self.package = package
        self.primary_wavelength_nm = package.primary_wavelength_nm
        self.needs_map_statistics = self.models.per_map
        self.confidence_method = method
        self.confidence_definition = C.DEFINITION.replace(C.DEFAULT_METHOD, method)
        self.precision = precision
        #: the confidence branch's arithmetic (see `FusedTransfer`), "auto" resolved
        self.confidence_precision = confidence_precision
        #: calibrated prediction intervals (`calibrate`), written beside the confidence
        self.intervals: ConformalIntervals | None = None
        self.calibration_map: Path | None = None
        self._fused: C.FusedTransfer | None = None

    def calibrate(self, val_map: str | os.PathLike[str] | None = None,
                  block_spots: int = 4096, spots: int | None = None) -> ConformalIntervals:
        """Calibrate prediction intervals on a paired map (default: the package's recorded
        validation map); call it before `fit_map` (a per-map package is refitted there).

        spots: calibrate on that many spots spread over the map (farthest-point), e.g. a few
        hundred pairs measured on the day of the maps to transfer: a map of another day
        breaks the intervals' exchangeability (README: 58-61 % coverage of a nominal 90 %
        from the validation map, 90 % from 200 pairs of the day)."""
        recorded = (system_fingerprint(self.package, self.models.system).get("val") or {}).get(
            "path", "")
        path = _resolve(val_map, recorded, "val")
        self.intervals = _calibrate_intervals(self.models, path, block_spots,
                                              self.preprocessor.baseline,
                                              self.confidence_method, self.model_name,
                                              spots=spots)
        self.calibration_map = path
        return self.intervals

    @property
    def preprocessor(self) -> Preprocessor:
        """Baseline correction and scalers this transfer applies (per-map: after `fit_map`)."""
        return self.models.preprocessor

    def check_map(self, secondary_wavelength_nm: np.ndarray) -> None:
        check_data(self.package, self.models.system,
                   secondary_wavelength_nm=secondary_wavelength_nm)

    def fit_map(self, secondary_blocks: Iterable[np.ndarray]) -> None:
        self.models.fit_map_scalers(self.preprocessor.correct(b) for b in secondary_blocks)

    def identity(self) -> dict[str, Any]:
        ident = package_identity(self.package)
        ident["system"] = self.models.system
        ident["model"] = self.model_name
        ident["model_choice"] = ("named by the user" if self.model_name != self.choice.model
                                 else self.choice.reason)
        ident["output"] = "baseline-corrected primary counts (unscaled)"
        ident["precision"] = self.precision
        ident["confidence_precision"] = self.confidence_precision
        ident["preprocessing"] = self.preprocessor.to_dict()
        return ident

    def fused(self) -> C.FusedTransfer:
        """The folded kernel for the current preprocessor (rebuilt after a per-map fit)."""
        if self._fused is None or self._fused.preprocessor is not self.preprocessor:
            system = self.models.system
            self._fused = C.FusedTransfer(
                self.package.latent_mlps[system], self.package.vae,
                self.package.decoders.get(system), self.preprocessor, self.confidence_method,
                precision=self.precision, confidence_precision=self.confidence_precision)
        return self._fused

    def __call__(self, secondary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.finish(self.prepare(secondary))

    def prepare(self, secondary: np.ndarray) -> tuple[Preprocessor, Any]:
        """The preprocessing of raw secondary counts (`StagedTransfer`: run on the worker
        threads of `transfer_map`). It needs no kernel, so the first group is prepared while
        `warm_up` builds the folds."""
        pre = self.preprocessor
        return pre, C.scaled_inputs(pre, secondary)

    def warm_up(self) -> None:
        """Fold the kernel now (`StagedTransfer`): 0.08-0.11 s on the small map's package.
        Its matrix products take both cores, so `transfer_map` folds before the first group
        is prepared: alongside the preparing threads the fold took 0.26 s, and the first
        networks started 0.16 s later."""
        self.fused()

    def finish(self, prepared: tuple[Preprocessor, Any], out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The networks and the confidence on what `prepare` gave; the primary spectra
        written into `out` when given (C-contiguous float32 (n, n_primary_px))."""
        pre, inputs = prepared
        if pre is not self.preprocessor:
            raise ValueError("the inputs were prepared with another preprocessor (fit_map "
                             "between prepare and finish?)")
        vae_mlp = self.model_name == "vae_mlp"
        primary, distance = self.fused().run(inputs, spectra=vae_mlp,
                                             out=out if vae_mlp else None)
        if primary is None:  # the chosen model's spectra, the latent space's confidence
            primary = pre.primary_spectra(
                self.models.predict_scaled(self.model_name, inputs.numpy())).astype(np.float32)
            if out is not None:
                out[...] = primary
                primary = out
        return primary, C.confidence_from_distance(distance)

    def line_transfer(self) -> LineTransfer:
        """This model raster line by raster line, for one map (the live view's transfer)."""
        from plumelink.models.line_transfer import line_transfer_for

        return line_transfer_for(self)


# -- evaluation ------------------------------------------------------------------------------


@dataclass
class SpotSpectra:
    """True and predicted spectrum (the evaluation's shown model) of one spot, for the
    report."""

    label: str
    iy: int
    ix: int
    true: np.ndarray
    predicted: np.ndarray


@dataclass
class EvaluationMaps:
    """Per-spot results of an evaluation (ny, nx; NaN / -1 where no pair), for the report."""

    shape: tuple[int, int]
    primary_wavelength_nm: np.ndarray
    emissivity_true: np.ndarray
    emissivity_pred: np.ndarray
    euclid: np.ndarray
    cosine: np.ndarray
    labels_true: np.ndarray
    labels_pred: np.ndarray
    confidence: np.ndarray
    spectra: list[SpotSpectra] = field(default_factory=list)
    spectra_by: str = "mineral"
    # where each model loses: RSE per band of primary channels (centres rse_band_nm), per model
    rse_per_band: dict[str, np.ndarray] = field(default_factory=dict)
    rse_band_nm: np.ndarray | None = None
    secondary_range_nm: tuple[float, float] | None = None  # the rest is primary-only
    # element maps (REPORT_LINES) from the true and the vae_mlp transferred spectra
    element_windows: tuple[LineWindow, ...] = ()
    elements_true: dict[str, np.ndarray] = field(default_factory=dict)
    elements_pred: dict[str, np.ndarray] = field(default_factory=dict)
    # radius of the calibrated prediction interval per spot (Euclidean), at interval_level
    interval_radius: np.ndarray | None = None
    interval_level: float = 0.9
    model: str = "vae_mlp"  # whose transfer the per-spot maps show (the recommended model)


#: lines whose maps the report compares (measured vs transferred): major elements of rocks
REPORT_LINES = ("Si I 288.16", "Al I 309.27", "Ca II 393.37", "Na I 330.24", "Fe", "Mn")
SPOTS_PER_REPORT = 4
RSE_BANDS = 81  # ~2 nm bands of the primary axis for the report's RSE per wavelength


def _report_windows(axis: np.ndarray, settings: dict[str, Any]) -> tuple[LineWindow, ...]:
    """The REPORT_LINES that lie on this primary axis, with their windows."""
    axis = np.asarray(axis, np.float64)
    res = resolution(settings, "primary", axis)
    windows = []
    for name in REPORT_LINES:
        try:
            windows.append(line_window(parse_line(name, (float(axis[0]), float(axis[-1]))),
                                       axis, res))
        except ValueError:  # not on this axis (another spectrometer's range)
            continue
    return tuple({w.label: w for w in windows}.values())


def element_agreement(maps: EvaluationMaps) -> dict[str, dict[str, float | int]]:
    """Pearson and Spearman correlation of each line's measured and transferred map: the
    downstream question the spectral metrics stand in for."""
    out = {}
    for w in maps.element_windows:
        a, b = maps.elements_true[w.label], maps.elements_pred[w.label]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
            continue
        out[w.label] = {"pearson": float(np.corrcoef(a[ok], b[ok])[0, 1]),
                        "spearman": float(spearmanr(a[ok], b[ok]).statistic),
                        "n": int(ok.sum())}
    return out


def _resolve(path: str | os.PathLike[str] | None, recorded: str, what: str) -> Path:
    if path is not None:
        p = Path(path)
    elif recorded:
        p = Path(recorded)
    else:
        raise ValueError(f"the package records no {what} map; give it (--{what})")
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} map {p} (for the k-means) does not exist; give it with --{what}")
    return p


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def compression_record(n_px: int, latent: int, n_spectra: int) -> dict[str, Any]:
    """The shared latent library: a primary spectrum as `latent` floats instead of n_px."""
    return {
        "n_px": int(n_px),
        "latent_dim": int(latent),
        "ratio": n_px / latent,
        "bytes_per_spectrum_float32": 4 * n_px,
        "bytes_per_latent_float32": 4 * latent,
        "test_map_bytes_float32": 4 * n_px * n_spectra,
        "test_map_latent_bytes_float32": 4 * latent * n_spectra,
    }


def evaluate_package(
    model_dir: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    report_dir: str | os.PathLike[str] | None = None,
    *,
    system: str | None = None,
    train_path: str | os.PathLike[str] | None = None,
    val_path: str | os.PathLike[str] | None = None,
    k_values: Iterable[int] = DEFAULT_K,
    max_kmeans_spectra: int = DEFAULT_MAX_SPECTRA,
    block_spots: int = 4096,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    model: str | None = None,
) -> tuple[dict[str, Any], EvaluationMaps]:
    """Score every model of a package on a test map; write metrics.json and report.html.

    The per-spot maps, intervals, element maps and spectra of the report are those of
    ``model``, by default the package's recommended one (lowest validation RSE: what
    `transfer` uses). Returns (metrics, maps). With report_dir None nothing is written.
    """
    package = load_package(model_dir)
    models = TransferModels.from_package(package, system)
    choice = recommended_model(package.manifest, models.system, models.names)
    shown = model_to_use(choice, models.names, model)
    test_path = Path(test_path)
    with MapReader(test_path) as reader:
        check_data(package, models.system, reader.primary_wavelength_nm,
                   reader.secondary_wavelength_nm)
        shape = reader.shape
        mineral_names = reader.mineral_names
        total = int(reader.lines_done.sum()) * shape[1]
        windows = _report_windows(package.primary_wavelength_nm, reader.settings)
    fp = system_fingerprint(package, models.system)
    train_map = _resolve(train_path, (fp.get("train") or {}).get("path", ""), "train")
    val_map = _resolve(val_path, (fp.get("val") or {}).get("path", ""), "val")

    def step(stage: str) -> Callable[[int, int], None]:
        return lambda d, t: progress(stage, d, t) if progress is not None else None

    # -- k-means on the primary training map, k by silhouette on validation
    t0 = time.perf_counter()
    baseline = models.preprocessor.baseline
    train_sample = sample_primary(train_map, max_kmeans_spectra, seed=seed, baseline=baseline)
    val_sample = sample_primary(val_map, max_kmeans_spectra, seed=seed + 1, baseline=baseline)
    kmeans = fit_kmeans(train_sample, val_sample, tuple(k_values), seed=seed,
                        progress=step("kmeans"))
    kmeans_s = time.perf_counter() - t0
    # training latents for the Mahalanobis candidate of the confidence
    train_scaled = package.scalers["primary"].transform(train_sample)
    z_train = predict(lambda x: package.vae.encode(x)[0], train_scaled)
    if len(z_train) > package.vae.latent:
        models.latent_stats = C.LatentStats.fit(z_train)
    del train_sample, val_sample, train_scaled
    # prediction intervals calibrated on the validation map (its pairs, the same transfer)
    intervals = _calibrate_intervals(models, val_map, block_spots, baseline, model=shown)
    if models.per_map:
        models.fit_map_scalers(
            (b.secondary for b in _pair_blocks(test_path, block_spots, baseline)),
            (b.primary for b in _pair_blocks(test_path, block_spots, baseline)))

    names = models.names
    acc = {n: RSEAccumulator() for n in names}
    sums = {n: {"euclid": 0.0, "cosine": 0.0, "agree": 0} for n in names}
    timings = {n: 0.0 for n in names}
    nx = shape[1]
    nan_map = np.full(shape, np.nan, np.float32)
    maps = EvaluationMaps(
        shape=shape, primary_wavelength_nm=package.primary_wavelength_nm,
        emissivity_true=nan_map.copy(), emissivity_pred=nan_map.copy(), euclid=nan_map.copy(),
        cosine=nan_map.copy(), labels_true=np.full(shape, -1, np.int32),
        labels_pred=np.full(shape, -1, np.int32), confidence=nan_map.copy(),
        element_windows=windows,
        elements_true={w.label: nan_map.copy() for w in windows},
        elements_pred={w.label: nan_map.copy() for w in windows}, model=shown)
    sec_axis = package.secondary_wavelength_nm[models.system]
    maps.secondary_range_nm = (float(np.min(sec_axis)), float(np.max(sec_axis)))
    pick = np.random.default_rng(seed)
    err_all: list[np.ndarray] = []
    band_err: list[np.ndarray] = []
    conf_all: list[np.ndarray] = []
    dist_all: dict[str, list[np.ndarray]] = {}
    firsts: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    counts: dict[int, int] = {}
    use_truth = None
    n = 0
    for block in _pair_blocks(test_path, block_spots, baseline):
        y = block.primary
        labels_true = kmeans.labels(y)
        iy, ix = block.iy, block.ix
        for name in names:
            t = time.perf_counter()
            if name == "vae_mlp":
                pred, out = models.transfer(block.secondary)
            else:
                pred = models.predict(name, block.secondary)
            timings[name] += time.perf_counter() - t
            acc[name].add(y, pred)
            e, c = euclidean_distances(y, pred), negative_cosines(y, pred)
            labels = kmeans.labels(pred)
            sums[name]["euclid"] += float(e.sum())
            sums[name]["cosine"] += float(c.sum())
            sums[name]["agree"] += int((labels == labels_true).sum())
            if name == shown:  # vae_mlp comes first (MODELS): `out` is this block's
                maps.euclid[iy, ix], maps.cosine[iy, ix] = e, c
                maps.labels_pred[iy, ix] = labels
                conf = C.confidence_from_distance(out.distances[C.DEFAULT_METHOD])
                maps.confidence[iy, ix] = conf
                err_all.append(e)
                conf_all.append(conf)
                band_err.append(band_distances(y, pred, intervals.band_px))
                for k, v in out.distances.items():
                    dist_all.setdefault(k, []).append(v)
                every = np.ones(len(y), bool)
                maps.emissivity_pred[iy, ix] = total_emissivity(pred, every)
                maps.emissivity_true[iy, ix] = total_emissivity(y, every)
                if windows:
                    true_areas, pred_areas = line_areas(y, windows), line_areas(pred, windows)
                    for k, w in enumerate(windows):
                        maps.elements_true[w.label][iy, ix] = true_areas[:, k]
                        maps.elements_pred[w.label][iy, ix] = pred_areas[:, k]
                shown_pred = pred
        maps.labels_true[iy, ix] = labels_true
        if use_truth is None:
            use_truth = block.mineral is not None and bool(mineral_names)
        groups = block.mineral.astype(np.int64) if use_truth else labels_true
        for j, g in enumerate(groups.tolist()):
            counts[g] = counts.get(g, 0) + 1
            # one spot per group, drawn uniformly over the whole map (reservoir sampling):
            # the report's spots come from anywhere, not from the first raster lines
            if pick.random() * counts[g] < 1.0:
                firsts[g] = (int(block.index[j]), y[j].copy(), shown_pred[j].copy())
        n += block.n
        if progress is not None:
            progress("evaluate", n, total)
    if n == 0:
        raise ValueError(f"test map {test_path} has no spot valid in both systems")

    chosen = sorted(counts, key=lambda g: -counts[g])[:SPOTS_PER_REPORT]
    for g in chosen:
        index, true, pred = firsts[g]
        label = (mineral_names[g] if use_truth and 0 <= g < len(mineral_names)
                 else f"cluster {g}")
        maps.spectra.append(SpotSpectra(label, index // nx, index % nx, true, pred))
    maps.spectra_by = "mineral" if use_truth else "k-means cluster"

    wl = np.asarray(package.primary_wavelength_nm, np.float64)
    edges = band_edges(wl.size, RSE_BANDS)
    maps.rse_band_nm = np.add.reduceat(wl, edges[:-1]) / np.diff(edges)
    maps.rse_per_band = {name: acc[name].per_band(edges) for name in names}
    maps.interval_radius = intervals.radius_for(maps.confidence).astype(np.float32)
    maps.interval_level = intervals.level
    interval_test = coverage(intervals, maps.euclid.ravel(), maps.confidence.ravel())
    interval_test["per_band"] = band_coverage(intervals, np.concatenate(band_err),
                                              np.concatenate(conf_all))
    err = np.concatenate(err_all)
    spearman = {}
    for method, parts in dist_all.items():
        conf = C.confidence_from_distance(np.concatenate(parts))
        rho, p = spearmanr(conf, err) if len(err) > 2 else (float("nan"), float("nan"))
        spearman[method] = {"rho": float(rho), "p_value": float(p)}

    result: dict[str, Any] = {
        "models": {
            name: {
                "euclid": sums[name]["euclid"] / n,
                "cosine": sums[name]["cosine"] / n,
                "rse": acc[name].value(),
                "k_score": sums[name]["agree"] / n,
            }
            for name in names
        },
        "n_spectra": n,
        "test_map": str(test_path.resolve()),
        "map_shape": list(shape),
        "system": models.system,
        "definitions": {
            "euclid": "mean over spectra of the Euclidean distance ||y - ŷ||",
            "cosine": "mean over spectra of -cos(y, ŷ); -1 = identical shape",
            "rse": "Σ(y-ŷ)² / Σ(y-ȳ)² over all spectra and channels; ȳ per-channel mean of y",
            "k_score": "fraction of spectra whose k-means label of ŷ equals that of y",
            "spectra": "unscaled, baseline-corrected primary counts",
        },
        "timings_s": {
            **{name: {"total": timings[name], "per_spectrum_us": 1e6 * timings[name] / n}
               for name in names},
            "kmeans_fit": kmeans_s,
        },
        "kmeans": {**kmeans.record(), "train_map": str(train_map), "val_map": str(val_map)},
        "compression": compression_record(package.vae.n_pixels, package.vae.latent, n),
        "confidence": {
            "method": C.DEFAULT_METHOD,
            "definition": C.DEFINITION,
            "spearman_vs_euclid": spearman.get(C.DEFAULT_METHOD, {}).get("rho"),
            "error_of": shown,
            "note": "confidence is higher for more trustworthy spectra, so a good confidence "
                    "has a negative rank correlation with the error",
            "candidates": spearman,
        },
        "validation_rse": package.manifest.get("metrics", {}).get("validation_rse", {}),
        "recommended": choice.to_dict(),
        "shown_model": shown,
        "intervals": {
            "calibration": {**intervals.to_dict(), "map": str(val_map)},
            "test": interval_test,
            "note": "the true spectrum lies within `radius` (Euclidean) of the transferred one "
                    "with probability >= level when the spot is exchangeable with the "
                    "calibration map's; coverage on the test map (another day) measures how "
                    "far the day shift breaks that",
        },
        "element_maps": {
            "lines": element_agreement(maps),
            "definition": "line area above a local baseline (plumelink lines) per spot, from "
                          f"the true and the {shown} transferred primary spectra; pearson and "
                          "spearman over the spots of the test map",
        },
        "package": package_identity(package),
        "scaler_mode": package.scalers["primary"].mode,
        "evaluated": _now(),
    }
    result = _jsonable(result)
    if report_dir is not None:
        from plumelink.models.report import write_report

        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=1, allow_nan=False),
                                          encoding="utf-8")
        write_report(out, result, maps, progress=step("report"))
    return result, maps


def _calibrate_intervals(models: TransferModels, val_map: Path, block_spots: int,
                         baseline: Baseline, method: str = C.DEFAULT_METHOD,
                         model: str = "vae_mlp", spots: int | None = None
                         ) -> ConformalIntervals:
    """Split-conformal radii of the transfer by ``model`` from the validation map's pairs
    (its per-map scalers fitted first when the package scales per map); the bins are those of
    the latent space's confidence, whichever model writes the spectra. spots: only that many
    pairs, spread over the map (`models.adapt.select_pairs`)."""
    if models.per_map:
        models.fit_map_scalers((b.secondary for b in _pair_blocks(val_map, block_spots, baseline)),
                               (b.primary for b in _pair_blocks(val_map, block_spots, baseline)))
    wl = np.asarray(models.package.primary_wavelength_nm, np.float64)
    px = band_edges(wl.size, RSE_BANDS)
    distances, confidence, bands, where = [], [], [], []
    for block in _pair_blocks(val_map, block_spots, baseline):
        where.append(block.index)
        pred, out = models.transfer(block.secondary)
        if model != "vae_mlp":
            pred = models.predict(model, block.secondary)
        distances.append(euclidean_distances(block.primary, pred))
        bands.append(band_distances(block.primary, pred, px))
        confidence.append(C.confidence_from_distance(out.distances[method]))
    if not distances:
        raise ValueError(f"validation map {val_map} has no spot valid in both systems to "
                         "calibrate the intervals on")
    d, c, b = np.concatenate(distances), np.concatenate(confidence), np.concatenate(bands)
    if spots is not None:
        from plumelink.models.adapt import select_pairs

        with MapReader(val_map) as reader:
            shape = reader.shape
        keep = select_pairs(np.concatenate(where), shape, spots, "spread", 0,
                            what=f"calibration map {val_map}")
        d, c, b = d[keep], c[keep], b[keep]
    return calibrate(d, c, band_scores=b, band_px=px,
                     band_nm=np.stack([wl[px[:-1]], wl[px[1:] - 1]], axis=1))


def _pair_blocks(path: Path, block_spots: int, baseline: Baseline) -> Iterator[PairedSpectra]:
    for block in iter_pair_blocks(path, block_spots):
        yield preprocess_pairs(block, baseline=baseline)


__all__ = [
    "METRIC_KEYS",
    "MODELS",
    "EvaluationMaps",
    "PackageTransfer",
    "TransferModels",
    "compression_record",
    "evaluate_package",
    "package_identity",
    "pick_system",
]
