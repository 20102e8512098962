"""Hyperparameter search for the spectral transfer: Optuna with the Hyperband pruner.

Vrábel et al. (JAAS 2023, 38, 841) tuned their networks with Optuna and Hyperband; `tune`
does the same, opt-in (`plumelink tune`), over `SEARCH_SPACES`, with the training code of
`train` (`fit.fit`, the same preprocessing, networks and early stopping):

- target "vae": the VAE of primary spectra; objective the validation reconstruction MSE per
  pixel of scaled spectra (the criterion `train` stops on), reported after every epoch;
- target "mlp": the latent MLP (secondary spectrum -> VAE latent mean) under one VAE trained
  first in this process with ``vae_params`` (default: the paper's architecture); objective
  the validation RSE of the composed model (MLP + decoder) on unscaled spectra, reported
  after every epoch. RSE rather than the latent MSE because it compares across workers whose
  VAEs differ in the last bits, and it is what the transfer is judged by.

Hyperband's resource is the epoch: a trial reports at steps 1..epochs and stops (TrialPruned)
as soon as the pruner says so, between epochs. The study lives in ``storage``, which several
worker processes (or machines) share: a journal file (`JournalFileBackend`, file locks, for
processes on one machine or a shared filesystem) or an RDB URL (sqlite:///..., postgresql://
user@host/db, with heartbeats so that the trials of a killed worker are marked failed).

Maps larger than MAX_IN_MEMORY_SPOTS are tuned on a random subsample of ``max_pairs``
training and validation pairs (the scalers still fitted on every training pair).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from plumelink.models import distributed
from plumelink.models.fit import ArraySource, FitConfig, fit, mse_loss, predict, vae_loss
from plumelink.models.metrics import rse
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP
from plumelink.models.training.config import TrainConfig
from plumelink.models.training.data import TrainingData, map_spots
from plumelink.pipeline.paired_spectra import MAX_IN_MEMORY_SPOTS
from plumelink.pipeline.preprocess import SpectralScaler

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

TARGETS = ("vae", "mlp")
DEFAULT_EPOCHS = {"vae": 50, "mlp": 100}  # the paper's epoch budgets (Hyperband's max resource)

# The search spaces, one entry per hyperparameter. The paper names what it searched (layer
# widths, latent dimension, learning rate, batch size, KL weight ceiling) and publishes the
# values it chose ("paper"); the ranges around them are chosen here (the paper's tables give
# the chosen values, not the bounds): widths by powers of two from a quarter to twice the
# paper's, latent 8-128, learning rate two decades either side of the paper's 1e-4, batch
# 32-512. Chosen here as well: the number of KL annealing cycles (paper: 4) and the L2
# weight decay (the paper uses L2 without a value; `TrainConfig` has 1e-5).
SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "vae": {
        "hidden_1": {"kind": "categorical", "choices": [256, 512, 1024, 2048], "paper": 1024},
        "hidden_2": {"kind": "categorical", "choices": [128, 256, 512, 1024], "paper": 512},
        "latent": {"kind": "categorical", "choices": [8, 16, 32, 64, 128], "paper": 64},
        "learning_rate": {"kind": "float", "low": 1e-5, "high": 1e-2, "log": True,
                          "paper": 1e-4},
        "batch_size": {"kind": "categorical", "choices": [32, 64, 128, 256, 512],
                       "paper": 128},
        "kl_max": {"kind": "float", "low": 0.01, "high": 1.0, "log": True, "paper": 0.5},
        "kl_cycles": {"kind": "int", "low": 1, "high": 8, "paper": 4},
        "weight_decay": {"kind": "float", "low": 1e-7, "high": 1e-3, "log": True,
                         "paper": 1e-5},
    },
    "mlp": {
        "hidden_1": {"kind": "categorical", "choices": [32, 64, 128, 256, 512], "paper": 128},
        "hidden_2": {"kind": "categorical", "choices": [128, 256, 512, 1024], "paper": 512},
        "learning_rate": {"kind": "float", "low": 1e-5, "high": 1e-2, "log": True,
                          "paper": 1e-4},
        "batch_size": {"kind": "categorical", "choices": [32, 64, 128, 256, 512],
                       "paper": 128},
        "weight_decay": {"kind": "float", "low": 1e-7, "high": 1e-3, "log": True,
                         "paper": 1e-5},
    },
}

OBJECTIVES = {
    "vae": "validation reconstruction MSE per pixel of scaled primary spectra (minimise)",
    "mlp": "validation RSE of the composed model (latent MLP + VAE decoder) on unscaled "
    "primary spectra (minimise)",
}


Space = dict[str, dict[str, Any]]


def paper_params(target: str) -> dict[str, Any]:
    """The paper's values of a target's hyperparameters."""
    return {name: spec["paper"] for name, spec in _space(target).items()}


def _space(target: str) -> Space:
    if target not in SEARCH_SPACES:
        raise ValueError(f"tuning target must be one of {TARGETS}, got {target!r}")
    return SEARCH_SPACES[target]


def search_space(target: str, overrides: Space | None = None) -> Space:
    """The target's search space with some entries replaced (e.g. narrowed for a quick
    search); every override must name one of the target's hyperparameters."""
    space = dict(_space(target))
    for name, spec in (overrides or {}).items():
        if name not in space:
            raise ValueError(f"search space of {target!r} has no hyperparameter {name!r}; "
                             f"it has {sorted(space)}")
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind == "categorical":
            ok = isinstance(spec.get("choices"), list) and len(spec["choices"]) > 0
        elif kind in ("int", "float"):
            low, high = spec.get("low"), spec.get("high")
            ok = (isinstance(low, (int, float)) and isinstance(high, (int, float))
                  and low <= high and (not spec.get("log") or low > 0))
        else:
            ok = False
        if not ok:
            raise ValueError(f"bad search space entry {name!r}: {spec!r}; expected "
                             "{'kind': 'categorical', 'choices': [...]} or {'kind': 'int' or "
                             "'float', 'low': L, 'high': H[, 'log': true]}")
        space[name] = {**spec, "paper": space[name]["paper"]}
    return space


