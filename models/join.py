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

With ``pairs=N`` only a budget of N training pairs is used (a lab that measured N spots with
both spectrometers; `adapt.select_pairs`), 1 in 5 of them held out for early stopping and for
every choice made, and by default the network is an adaptation of an existing system's MLP
(`adapt.AdaptedMLP`, folded into a plain LatentMLP) blended with PLS fitted on the same pairs
(`adapt.choose_blend`, stored as the system's own decoder). Measured on the simulated
broadband CCD (`benchmarks/bench_join_pairs.py`): with 200 pairs this beat PLS and PDS on the
same pairs and the whole-map join on the test map; a new MLP from 200 pairs did not.

Deterministic for a seed on one device.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from plumelink.models.adapt import (
    AdaptedMLP,
    PairSelection,
    base_match,
    choose_blend,
    overlap_fraction,
    resampling,
    select_pairs,
    split_budget,
)
from plumelink.models.baselines import PLSModel
from plumelink.models.choice import system_validation_rse
from plumelink.models.fit import ArraySource, mse_loss, predict
from plumelink.models.networks import ComposedTransfer, LatentMLP, SystemDecoder
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

Method = Literal["full", "adapt", "first_layer"]
METHODS: tuple[str, ...] = ("full", "adapt", "first_layer")
Validation = Literal["pairs", "map"]
DEFAULT_RANK = 8

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
    pairs: int | None = None,
    pair_selection: PairSelection = "spread",
    method: Method | None = None,
    rank: int | None = None,
    base_system: str | None = None,
    validation: Validation | None = None,
    blend: bool | None = None,
) -> dict[str, Any]:
    """Train a latent MLP for a new secondary system into an existing package; its metrics.

    The maps pair the package's primary with the new system (its spectra in the maps'
    /map/secondary group). Returns the new system's metrics, also stored in the manifest
    under metrics[system_name]: validation RSE of the transfer ("vae_mlp"), of the mean
    spectrum and of the VAE reconstruction of the primary spectra (the reference), and the
    validation RSE of the package's other systems as recorded when they were trained.
    fine_tune: also fine-tune MLP + a copy of the decoder for this system (its own file; the
    shared VAE is never changed), with the package's fine-tuning options (method "full" only).

    pairs: use only a budget of this many training pairs (`adapt.select_pairs`,
    ``pair_selection`` "spread" or "random", seeded with ``seed``), as a lab that measured
    only those spots with both spectrometers. validation: what early stopping watches,
    "pairs" (default with a budget: every 5th pair of the budget is held out, so the budget
    is all the new system's data) or "map" (the validation map; the default without a
    budget). The reported validation RSE is always the validation map's.
    method: "full" (a new LatentMLP, as the whole-map join; the default without a budget),
    "adapt" (the default with a budget: the base system's MLP fed with the new spectra
    resampled onto its axis, per-channel gain/offset and rank-``rank`` adapters, folded into
    a plain LatentMLP; `adapt.AdaptedMLP`) or "first_layer" (a new first layer, started from
    the resampled base layer, on the base MLP's frozen body). base_system: the package system
    adapted from (default: the one whose range the new system covers best).
    blend: blend the network with PLS fitted on the same pairs (`adapt.choose_blend`: the PLS
    components and the weight chosen where early stopping looks, the network alone one of
    the candidates), stored as the system's own decoder; default on with a budget, off
    without (the whole-map join as before).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    method = method or ("full" if pairs is None else "adapt")
    validation = validation or ("map" if pairs is None else "pairs")
    if method not in METHODS:
        raise ValueError(f"join method must be one of {METHODS}, got {method!r}")
    if validation not in ("pairs", "map"):
        raise ValueError(f"validation must be 'pairs' or 'map', got {validation!r}")
    if validation == "pairs" and pairs is None:
        raise ValueError("validation='pairs' holds out part of a pair budget: give pairs")
    blend = pairs is not None if blend is None else bool(blend)
    if blend and fine_tune:
        raise ValueError("blend and fine_tune both make the system's own decoder: choose one")
    if fine_tune and method != "full":
        raise ValueError(f"fine_tune trains a decoder copy beside a new MLP: method 'full' "
                         f"only, not {method!r}")
    rank = DEFAULT_RANK if rank is None else rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
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
    base = None
    if method != "full":
        base = _pick_base(package, system_name, train.secondary_wavelength_nm, base_system)
    config = join_config(package, epochs, seed, fine_tune, threads)
    available = train.n
    budget: dict[str, Any] = {"n_pairs": None, "validation": validation}
    fit_pairs, stop_pairs = train, val
    if pairs is not None:
        order = select_pairs(train.index, train.shape, pairs, pair_selection, seed,
                             what=f"training map {train_path}")
        if validation == "pairs":
            fit_rows, stop_rows = split_budget(order)
        else:
            fit_rows, stop_rows = np.sort(order), np.zeros(0, np.int64)
        fit_pairs = train.take(fit_rows)
        if validation == "pairs":
            stop_pairs = train.take(stop_rows)
        budget = {
            "n_pairs": int(pairs), "available_pairs": available, "selection": pair_selection,
            "seed": seed, "validation": validation,
            "how": ("farthest-point sampling on the spots' (iy, ix), first spot drawn with "
                    "numpy default_rng(seed)" if pair_selection == "spread" else
                    "numpy default_rng(seed).permutation, first n"),
            "early_stopping": ("every 5th pair of the selection order held out"
                               if validation == "pairs" else "the validation map"),
            "fit_spots": fit_pairs.index.tolist(),
            "early_stopping_spots": stop_pairs.index.tolist() if validation == "pairs"
            else None}
    data = _join_data(package, fit_pairs, stop_pairs, train_path,
                      train_path if validation == "pairs" else val_path)
    report = data if stop_pairs is val else _join_data(package, fit_pairs, val, train_path,
                                                       val_path)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or training_threads())
    try:
        with torch.random.fork_rng(devices=[]):
            metrics, mlp, history, mean, decoder = _join(package, config, data, progress,
                                                         method, rank, base, report, blend)
    finally:
        torch.set_num_threads(previous)
    metrics["pairs"] = budget
    fingerprint = {"train": file_fingerprint(train_path, train.shape, fit_pairs.n),
                   "val": file_fingerprint(val_path, val.shape, val.n)}
    add_secondary(folder, system_name, mlp, train.secondary_wavelength_nm,
                  data.preprocessor.secondary, baselines={"mean": mean},
                  fingerprint=fingerprint, metrics=metrics, history=history, replace=replace,
                  decoder=decoder)
    for name, value in metrics["validation_rse"].items():
        log.info("%s validation RSE %s: %.5g", system_name, name, value)
    return metrics


def _pick_base(package: ModelPackage, system: str, axis_nm: np.ndarray,
               chosen: str | None) -> str:
    """The package system to adapt from: `chosen`, else the one whose range the new axis
    covers best; refused when the new system does not overlap it."""
    candidates = [s for s in package.systems if s != system]
    if chosen is not None:
        if chosen not in candidates:
            raise ValueError(f"base system {chosen!r} is not another system of the package "
                             f"(it has {', '.join(map(repr, package.systems))})")
        candidates = [chosen]
    if not candidates:
        raise ValueError("the package has no other secondary system to adapt from")
    cover = {s: overlap_fraction(package.secondary_wavelength_nm[s], axis_nm)
             for s in candidates}
    best = max(candidates, key=lambda s: (cover[s], s))
    if cover[best] <= 0:
        raise ValueError(f"the new system ({axis_nm[0]:.1f}–{axis_nm[-1]:.1f} nm) does not "
                         f"overlap the range of {best!r}: use method 'full'")
    return best


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
          progress: ProgressCallback | None, method: str, rank: int, base: str | None,
          report: TrainingData, blend: bool = False
          ) -> tuple[dict[str, Any], LatentMLP, dict[str, Any], Any, SystemDecoder | None]:
    """The new system's latent MLP under the frozen VAE: the latent MLP (and fine-tuning)
    stages of `train_transfer` (method "full") or an adaptation of the base system's MLP.
    Early stopping on ``data``'s validation part; the reported scores on ``report``'s (the
    validation map)."""
    vae = package.vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)  # frozen: only the new MLP learns
    run = Stages(config, data, torch.device("cpu"), None, Reporter(progress))
    decoder = None
    if method == "full":
        mlp = stages.train_latent_mlp(run, vae)
        decoder = stages.fine_tune(run, vae, mlp) if config.fine_tune.enabled else None
        n_trained = _count(mlp) + (_count(decoder) if decoder is not None else 0)
        trained = ("latent_mlp and its own fine-tuned copy of the decoder (VAE frozen)"
                   if decoder is not None else "latent_mlp only (VAE frozen, shared decoder)")
    else:
        assert base is not None
        mlp, n_trained = _adapt(run, vae, package, base, method, rank)
        trained = (f"adapters on {base!r}'s latent MLP: per-channel gain and offset of the "
                   f"resampled spectra, rank-{rank} updates of every layer, the biases; "
                   f"folded into a plain latent MLP (VAE frozen, shared decoder)"
                   if method == "adapt" else
                   f"a new first layer (started from {base!r}'s, on the resampled spectra) "
                   f"on the frozen rest of {base!r}'s latent MLP (VAE frozen, shared decoder)")
    mlp.eval()
    mean = stages.score_mean(run)
    network_rse = report.val_rse(predict(ComposedTransfer(mlp, vae, decoder).eval(),
                                         report.s_va))
    blended = None
    if blend:
        decoder, blended = _blend(run, vae, mlp, refit=data is not report)
        trained += (f"; blended with PLS ({blended['components']} components, weight "
                    f"{1 - blended['weight']:g}) as the system's own decoder"
                    if decoder is not None else "; PLS blend not kept (network alone best)")
    composed = ComposedTransfer(mlp, vae, decoder).eval()
    scores = {"vae_mlp": report.val_rse(predict(composed, report.s_va)),
              "mean": report.val_rse(mean.predict(report.s_va))}
    z_va = predict(lambda x: vae.encode(x)[0], report.p_va)
    others = {s: v for s in package.systems if (v := _recorded_rse(package, s)) is not None}
    options = config.flat()
    metrics: dict[str, Any] = {
        "validation_rse": scores,
        "vae_reconstruction_rse": report.val_rse(predict(lambda x: vae(x)[0], report.p_va)),
        "vae_mlp_before_fine_tune": run.metrics["vae_mlp_before_fine_tune"],
        "vae_mlp_after_fine_tune": run.metrics.get("vae_mlp_after_fine_tune"),
        "latent_mse": float(np.mean((predict(mlp, report.s_va) - z_va) ** 2)),
        "other_systems_validation_rse": others,
        "n_train_pairs": data.n_train,
        "n_val_pairs": report.n_val,
        "options": {k: options[k] for k in _JOIN_OPTIONS},
        "method": method,
        "base_system": base,
        "rank": rank if method == "adapt" else None,
        "trained_parameters": n_trained,
        "trained": trained,
        "network_validation_rse": network_rse,
        "blend": blended,
    }
    if data is not report:  # early stopping watched held-out pairs of the budget
        metrics["early_stopping_rse"] = run.scores["vae_mlp"]
        metrics["n_early_stopping_pairs"] = data.n_val
    return metrics, mlp, run.histories, mean, decoder


def _blend(run: Stages, vae: torch.nn.Module, mlp: LatentMLP, refit: bool
           ) -> tuple[SystemDecoder | None, dict[str, Any]]:
    """The network blended with PLS (`adapt.choose_blend` on the early-stopping pairs);
    PLS refitted on fitting + early-stopping pairs when those are both the budget's
    (``refit``), as training refits PLS on train + val. The decoder (None: not kept) and
    its record."""
    data = run.data
    network = predict(ComposedTransfer(mlp, vae).eval(), data.s_va)
    top = min(len(data.s_tr) - 1, data.n_secondary_px)
    candidates = [int(c) for c in run.config.baselines.pls_candidates if int(c) <= top]
    choice = choose_blend(network, (data.s_tr, data.s_va),
                          (data.p_tr, data.p_va), candidates or [max(1, top)], data.score)
    record: dict[str, Any] = {"weight": choice.weight, "components": choice.components,
                              "pls_weight": round(1.0 - choice.weight, 6),
                              "chosen_on": "the early-stopping pairs",
                              "scores": choice.scores}
    if choice.weight >= 1.0:
        return None, record
    x, y = data.s_tr, data.p_tr
    if refit:
        x, y = np.concatenate([x, data.s_va]), np.concatenate([y, data.p_va])
    pls = PLSModel(choice.components).fit(x, y)
    record["pls_fitted_on"] = "fitting + early-stopping pairs" if refit else "fitting pairs"
    record["pls_parameters"] = int(pls.coef.size + pls.intercept.size)  # type: ignore[union-attr]
    return choice.decoder(vae, pls), record


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _adapt(run: Stages, vae: torch.nn.Module, package: ModelPackage, base: str, method: str,
           rank: int) -> tuple[LatentMLP, int]:
    """Method "adapt" or "first_layer" (see `join_secondary`); the folded LatentMLP and how
    many parameters were trained."""
    config, data = run.config, run.data
    left, weight, inside = resampling(data.secondary_wavelength_nm,
                                      package.secondary_wavelength_nm[base])
    resampled = data.s_tr[:, left] * (1 - weight) + data.s_tr[:, left + 1] * weight
    scaler = package.scalers[base]
    match = base_match(scaler.var, scaler.scale, resampled.std(axis=0), inside)
    torch.manual_seed(config.seed + 1)
    adapter = AdaptedMLP(package.latent_mlps[base], data.n_secondary_px, left, weight, match,
                         rank if method == "adapt" else 0)
    model: torch.nn.Module
    if method == "adapt":
        model = adapter
    else:  # the first layer (the folded resampling) trains, the body stays
        model = adapter.fold()
        for i, p in enumerate(model.parameters()):
            p.requires_grad_(i < 2)
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encode = lambda x: vae.encode(x)[0]  # noqa: E731
    source = ArraySource(data.s_tr, predict(encode, data.p_tr))
    h = run.fit(model, mse_loss, run.augmented(source),
                ArraySource(data.s_va, predict(encode, data.p_va)), "latent_mlp",
                config.fit.epochs, config.fit.learning_rate, 1, checkpointed=False)
    run.histories["latent_mlp"] = h.as_dict()
    mlp = adapter.fold() if method == "adapt" else model
    for p in mlp.parameters():
        p.requires_grad_(True)
    mlp.eval()
    before = run.val_rse(ComposedTransfer(mlp, vae).eval())
    run.metrics["vae_mlp_before_fine_tune"] = before
    run.scores["vae_mlp"] = before
    return mlp, n_trained


_JOIN_OPTIONS = ("epochs", "seed", "scaler_mode", "scaler_spread", "learning_rate",
                 "batch_size", "patience", "weight_decay", "mlp_hidden",
                 "fine_tune_learning_rate", "fine_tune_epochs", "linear_rank", "input_noise",
                 "schedule", "min_lr_fraction", "lr_decay_patience", "lr_decay_factor")


def _recorded_rse(package: ModelPackage, system: str) -> float | None:
    """Validation RSE (VAE + MLP) of a system already in the package, as recorded."""
    return system_validation_rse(package.manifest, system).get("vae_mlp")


__all__ = ["METHODS", "join_config", "join_secondary"]
