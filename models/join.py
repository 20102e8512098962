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

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plumelink.models.fit import predict
from plumelink.models.networks import LatentMLP, SystemDecoder
from plumelink.models.package import (
    ModelPackage,
    PackageMismatchError,
    add_secondary,
    load_package,
)
from plumelink.models.training import stages
from plumelink.models.training.config import FLAT, TrainConfig
from plumelink.models.training.data import (
    TrainingData,
    file_fingerprint,
    load_paired,
    training_threads,
)
from plumelink.models.training.stages import ProgressCallback, Reporter, Stages
from plumelink.pipeline.paired_spectra import PairedSpectra, check_axes
from plumelink.pipeline.preprocess import Preprocessor, SpectralScaler

log = logging.getLogger(__name__)

# What an option absent from an older package's record meant when that package was trained
# (the option did not exist yet); every other absent option takes TrainConfig's default.
ABSENT = {"linear_rank": 0, "input_noise": 0.0}


def _check_primary(package: ModelPackage, pairs: PairedSpectra, path: Path) -> None:
    try:  # only the primary axis is compared: the secondary is the new system's own
        check_axes(pairs, package.primary_wavelength_nm, pairs.secondary_wavelength_nm)
    except ValueError as e:
        raise PackageMismatchError(
            f"the primary spectrometer of {path} does not match the model package's "
            f"(a new secondary system joins only with maps measured by the same primary): {e}"
        ) from e


def join_config(package: ModelPackage, epochs: int, seed: int, fine_tune: bool,
                threads: int | None = None) -> TrainConfig:
    """The package's recorded training options (metrics.options) for a new system: the same
    loop, MLP architecture, linear path and input noise; ``epochs`` for the latent MLP (and
    at most that for the fine-tuning); no drift and no weight averaging."""
    recorded = package.manifest.get("metrics", {}).get("options", {}) or {}
    known = {k: v for k, v in recorded.items()
             if k in FLAT and FLAT[k][0] in ("fit", "networks", "fine_tune", "augment", "")}
    existing = [e["latent_mlp"]["config"] for e in package.manifest["secondary"].values()]
    if existing:  # the same architecture as the systems already in the package
        known["mlp_hidden"] = tuple(int(h) for h in existing[0]["hidden"])
    return TrainConfig(**{**ABSENT, **known}).replace(
        epochs=epochs, seed=seed, fine_tune=fine_tune, latent=package.vae.latent,
        max_batches=None, drift_gain=0.0, drift_shift_px=0.0, drift_response=0.0,
        average_epochs=0, threads=threads, device="cpu",
        scaler_mode=package.scalers["primary"].mode,
        scaler_spread=package.scalers["primary"].spread)


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
    train, val = load_paired(train_path, "training"), load_paired(val_path, "validation")
    _check_primary(package, train, train_path)
    _check_primary(package, val, val_path)
    check_axes(val, train.primary_wavelength_nm, train.secondary_wavelength_nm)
    for other, axis in package.secondary_wavelength_nm.items():
        if other != system_name and axis.size == train.secondary.shape[1] and np.allclose(
                axis, train.secondary_wavelength_nm, atol=1e-3):
            log.warning("the new system %r has the same wavelength axis as %r already in the "
                        "package: are these maps of the new system?", system_name, other)
    config = join_config(package, epochs, seed, fine_tune, threads)
    data = _join_data(package, train, val, train_path, val_path)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or training_threads())
    try:
        with torch.random.fork_rng(devices=[]):
            metrics, mlp, history, mean, decoder = _join(package, config, data, progress)
    finally:
        torch.set_num_threads(previous)

    fingerprint = {"train": file_fingerprint(train_path, train.shape, train.n),
                   "val": file_fingerprint(val_path, val.shape, val.n)}
    add_secondary(folder, system_name, mlp, train.secondary_wavelength_nm,
                  data.preprocessor.secondary, baselines={"mean": mean},
                  fingerprint=fingerprint, metrics=metrics, history=history, replace=replace,
                  decoder=decoder)
    for name, value in metrics["validation_rse"].items():
        log.info("%s validation RSE %s: %.5g", system_name, name, value)
    return metrics