def suggest(trial: optuna.Trial, target: str, space: Space | None = None) -> dict[str, Any]:
    """One point of the search space (default: the target's), asked of the trial."""
    params: dict[str, Any] = {}
    for name, spec in (space or _space(target)).items():
        if spec["kind"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["kind"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"],
                                               log=spec.get("log", False))
    return params


def in_space(params: dict[str, Any], target: str, space: Space | None = None) -> bool:
    """Whether params name exactly the space's hyperparameters, each inside its range."""
    space = space or _space(target)
    if set(params) != set(space):
        return False
    for name, spec in space.items():
        value = params[name]
        if spec["kind"] == "categorical":
            if value not in spec["choices"]:
                return False
        elif not spec["low"] <= value <= spec["high"]:
            return False
    return True


@dataclass
class TuningData:
    """Scaled training and validation pairs, and what scores the composed model."""

    p_tr: np.ndarray
    s_tr: np.ndarray
    p_va: np.ndarray
    s_va: np.ndarray
    truth: np.ndarray  # validation primary spectra, baseline-corrected, unscaled
    p_val_scaler: SpectralScaler

    def composed_rse(self, model: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device) -> float:
        pred = predict(model, self.s_va, device=device)
        return rse(self.truth, self.p_val_scaler.inverse_transform(pred))


def load_tuning_data(train_map: str | os.PathLike[str], val_map: str | os.PathLike[str],
                     options: TrainConfig | None = None, max_pairs: int = 20_000,
                     seed: int = 0) -> TuningData:
    """Pairs of both maps, preprocessed and scaled as `train_transfer` does (`TrainingData`);
    streamed maps give subsamples of ``max_pairs`` pairs."""
    options = options or TrainConfig()
    train_path, val_path = Path(train_map), Path(val_map)
    for what, path in (("training", train_path), ("validation", val_path)):
        if not path.is_file():
            raise FileNotFoundError(f"{what} map {path} does not exist")
    big = max(map_spots(train_path), map_spots(val_path)) > MAX_IN_MEMORY_SPOTS
    data = TrainingData.load(train_path, val_path,
                             options.replace(seed=seed, val_pairs=max_pairs, stream=big),
                             keep_train=max_pairs)
    log.info("tuning on %d training and %d validation pairs%s", len(data.p_tr), len(data.p_va),
             " (subsamples)" if data.stream is not None else "")
    return TuningData(p_tr=data.p_tr, s_tr=data.s_tr, p_va=data.p_va, s_va=data.s_va,
                      truth=data.truth, p_val_scaler=data.val_preprocessor.primary)


class _Pruning:
    """fit's epoch callback and stop test: report to the trial, stop when it is pruned."""

    def __init__(self, trial: optuna.Trial | None, score: Callable[[float], float]):
        self.trial, self.score = trial, score
        self.pruned = False
        self.epochs_run = 0

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float) -> None:
        self.epochs_run = epoch + 1
        if self.trial is None:
            return
        self.trial.report(self.score(val_loss), step=epoch + 1)  # step = epochs trained
        self.pruned = self.trial.should_prune()

    def should_stop(self) -> bool:
        return self.pruned


