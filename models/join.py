"""A new secondary system joins an existing model package (the paper's shared latent space).

Vrábel et al. (JAAS 2023) train the VAE on primary spectra once; every secondary system then
only needs its own latent MLP, from its spectra to the VAE's latent means of the paired primary
spectra. `join_secondary` does exactly that for a package written by `train_transfer`:

1. pairs of a training and a validation map measured by the primary and the NEW system
   (spots valid in both), baseline-corrected like the package's training data;
2. the maps' primary axis checked against the package's; their primary spectra scaled with the
   package's primary scaler and encoded by the package's frozen VAE (latent means): the
   targets;
3. a scaler for the new system, fitted on its training spectra only (the package's mode and
   spread);
4. a new LatentMLP (the architecture of the package's existing MLPs), early stopping on the
   validation map;
5. validation RSE on unscaled, baseline-corrected primary spectra of the transfer (new MLP +
   the shared decoder), of the mean spectrum and of the VAE's own reconstruction (the
   primary-only reference: what any secondary system can at best reach through this latent
   space);
6. optionally (``fine_tune=True``) the new MLP and a COPY of the decoder fine-tuned end to end
   on the new system's pairs, kept when it improves the validation RSE: the copy is stored as
   the system's own ``decoder-<system>.safetensors``; the shared VAE decoder is not changed;
7. `add_secondary`: the new weight files and a rewritten manifest. ``vae.safetensors`` and the
   other systems' files are never opened for writing.

Deterministic for a seed on one device.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plumelink.models.augment import InputNoise, augmented
from plumelink.models.baselines import MeanPredictor
from plumelink.models.fit import (
    ArraySource,
    BatchSource,
    FitConfig,
    fit,
    kept_if_better,
    mse_loss,
    predict,
)
from plumelink.models.metrics import rse
from plumelink.models.networks import ComposedTransfer, LatentMLP, SystemDecoder
from plumelink.models.package import (
    ModelPackage,
    PackageMismatchError,
    add_secondary,
    load_package,
)
from plumelink.pipeline.pairs import PairedSpectra, check_axes, load_pairs, preprocess_pairs
from plumelink.pipeline.preprocess import SpectralScaler

log = logging.getLogger(__name__)

# progress(stage, epoch, n_epochs, train_loss, val_loss), like train_transfer's
ProgressCallback = Callable[[str, int, int, float | None, float | None], None]

# Used when the package's manifest does not record its training options.
DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3, "batch_size": 128, "patience": 25, "weight_decay": 1e-5,
    "mlp_hidden": (128, 512), "fine_tune_learning_rate": 3e-4, "fine_tune_epochs": 100,
    "linear_rank": 0, "input_noise": 0.0,
    "schedule": "plateau", "min_lr_fraction": 0.01, "lr_decay_patience": 8,
    "lr_decay_factor": 0.3,
}


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _load(path: Path, what: str) -> PairedSpectra:
    pairs = preprocess_pairs(load_pairs(path))
    if pairs.n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    return pairs


def _check_primary(package: ModelPackage, pairs: PairedSpectra, path: Path) -> None:
    try:  # only the primary axis is compared: the secondary is the new system's own
        check_axes(pairs, package.primary_wavelength_nm, pairs.secondary_wavelength_nm)
    except ValueError as e:
        raise PackageMismatchError(
            f"the primary spectrometer of {path} does not match the model package's "
            f"(a new secondary system joins only with maps measured by the same primary): {e}"
        ) from e


def _options(package: ModelPackage) -> dict[str, Any]:
    recorded = package.manifest.get("metrics", {}).get("options", {}) or {}
    out = {k: recorded.get(k, v) for k, v in DEFAULTS.items()}
    existing = [e["latent_mlp"]["config"] for e in package.manifest["secondary"].values()]
    if existing:  # the same architecture as the systems already in the package
        out["mlp_hidden"] = tuple(int(h) for h in existing[0]["hidden"])
    out["mlp_hidden"] = tuple(int(h) for h in out["mlp_hidden"])
    return out


def _fingerprint(path: Path, pairs: PairedSpectra) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    stat = path.stat()
    return {"file": path.name, "path": str(path.resolve()), "size": stat.st_size,
            "mtime": stat.st_mtime, "map_shape": list(pairs.shape), "n_pairs": pairs.n,
            "sha256": digest.hexdigest()}


def join_secondary(
    model_dir: str | os.PathLike[str],
    system_name: str,
    train_map: str | os.PathLike[str],
    val_map: str | os.PathLike[str],
    *,
    epochs: int = 100,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    replace: bool = False,
    threads: int | None = None,
    fine_tune: bool = False,
) -> dict[str, Any]:
    """Train a latent MLP for a new secondary system into an existing package; its metrics.

    The maps pair the package's primary with the new system (its spectra in the maps'
    /map/secondary group). Returns the new system's metrics, also stored in the manifest
    under metrics[system_name]: validation RSE of the transfer ("vae_mlp"), of the mean
    spectrum and of the VAE reconstruction of the primary spectra (the reference), and the
    validation RSE of the package's other systems as recorded when they were trained.
    fine_tune: also fine-tune MLP + a copy of the decoder for this system (its own file; the
    shared VAE is never changed), with the package's fine-tuning options.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    folder = Path(model_dir)
    package = load_package(folder)
    if system_name in package.latent_mlps and not replace:
        raise ValueError(f"the package already has a secondary system {system_name!r} "
                         f"(replace=True to retrain it)")
    train_path, val_path = Path(train_map), Path(val_map)
    train, val = _load(train_path, "training"), _load(val_path, "validation")
    _check_primary(package, train, train_path)
    _check_primary(package, val, val_path)
    check_axes(val, train.primary_wavelength_nm, train.secondary_wavelength_nm)
    for other, axis in package.secondary_wavelength_nm.items():
        if other != system_name and axis.size == train.secondary.shape[1] and np.allclose(
                axis, train.secondary_wavelength_nm, atol=1e-3):
            log.warning("the new system %r has the same wavelength axis as %r already in the "
                        "package: are these maps of the new system?", system_name, other)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or _cores())
    try:
        with torch.random.fork_rng(devices=[]):
            metrics, mlp, s_scaler, history, mean, decoder = _join(
                package, train, val, epochs, seed, progress, fine_tune)
    finally:
        torch.set_num_threads(previous)

    fingerprint = {"train": _fingerprint(train_path, train), "val": _fingerprint(val_path, val)}
    add_secondary(folder, system_name, mlp, train.secondary_wavelength_nm, s_scaler,
                  baselines={"mean": mean}, fingerprint=fingerprint, metrics=metrics,
                  history=history, replace=replace, decoder=decoder)
    for name, value in metrics["validation_rse"].items():
        log.info("%s validation RSE %s: %.5g", system_name, name, value)
    return metrics