def _join_data(package: ModelPackage, train: PairedSpectra, val: PairedSpectra,
               train_path: Path, val_path: Path) -> TrainingData:
    """The new system's pairs scaled with the package's primary scaler and a secondary
    scaler fitted on the training map (with the paper's per-map scaling: each map's own)."""
    pre = package.preprocessor(package.systems[0])
    mode, spread = pre.primary.mode, pre.primary.spread
    if pre.per_map:  # the paper's scaling: each map by its own statistics
        train_pre = Preprocessor(SpectralScaler(mode, spread).fit(train.primary),
                                 SpectralScaler(mode, spread).fit(train.secondary),
                                 pre.baseline)
        val_pre = Preprocessor(SpectralScaler(mode, spread).fit(val.primary),
                               SpectralScaler(mode, spread).fit(val.secondary), pre.baseline)
    else:
        train_pre = val_pre = Preprocessor(pre.primary,
                                           SpectralScaler(mode, spread).fit(train.secondary),
                                           pre.baseline)
    return TrainingData(
        train_path=train_path, val_path=val_path, preprocessor=train_pre,
        val_preprocessor=val_pre,
        p_tr=train_pre.primary.transform(train.primary).astype(np.float32),
        s_tr=train_pre.secondary.transform(train.secondary).astype(np.float32),
        p_va=val_pre.primary.transform(val.primary).astype(np.float32),
        s_va=val_pre.secondary.transform(val.secondary).astype(np.float32),
        truth=val.primary, primary_wavelength_nm=train.primary_wavelength_nm,
        secondary_wavelength_nm=train.secondary_wavelength_nm,
        shapes=(train.shape, val.shape), n_train=train.n, n_val=val.n,
        record={"mode": "memory", "train_pairs": train.n, "val_pairs": val.n})


def _join(package: ModelPackage, config: TrainConfig, data: TrainingData,
          progress: ProgressCallback | None
          ) -> tuple[dict[str, Any], LatentMLP, dict[str, Any], Any, SystemDecoder | None]:
    """The latent MLP (and the fine-tuning) stages of `train_transfer` under the frozen VAE."""
    vae = package.vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)  # frozen: only the new MLP learns
    run = Stages(config, data, torch.device("cpu"), None, Reporter(progress))
    mlp = stages.train_latent_mlp(run, vae)
    decoder = stages.fine_tune(run, vae, mlp) if config.fine_tune.enabled else None
    mlp.eval()
    mean = stages.score_mean(run)
    z_va = predict(lambda x: vae.encode(x)[0], data.p_va)
    others = {s: v for s in package.systems if (v := _recorded_rse(package, s)) is not None}
    options = config.flat()
    metrics: dict[str, Any] = {
        "validation_rse": run.scores,
        "vae_reconstruction_rse": data.val_rse(predict(lambda x: vae(x)[0], data.p_va)),
        "vae_mlp_before_fine_tune": run.metrics["vae_mlp_before_fine_tune"],
        "vae_mlp_after_fine_tune": run.metrics.get("vae_mlp_after_fine_tune"),
        "latent_mse": float(np.mean((predict(mlp, data.s_va) - z_va) ** 2)),
        "other_systems_validation_rse": others,
        "n_train_pairs": data.n_train,
        "n_val_pairs": data.n_val,
        "options": {k: options[k] for k in _JOIN_OPTIONS},
        "trained": ("latent_mlp and its own fine-tuned copy of the decoder (VAE frozen)"
                    if decoder is not None else "latent_mlp only (VAE frozen, shared decoder)"),
    }
    return metrics, mlp, run.histories, mean, decoder


_JOIN_OPTIONS = ("epochs", "seed", "scaler_mode", "scaler_spread", "learning_rate",
                 "batch_size", "patience", "weight_decay", "mlp_hidden",
                 "fine_tune_learning_rate", "fine_tune_epochs", "linear_rank", "input_noise",
                 "schedule", "min_lr_fraction", "lr_decay_patience", "lr_decay_factor")


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