def _fit_config(params: dict[str, Any], epochs: int, seed: int) -> FitConfig:
    return FitConfig(epochs=epochs, batch_size=int(params["batch_size"]),
                     learning_rate=float(params["learning_rate"]),
                     weight_decay=float(params["weight_decay"]),
                     patience=TrainConfig().fit.patience, seed=seed)


def train_vae(data: TuningData, params: dict[str, Any], epochs: int, seed: int = 0,
              device: torch.device | str = "cpu", trial: optuna.Trial | None = None
              ) -> tuple[VAE, float, _Pruning]:
    """A VAE with these hyperparameters; its best validation reconstruction MSE."""
    torch.manual_seed(seed)
    vae = VAE(data.p_tr.shape[1], (int(params["hidden_1"]), int(params["hidden_2"])),
              int(params["latent"]))
    steps = epochs * math.ceil(len(data.p_tr) / int(params["batch_size"]))
    loss = vae_loss(steps, cycles=int(params["kl_cycles"]), kl_max=float(params["kl_max"]))
    pruning = _Pruning(trial, lambda val_loss: val_loss)
    history = fit(vae, loss, ArraySource(data.p_tr), ArraySource(data.p_va),
                  _fit_config(params, epochs, seed), on_epoch=pruning.on_epoch,
                  should_stop=pruning.should_stop, device=device)
    finite = [v for v in history.val_loss if math.isfinite(v)]
    return vae, (min(finite) if finite else math.nan), pruning


def train_mlp(data: TuningData, vae: VAE, params: dict[str, Any], epochs: int, seed: int = 0,
              device: torch.device | str = "cpu", trial: optuna.Trial | None = None
              ) -> tuple[LatentMLP, float, _Pruning]:
    """A latent MLP with these hyperparameters into a trained VAE's latent space; the
    validation RSE of the composed model (weights of the best latent-loss epoch)."""
    device = torch.device(device)
    vae.to(device).eval()
    z_tr = predict(lambda x: vae.encode(x)[0], data.p_tr, device=device)
    z_va = predict(lambda x: vae.encode(x)[0], data.p_va, device=device)
    torch.manual_seed(seed + 1)
    mlp = LatentMLP(data.s_tr.shape[1], (int(params["hidden_1"]), int(params["hidden_2"])),
                    vae.latent)
    composed = ComposedTransfer(mlp, vae)
    pruning = _Pruning(trial, lambda _val: data.composed_rse(composed, device))
    fit(mlp, mse_loss, ArraySource(data.s_tr, z_tr), ArraySource(data.s_va, z_va),
        _fit_config(params, epochs, seed + 1), on_epoch=pruning.on_epoch,
        should_stop=pruning.should_stop, device=device)
    composed.eval()
    return mlp, data.composed_rse(composed, device), pruning


def _finish(trial: optuna.Trial, value: float, pruning: _Pruning) -> float:
    import optuna

    trial.set_user_attr("epochs_run", pruning.epochs_run)
    if pruning.pruned:
        raise optuna.TrialPruned(f"pruned by Hyperband after epoch {pruning.epochs_run}")
    return value  # NaN (diverged at once) makes Optuna mark the trial failed