def _join(package: ModelPackage, train: PairedSpectra, val: PairedSpectra, epochs: int,
          seed: int, progress: ProgressCallback | None, fine_tune: bool = False
          ) -> tuple[dict[str, Any], LatentMLP, SpectralScaler, dict[str, Any], MeanPredictor,
                     SystemDecoder | None]:
    opts = _options(package)
    p_scaler = package.scalers["primary"]
    mode, spread = p_scaler.mode, p_scaler.spread
    if mode == "per-map":  # the paper's scaling: each map by its own statistics
        p_train_scaler = SpectralScaler(mode, spread).fit(train.primary)
        p_val_scaler = SpectralScaler(mode, spread).fit(val.primary)
        s_scaler = SpectralScaler(mode, spread).fit(train.secondary)
        s_val_scaler = SpectralScaler(mode, spread).fit(val.secondary)
    else:
        p_train_scaler = p_val_scaler = p_scaler
        s_scaler = s_val_scaler = SpectralScaler(mode, spread).fit(train.secondary)
    p_tr = p_train_scaler.transform(train.primary).astype(np.float32)
    p_va = p_val_scaler.transform(val.primary).astype(np.float32)
    s_tr = s_scaler.transform(train.secondary).astype(np.float32)
    s_va = s_val_scaler.transform(val.secondary).astype(np.float32)

    vae = package.vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)  # frozen: only the new MLP learns
    z_tr = predict(lambda x: vae.encode(x)[0], p_tr)
    z_va = predict(lambda x: vae.encode(x)[0], p_va)

    def val_rse(scaled_pred: np.ndarray) -> float:
        return rse(val.primary, p_val_scaler.inverse_transform(scaled_pred))

    torch.manual_seed(seed + 1)
    mlp = LatentMLP(s_tr.shape[1], opts["mlp_hidden"], vae.latent)

    def reporter(stage: str, n: int) -> Callable[[int, float, float], None]:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            log.info("%s epoch %d/%d: train loss %.5g, validation loss %.5g",
                     stage, epoch + 1, n, train_loss, val_loss)
            if progress is not None:
                progress(stage, epoch + 1, n, train_loss, val_loss)

        return on_epoch

    def config(n: int, lr: float, offset: int) -> FitConfig:
        return FitConfig(epochs=n, batch_size=int(opts["batch_size"]), learning_rate=lr,
                         weight_decay=float(opts["weight_decay"]),
                         patience=int(opts["patience"]), seed=seed + offset,
                         schedule=str(opts["schedule"]),
                         min_lr_fraction=float(opts["min_lr_fraction"]),
                         lr_decay_patience=int(opts["lr_decay_patience"]),
                         lr_decay_factor=float(opts["lr_decay_factor"]))

    noise = InputNoise(float(opts["input_noise"]))  # as the package's own networks had

    def noisy(src: ArraySource) -> BatchSource:
        return augmented(src, "cpu", noise)

    history = fit(mlp, mse_loss, noisy(ArraySource(s_tr, z_tr)), ArraySource(s_va, z_va),
                  config(epochs, float(opts["learning_rate"]), 1),
                  on_epoch=reporter("latent_mlp", epochs))
    mlp.eval()
    histories = {"latent_mlp": history.as_dict()}
    before = val_rse(predict(ComposedTransfer(mlp, vae).eval(), s_va))
    scores = {"vae_mlp": before}
    decoder: SystemDecoder | None = None
    after: float | None = None
    if fine_tune:  # MLP + a copy of the decoder; the shared VAE stays frozen
        n_ft = min(int(opts["fine_tune_epochs"]), epochs)
        tuned = ComposedTransfer(mlp, vae, SystemDecoder.from_vae(
            vae, s_tr.shape[1], int(opts["linear_rank"])))
        h, after, kept = kept_if_better(
            mlp, before,
            lambda: fit(tuned, mse_loss, noisy(ArraySource(s_tr, p_tr)),
                        ArraySource(s_va, p_va),
                        config(n_ft, float(opts["fine_tune_learning_rate"]), 2),
                        on_epoch=reporter("fine_tune", n_ft)),
            lambda: val_rse(predict(tuned.eval(), s_va)), "fine-tuning")
        histories["fine_tune"] = h.as_dict()
        if kept:
            decoder, scores["vae_mlp"] = tuned.decoder, after
    mlp.eval()

    mean = MeanPredictor().fit(s_tr, p_tr)
    scores["mean"] = val_rse(mean.predict(s_va))
    others = {s: v for s in package.systems if (v := _recorded_rse(package, s)) is not None}
    metrics: dict[str, Any] = {
        "validation_rse": scores,
        "vae_reconstruction_rse": val_rse(predict(lambda x: vae(x)[0], p_va)),
        "vae_mlp_before_fine_tune": before,
        "vae_mlp_after_fine_tune": after,
        "latent_mse": float(np.mean((predict(mlp, s_va) - z_va) ** 2)),
        "other_systems_validation_rse": others,
        "n_train_pairs": train.n,
        "n_val_pairs": val.n,
        "options": {"epochs": epochs, "seed": seed, "scaler_mode": mode,
                    "scaler_spread": spread, **opts, "mlp_hidden": list(opts["mlp_hidden"])},
        "trained": ("latent_mlp and its own fine-tuned copy of the decoder (VAE frozen)"
                    if decoder is not None else "latent_mlp only (VAE frozen, shared decoder)"),
    }
    return metrics, mlp, s_scaler, histories, mean, decoder


def _recorded_rse(package: ModelPackage, system: str) -> float | None:
    """Validation RSE (VAE + MLP) of a system already in the package, as recorded."""
    metrics = package.manifest.get("metrics", {})
    joined = metrics.get(system)
    if isinstance(joined, dict) and "validation_rse" in joined:  # joined later
        return joined["validation_rse"].get("vae_mlp")
    trained = metrics.get("options", {}).get("system")  # trained with the VAE
    if trained == system or (trained is None and len(package.systems) == 1):
        return metrics.get("validation_rse", {}).get("vae_mlp")
    return None


__all__ = ["join_secondary"]
