"""Training orchestration of the spectral transfer (Vrábel et al., JAAS 2023, 38, 841).

`train_transfer` turns a training and a validation map into a model package:

1. pairs of both maps (spots valid in both systems), baseline-corrected (`correct_baseline`);
2. primary and secondary scalers fitted on the training map only (mode "train", spread
   "global" by default: measured much better than the paper's per-channel scaling,
   docs/transfer_experiments.md);
3. the VAE on primary spectra, early stopping on the validation map;
4. the latent MLP, secondary spectrum -> VAE latent mean of the paired primary spectrum;
5. optionally the composed model (MLP + decoder) fine-tuned end to end; kept only when it
   improves the validation RSE. The decoder is part of the VAE, so the fine-tuned decoder is
   the one saved in the package;
6. baselines (PLS and KNN chosen on validation with `select`, PDS, mean spectrum, one-step MLP);
7. validation RSE of every model on unscaled, baseline-corrected primary spectra;
8. `save_package` with fingerprint, histories, metrics and preprocessing parameters.

Deterministic for a seed on one device (every network is initialised after seeding).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel, select
from plumelink.models.fit import (
    ArraySource,
    FitConfig,
    fit,
    mse_loss,
    predict,
    vae_loss,
)
from plumelink.models.metrics import rse
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, OneStepMLP
from plumelink.models.package import save_package
from plumelink.pipeline.pairs import PairedSpectra, check_axes, load_pairs, preprocess_pairs
from plumelink.pipeline.preprocess import MIN_WINDOW, SMOOTH_WINDOW, SpectralScaler

log = logging.getLogger(__name__)

# progress(stage, epoch, n_epochs, train_loss, val_loss); epoch counts from 1
ProgressCallback = Callable[[str, int, int, float | None, float | None], None]

STAGES = ("vae", "latent_mlp", "fine_tune", "one_step_mlp", "baselines")


@dataclass(frozen=True)
class TrainOptions:
    """Everything `train_transfer` needs besides the data; stored in the package manifest."""

    epochs: int = 100  # cap of every network's epochs (VAE, latent MLP, one-step MLP)
    learning_rate: float = 1e-3  # measured better than the paper's 1e-4 on small data
    batch_size: int = 128
    patience: int = 20
    weight_decay: float = 1e-5
    seed: int = 0
    scaler_mode: str = "train"
    scaler_spread: str = "global"
    fine_tune: bool = True
    fine_tune_epochs: int = 60  # also capped by epochs
    fine_tune_learning_rate: float = 3e-4
    baselines: bool = True
    pls_candidates: tuple[int, ...] = (8, 16, 32)
    knn_candidates: tuple[int, ...] = (1, 3, 5, 10, 20)
    pds_half_window: int = 5
    system: str = "secondary"  # name of the secondary system in the package
    vae_hidden: tuple[int, ...] = (1024, 512)
    latent: int = 64
    mlp_hidden: tuple[int, ...] = (128, 512)
    threads: int | None = None  # torch threads; None: the cores this process may use
    hash_inputs: bool = True  # sha256 of the input maps (else size + mtime only)
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "fine_tune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainOptions.{name} must be an integer >= 1, got {value!r}")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainOptions.{name} must be a positive number, got {value!r}")
        for name in ("pls_candidates", "knn_candidates"):
            values = tuple(getattr(self, name))
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(f"TrainOptions.{name} must be integers >= 1, got {values!r}")
        SpectralScaler(self.scaler_mode, self.scaler_spread)  # type: ignore[arg-type]

    def capped(self, epochs: int) -> TrainOptions:
        """These options with every network's epochs at most `epochs` (the CLI's --epochs)."""
        return replace(self, epochs=int(epochs),
                       fine_tune_epochs=min(self.fine_tune_epochs, int(epochs)))


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _file_fingerprint(path: Path, pairs: PairedSpectra, with_hash: bool) -> dict[str, Any]:
    stat = path.stat()
    entry: dict[str, Any] = {
        "file": path.name,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "map_shape": list(pairs.shape),
        "n_spots": int(pairs.shape[0] * pairs.shape[1]),
        "n_pairs": pairs.n,
    }
    if with_hash:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entry["sha256"] = digest.hexdigest()
    return entry


def _load(path: Path, what: str) -> PairedSpectra:
    pairs = preprocess_pairs(load_pairs(path))
    if pairs.n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    return pairs


class _Reporter:
    """Logs every epoch and forwards it to the optional progress callback."""

    def __init__(self, progress: ProgressCallback | None):
        self.progress = progress

    def epochs(self, stage: str, n_epochs: int) -> Callable[[int, float, float], None]:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            log.info("%s epoch %d/%d: train loss %.5g, validation loss %.5g",
                     stage, epoch + 1, n_epochs, train_loss, val_loss)
            if self.progress is not None:
                self.progress(stage, epoch + 1, n_epochs, train_loss, val_loss)

        return on_epoch

    def step(self, stage: str, i: int, n: int, score: float | None = None) -> None:
        if self.progress is not None:
            self.progress(stage, i, n, None, score)


def _config(options: TrainOptions, epochs: int, lr: float, offset: int) -> FitConfig:
    return FitConfig(epochs=epochs, batch_size=options.batch_size, learning_rate=lr,
                     weight_decay=options.weight_decay, patience=options.patience,
                     seed=options.seed + offset)


def train_transfer(
    train_path: str | os.PathLike[str],
    val_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: TrainOptions | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train the VAE + latent MLP transfer (and baselines) and write a model package.

    Returns the package folder (what `load_package` takes). The validation RSE of every
    model is in the manifest under metrics["validation_rse"].
    """
    options = options or TrainOptions()
    train_path, val_path, out = Path(train_path), Path(val_path), Path(out_dir)
    if (out / "manifest.json").exists() and not options.overwrite:
        raise FileExistsError(f"{out} already holds a model package")
    threads = options.threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # leave the caller's torch RNG state and thread count as they were
        with torch.random.fork_rng(devices=[]):
            _train(train_path, val_path, out, options, threads, _Reporter(progress))
    finally:
        torch.set_num_threads(previous_threads)
    return out