def vae_objective(data: TuningData, epochs: int, seed: int = 0,
                  device: torch.device | str = "cpu", space: Space | None = None
                  ) -> Callable[[optuna.Trial], float]:
    """Objective of target "vae": best validation reconstruction MSE of one VAE."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        params = suggest(trial, "vae", space)
        _, value, pruning = train_vae(data, params, epochs, seed, device, trial)
        return _finish(trial, value, pruning)

    return objective


def mlp_objective(data: TuningData, vae: VAE, epochs: int, seed: int = 0,
                  device: torch.device | str = "cpu", space: Space | None = None
                  ) -> Callable[[optuna.Trial], float]:
    """Objective of target "mlp": validation RSE of the composed model under a fixed VAE."""

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        params = suggest(trial, "mlp", space)
        _, value, pruning = train_mlp(data, vae, params, epochs, seed, device, trial)
        return _finish(trial, value, pruning)

    return objective


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_storage(spec: str | os.PathLike[str] | None) -> Any:
    """None: in memory (this process only); a URL with '://': an RDB (sqlite:///file.db,
    postgresql://user@host/db; several machines); anything else: a journal file (several
    processes on one machine, or machines sharing a filesystem with working file locks)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec is None:
        return None
    text = os.fspath(spec)
    if "://" in text:
        # heartbeats: the running trials of a worker that died are marked failed
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9, still there in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(text, heartbeat_interval=60, grace_period=180)
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"study storage {path} is a folder; give a journal file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def describe_storage(spec: str | os.PathLike[str] | None) -> str:
    """The storage as text for reports, without any password of a URL."""
    if spec is None:
        return "in-memory"
    text = os.fspath(spec)
    if "://" in text:
        from sqlalchemy.engine import make_url

        return make_url(text).render_as_string(hide_password=True)
    return f"journal file {Path(text).resolve()}"


def make_study(storage: Any, study_name: str | None, epochs: int, seed: int | None,
               reduction_factor: int = 3) -> optuna.Study:
    """Create the study, or join it when the storage already holds one of that name."""
    import optuna

    return optuna.create_study(
        storage=storage, study_name=study_name, direction="minimize", load_if_exists=True,
        # constant liar: parallel workers do not all propose the point just being tried
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                              reduction_factor=reduction_factor))


def _claim(study: optuna.Study, setup: dict[str, Any]) -> None:
    """Record what the study searches; refuse a worker whose search differs (its trials
    would not be comparable, and Hyperband's rungs assume one maximum of epochs)."""
    setup = json.loads(json.dumps(setup, default=float))  # as the storage returns it
    known = study.user_attrs.get("plumelink")
    if known is None:
        study.set_user_attr("plumelink", setup)
        return
    differs = sorted(k for k in setup if known.get(k) != setup[k])
    if differs:
        raise ValueError(f"study {study.study_name!r} was started with other settings "
                         f"({', '.join(differs)}: {[known.get(k) for k in differs]}); use "
                         "the same, or another --study name")


def study_record(study: optuna.Study, target: str, epochs: int,
                 storage: str | os.PathLike[str] | None, space: Space | None = None
                 ) -> dict[str, Any]:
    """The study as JSON-ready data: best trial, every trial, search space and setup."""
    import optuna

    states = optuna.trial.TrialState
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number, "state": t.state.name,
            "value": t.value if t.value is not None and math.isfinite(t.value) else None,
            "params": t.params, "intermediate": {str(k): v for k, v in
                                                 sorted(t.intermediate_values.items())},
            "worker": t.user_attrs.get("worker"), "epochs_run": t.user_attrs.get("epochs_run"),
            "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        })
    counts = {s.name.lower(): sum(1 for t in trials if t["state"] == s.name)
              for s in (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)}
    complete = [t for t in study.get_trials(deepcopy=False, states=(states.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    best = min(complete, key=lambda t: t.value) if complete else None  # type: ignore[arg-type,return-value]
    return {
        "study": study.study_name, "storage": describe_storage(storage), "target": target,
        "objective": OBJECTIVES[target], "direction": "minimize",
        "best": None if best is None else {"number": best.number, "value": best.value,
                                           "params": best.params},
        "paper_params": paper_params(target),
        "search_space": space or SEARCH_SPACES[target],
        "pruner": {"kind": "HyperbandPruner", "resource": "epoch", "min_resource": 1,
                   "max_resource": epochs},
        "sampler": "TPESampler",
        "n_trials": counts,
        "trials": trials,
    }


def tune(
    train_map: str | os.PathLike[str],
    val_map: str | os.PathLike[str],
    *,
    storage: str | os.PathLike[str] | None = None,
    study_name: str | None = None,
    n_trials: int | None = 20,
    timeout_s: float | None = None,
    target: str = "vae",
    seed: int | None = 0,
    epochs: int | None = None,
    max_study_trials: int | None = None,
    vae_params: dict[str, Any] | None = None,
    space: Space | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    threads: int | None = None,
    max_pairs: int = 20_000,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
) -> dict[str, Any]:
    """Search the target's hyperparameters; returns the best parameters found.

    n_trials: trials this process runs (Optuna's meaning; None: until timeout_s);
    max_study_trials: stop once the study holds that many trials of every worker together.
    seed seeds the sampler and the networks' weights (None: a random sampler, networks
    seeded 0); workers sharing a study should get different seeds (or None) so that they do
    not propose the same first points. epochs: Hyperband's maximum resource and every
    trial's epoch cap (default: the paper's, 50 for the VAE and 100 for the MLP).
    vae_params (target "mlp"): hyperparameters of the VAE trained first (default: the
    paper's). space: entries replacing those of `SEARCH_SPACES[target]` (`search_space`);
    workers of one study must use the same. out: the study record (`study_record`) is
    written there as JSON.
    Raises ValueError when no trial of the study completed.
    """
    import optuna

    space = search_space(target, space)
    if n_trials is None and timeout_s is None and max_study_trials is None:
        raise ValueError("give n_trials, timeout_s or max_study_trials, or tuning never ends")
    epochs = int(epochs or DEFAULT_EPOCHS[target])
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    train_seed = 0 if seed is None else int(seed)
    dev = distributed.resolve_device(device)
    vp: dict[str, Any] | None = None
    if target == "mlp":
        unknown = sorted(set(vae_params or {}) - set(SEARCH_SPACES["vae"]))
        if unknown:
            raise ValueError(f"unknown VAE parameters {unknown}; the VAE has "
                             f"{sorted(SEARCH_SPACES['vae'])}")
        vp = {**paper_params("vae"), **(vae_params or {})}
        if not in_space(vp, "vae"):
            log.warning("VAE parameters %s lie outside the VAE search space", vp)
    for what, path in (("training", train_map), ("validation", val_map)):
        if not Path(path).is_file():  # before a storage or study is made
            raise FileNotFoundError(f"{what} map {path} does not exist")
    study = make_study(open_storage(storage), study_name, epochs, seed)
    _claim(study, {"target": target, "epochs": epochs, "search_space": space,
                   "vae_params": vp})
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        data = load_tuning_data(train_map, val_map, max_pairs=max_pairs, seed=train_seed)
        if vp is None:
            objective = vae_objective(data, epochs, train_seed, dev, space)
        else:
            vae_epochs = min(epochs, DEFAULT_EPOCHS["vae"])  # epochs caps every network
            vae, vae_mse, _ = train_vae(data, vp, vae_epochs, train_seed, dev)
            log.info("VAE for the MLP search: validation reconstruction MSE %.5g", vae_mse)
            objective = mlp_objective(data, vae, epochs, train_seed, dev, space)
        cbs = list(callbacks or [])
        if max_study_trials is not None:
            cbs.append(optuna.study.MaxTrialsCallback(int(max_study_trials), states=None))
        if max_study_trials is None or len(study.trials) < int(max_study_trials):
            study.optimize(objective, n_trials=n_trials, timeout=timeout_s, callbacks=cbs,
                           gc_after_trial=False)
    finally:
        torch.set_num_threads(previous_threads)
    record = study_record(study, target, epochs, storage, space)
    if vp is not None:
        record["vae_params"] = vp
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=float))
    if record["best"] is None:
        raise ValueError(f"no trial of study {study.study_name!r} completed "
                         f"({record['n_trials']})")
    best = dict(record["best"]["params"])
    assert set(best) == set(space)
    return best


__all__ = ["SEARCH_SPACES", "TARGETS", "in_space", "load_tuning_data",
           "make_study", "open_storage", "paper_params", "search_space", "study_record",
           "suggest", "tune"]