def _train(train_path: Path, val_path: Path, out: Path, options: TrainOptions, threads: int,
           report: _Reporter) -> None:

    train, val = _load(train_path, "training"), _load(val_path, "validation")
    check_axes(val, train.primary_wavelength_nm, train.secondary_wavelength_nm)
    log.info("pairs: %d training, %d validation; %d primary and %d secondary pixels",
             train.n, val.n, train.primary.shape[1], train.secondary.shape[1])

    mode, spread = options.scaler_mode, options.scaler_spread
    p_scaler = SpectralScaler(mode, spread).fit(train.primary)  # type: ignore[arg-type]
    s_scaler = SpectralScaler(mode, spread).fit(train.secondary)  # type: ignore[arg-type]
    if mode == "per-map":  # the paper's: the validation map scaled by its own statistics
        p_val_scaler = SpectralScaler(mode, spread).fit(val.primary)  # type: ignore[arg-type]
        s_val_scaler = SpectralScaler(mode, spread).fit(val.secondary)  # type: ignore[arg-type]
    else:
        p_val_scaler, s_val_scaler = p_scaler, s_scaler
    p_tr = p_scaler.transform(train.primary).astype(np.float32)
    s_tr = s_scaler.transform(train.secondary).astype(np.float32)
    p_va = p_val_scaler.transform(val.primary).astype(np.float32)
    s_va = s_val_scaler.transform(val.secondary).astype(np.float32)
    truth = val.primary  # unscaled, baseline-corrected

    def val_rse(scaled_pred: np.ndarray) -> float:
        return rse(truth, p_val_scaler.inverse_transform(scaled_pred))

    def score(y_true: np.ndarray, y_pred: np.ndarray) -> float:  # for select
        return rse(p_val_scaler.inverse_transform(y_true), p_val_scaler.inverse_transform(y_pred))

    histories: dict[str, Any] = {}
    metrics: dict[str, Any] = {"validation_rse": {}}
    scores = metrics["validation_rse"]
    n_px1, n_px2 = p_tr.shape[1], s_tr.shape[1]

    # -- VAE on primary spectra
    steps_per_epoch = math.ceil(train.n / options.batch_size)
    torch.manual_seed(options.seed)
    vae = VAE(n_px1, options.vae_hidden, options.latent)
    h = fit(vae, vae_loss(options.epochs * steps_per_epoch), ArraySource(p_tr),
            ArraySource(p_va), _config(options, options.epochs, options.learning_rate, 0),
            on_epoch=report.epochs("vae", options.epochs))
    histories["vae"] = h.as_dict()
    metrics["vae_reconstruction_rse"] = val_rse(predict(lambda x: vae(x)[0], p_va))

    # -- latent MLP: secondary -> latent mean
    z_tr = predict(lambda x: vae.encode(x)[0], p_tr)
    z_va = predict(lambda x: vae.encode(x)[0], p_va)
    torch.manual_seed(options.seed + 1)
    mlp = LatentMLP(n_px2, options.mlp_hidden, options.latent)
    h = fit(mlp, mse_loss, ArraySource(s_tr, z_tr), ArraySource(s_va, z_va),
            _config(options, options.epochs, options.learning_rate, 1),
            on_epoch=report.epochs("latent_mlp", options.epochs))
    histories["latent_mlp"] = h.as_dict()
    composed = ComposedTransfer(mlp, vae).eval()
    before = val_rse(predict(composed, s_va))
    metrics["vae_mlp_before_fine_tune"] = before
    scores["vae_mlp"] = before

    # -- end-to-end fine-tuning of MLP + decoder
    metrics["fine_tuned"] = False
    if options.fine_tune:
        n_ft = min(options.fine_tune_epochs, options.epochs)
        state = copy.deepcopy(composed.state_dict())
        h = fit(composed, mse_loss, ArraySource(s_tr, p_tr), ArraySource(s_va, p_va),
                _config(options, n_ft, options.fine_tune_learning_rate, 2),
                on_epoch=report.epochs("fine_tune", n_ft))
        histories["fine_tune"] = h.as_dict()
        after = val_rse(predict(composed, s_va))
        metrics["vae_mlp_after_fine_tune"] = after
        if after < before:
            scores["vae_mlp"] = after
            metrics["fine_tuned"] = True
        else:
            log.info("fine-tuning did not improve the validation RSE (%.5g -> %.5g); "
                     "keeping the weights before it", before, after)
            composed.load_state_dict(state)
    composed.eval()

    # -- mean spectrum: always scored (the floor to beat), saved only with the baselines
    mean = MeanPredictor().fit(s_tr, p_tr)
    scores["mean"] = val_rse(mean.predict(s_va))

    baselines: dict[str, Any] = {}
    one_step = None
    if options.baselines:
        torch.manual_seed(options.seed + 3)
        one_step = OneStepMLP(n_px2, n_px1, options.mlp_hidden, options.latent,
                              tuple(reversed(options.vae_hidden)))
        h = fit(one_step, mse_loss, ArraySource(s_tr, p_tr), ArraySource(s_va, p_va),
                _config(options, options.epochs, options.learning_rate, 3),
                on_epoch=report.epochs("one_step_mlp", options.epochs))
        histories["one_step_mlp"] = h.as_dict()
        one_step.eval()
        scores["one_step_mlp"] = val_rse(predict(one_step, s_va))

        selection: dict[str, Any] = {}
        max_components = min(train.n - 1, n_px2)
        pls_cands = [int(c) for c in options.pls_candidates if int(c) <= max_components]
        knn_cands = [int(k) for k in options.knn_candidates if int(k) <= train.n]
        n_steps = 3
        report.step("baselines", 0, n_steps)
        if pls_cands:
            pls, best, found = select(PLSModel, pls_cands, (s_tr, p_tr), (s_va, p_va), score)
            baselines["pls"] = pls
            selection["pls"] = {"n_components": best,
                                "scores": {str(k): v for k, v in found.items()}}
            scores["pls"] = found[best]
        report.step("baselines", 1, n_steps, scores.get("pls"))
        if knn_cands:
            knn, best, found = select(KNNModel, knn_cands, (s_tr, p_tr), (s_va, p_va), score)
            baselines["knn"] = knn
            selection["knn"] = {"k": best, "scores": {str(k): v for k, v in found.items()}}
            scores["knn"] = found[best]
        report.step("baselines", 2, n_steps, scores.get("knn"))
        pds = PDSModel(train.primary_wavelength_nm, train.secondary_wavelength_nm,
                       half_window=options.pds_half_window,
                       global_components=min(16, max_components))
        pds.fit(s_tr, p_tr)
        baselines["pds"] = pds
        scores["pds"] = val_rse(pds.predict(s_va))
        baselines["mean"] = mean
        report.step("baselines", 3, n_steps, scores["pds"])
        metrics["selection"] = selection

    for name, value in scores.items():
        log.info("validation RSE %s: %.5g", name, value)

    fingerprint = {
        "train": _file_fingerprint(train_path, train, options.hash_inputs),
        "val": _file_fingerprint(val_path, val, options.hash_inputs),
    }
    preprocessing = {
        "pairs": {"valid_only": True},
        "baseline": {
            "function": "plumelink.pipeline.preprocess.correct_baseline",
            "definition": "spectrum minus the Gaussian-weighted sliding mean (smooth_window, "
            "smooth_std) of the average of the right- and left-aligned sliding minima "
            "(min_window), windows truncated at the edges",
            "min_window": MIN_WINDOW,
            "smooth_window": SMOOTH_WINDOW,
            "smooth_std": SMOOTH_WINDOW / 6,
            "applied_to": ["primary", "secondary"],
        },
        "scaler": {"mode": mode, "spread": spread, "fitted_on": "train"},
    }
    options_record = asdict(options)
    options_record["threads"] = threads
    metrics["n_train_pairs"], metrics["n_val_pairs"] = train.n, val.n
    metrics["options"] = options_record
    save_package(
        out,
        vae=vae,
        latent_mlps={options.system: mlp},
        primary_wavelength_nm=train.primary_wavelength_nm,
        secondary_wavelength_nm={options.system: train.secondary_wavelength_nm},
        scalers={"primary": p_scaler, options.system: s_scaler},
        preprocessing=preprocessing,
        fingerprint=fingerprint,
        baselines={options.system: baselines} if baselines else None,
        one_step={options.system: one_step} if one_step is not None else None,
        metrics=metrics,
        histories=histories,
        overwrite=options.overwrite,
    )


def format_rse_table(rse_by_model: dict[str, float]) -> str:
    """The validation RSE of each model, best first, as aligned text lines."""
    rows = sorted(rse_by_model.items(), key=lambda kv: kv[1])
    width = max([len("model"), *(len(k) for k in rse_by_model)])
    lines = [f"{'model':<{width}}  validation RSE"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    return "\n".join(lines)


__all__ = ["STAGES", "TrainOptions", "format_rse_table", "train_transfer"]
