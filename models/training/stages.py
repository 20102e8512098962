"""The stages of a training run, one function each, sharing one `Stages` context.

`train_transfer` runs them in order (VAE, latent MLP, fine-tuning, weight averaging, one-step
MLP, baselines); `join` reuses the latent MLP and the fine-tuning. Each stage is checkpointed
as a whole (`Stages.checkpointed`) and each network's epochs too (`fit.fit`), so a resumed run
gives the result of an uninterrupted one. The seeds: the VAE is initialised after
``torch.manual_seed(seed)``, the latent MLP after seed + 1, the one-step MLP after seed + 3;
the loops of the stages are seeded with seed + 0..5 (VAE, MLP, fine-tuning, one-step MLP,
fine-tuning average, one-step average).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from plumelink.models import augment
from plumelink.models.augment import SpectralDrift
from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel, select
from plumelink.models.checkpoint import Checkpointer
from plumelink.models.fit import (
    ArraySource,
    BatchSource,
    FitConfig,
    FitHistory,
    LossFn,
    MappedSource,
    fit,
    kept_if_better,
    mse_loss,
    predict,
    vae_loss,
)
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, OneStepMLP, SystemDecoder
from plumelink.models.training.config import TrainConfig
from plumelink.models.training.data import FreeCoreThreads, TrainingData

log = logging.getLogger(__name__)

# progress(stage, epoch, n_epochs, train_loss, val_loss); epoch counts from 1
ProgressCallback = Callable[[str, int, int, float | None, float | None], None]


class Reporter:
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


def fit_config(config: TrainConfig, epochs: int, lr: float, offset: int) -> FitConfig:
    """The loop settings of one stage: ``config.fit`` with this stage's epochs, rate, seed."""
    loop = config.fit
    return FitConfig(epochs=epochs, batch_size=loop.batch_size, learning_rate=lr,
                     weight_decay=loop.weight_decay, patience=loop.patience,
                     seed=config.seed + offset, max_batches=loop.max_batches,
                     schedule=loop.schedule, min_lr_fraction=loop.min_lr_fraction,
                     lr_decay_patience=loop.lr_decay_patience,
                     lr_decay_factor=loop.lr_decay_factor)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's trainable parameters frozen for the block (the shared VAE while a system's
    MLP and decoder copy are tuned end to end), trainable again after it."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class Stages:
    """What every stage of one run shares: the config, the data, the device, checkpoints and
    progress, and what the stages record (histories, metrics, validation RSE by model)."""

    config: TrainConfig
    data: TrainingData
    device: torch.device
    checkpoints: Checkpointer | None
    report: Reporter
    histories: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=lambda: {"validation_rse": {}})
    # re-decides the thread count after every epoch (a run on its default threads, CPU)
    threads: FreeCoreThreads | None = None

    def __post_init__(self) -> None:
        pre = self.data.preprocessor
        self.drift = SpectralDrift(self.config.augment.drift, pre.secondary.mean,
                                   pre.secondary.scale)

    @property
    def scores(self) -> dict[str, float]:
        return self.metrics["validation_rse"]

    def augmented(self, source: BatchSource) -> BatchSource:
        """Training batches (secondary, target) with a drift drawn for every secondary and
        noise added to it (each where the config asks for it)."""
        return augment.augmented(source, self.device, self.drift, self.config.augment.noise)

    def fit(self, model: nn.Module, loss: LossFn, train: BatchSource, val: BatchSource,
            stage: str, epochs: int, lr: float, offset: int, *,
            checkpointed: bool = True) -> FitHistory:
        on_epoch = self.report.epochs(stage, epochs)
        if self.threads is not None:
            report, governor = on_epoch, self.threads

            def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
                governor.update(f"{stage} epoch {epoch}")
                report(epoch, train_loss, val_loss)

        return fit(model, loss, train, val, fit_config(self.config, epochs, lr, offset),
                   on_epoch=on_epoch, device=self.device,
                   checkpoint=self.checkpoints if checkpointed else None, stage=stage)

    def predict(self, model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray
                ) -> np.ndarray:
        return predict(model, x, device=self.device)

    def val_rse(self, model: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """Validation RSE of a network from scaled secondary spectra."""
        return self.data.val_rse(self.predict(model, self.data.s_va))

    def checkpointed(self, name: str, modules: dict[str, nn.Module],
                     run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a stage (returns its JSON record) or, when the checkpoint has it, load it."""
        ck = self.checkpoints
        if ck is not None and ck.stage_done(name):
            record = ck.load_stage(name, modules)
            for module in modules.values():
                module.to(self.device).eval()
            log.info("%s: loaded from the checkpoint", name)
            return record
        record = run()
        if ck is not None:
            ck.save_stage(name, modules, record)
        return record


def train_vae(run: Stages) -> VAE:
    """The VAE of primary spectra, early stopping on the validation reconstruction."""
    config, data = run.config, run.data
    source = data.source("primary")
    steps_per_epoch = source.steps_per_epoch(config.fit.batch_size)
    if config.fit.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, config.fit.max_batches)
    torch.manual_seed(config.seed)
    vae = VAE(data.n_primary_px, config.networks.vae_hidden, config.networks.latent)
    loss = vae_loss(config.fit.epochs * steps_per_epoch, config.fit.kl_cycles, config.fit.kl_max)

    def stage() -> dict[str, Any]:
        h = run.fit(vae, loss, source, ArraySource(data.p_va), "vae", config.fit.epochs,
                    config.fit.learning_rate, 0)
        return {"history": h.as_dict()}

    run.histories["vae"] = run.checkpointed("vae", {"vae": vae}, stage)["history"]
    run.metrics["vae_reconstruction_rse"] = data.val_rse(
        run.predict(lambda x: vae(x)[0], data.p_va))
    return vae


def train_latent_mlp(run: Stages, vae: VAE) -> LatentMLP:
    """The latent MLP: secondary spectrum -> the VAE's latent mean of the paired primary."""
    config, data = run.config, run.data
    z_va = run.predict(lambda x: vae.encode(x)[0], data.p_va)
    if data.stream is not None:
        source: BatchSource = MappedSource(
            data.source("secondary", "primary"), lambda b: (b[0], vae.encode(b[1])[0]),
            run.device)
    else:
        source = ArraySource(data.s_tr, run.predict(lambda x: vae.encode(x)[0], data.p_tr),
                             rank=data.rank, world_size=data.world_size)
    torch.manual_seed(config.seed + 1)
    mlp = LatentMLP(data.n_secondary_px, config.networks.mlp_hidden, config.networks.latent)

    def stage() -> dict[str, Any]:
        h = run.fit(mlp, mse_loss, run.augmented(source), ArraySource(data.s_va, z_va),
                    "latent_mlp", config.fit.epochs, config.fit.learning_rate, 1)
        return {"history": h.as_dict()}

    run.histories["latent_mlp"] = run.checkpointed("latent_mlp", {"mlp": mlp}, stage)["history"]
    before = run.val_rse(ComposedTransfer(mlp, vae).eval())
    run.metrics["vae_mlp_before_fine_tune"] = before
    run.scores["vae_mlp"] = before
    return mlp


def fine_tune(run: Stages, vae: VAE, mlp: LatentMLP) -> SystemDecoder | None:
    """The MLP and a copy of the decoder (`SystemDecoder`) tuned end to end, the VAE frozen;
    kept only when the validation RSE improves. Returns the system's decoder, or None."""
    config, data = run.config, run.data
    before = run.scores["vae_mlp"]
    n_ft = min(config.fine_tune.epochs, config.fit.epochs)
    tuned = ComposedTransfer(mlp, vae, SystemDecoder.from_vae(
        vae, data.n_secondary_px, config.networks.linear_rank).to(run.device))

    def tune() -> FitHistory:
        with frozen(vae):
            return run.fit(tuned, mse_loss, run.augmented(data.source("secondary", "primary")),
                           ArraySource(data.s_va, data.p_va), "fine_tune", n_ft,
                           config.fine_tune.learning_rate, 2)

    def stage() -> dict[str, Any]:  # the MLP as before when not kept (decoder unused)
        h, after, kept = kept_if_better(mlp, before, tune, lambda: run.val_rse(tuned),
                                        "fine-tuning")
        return {"history": h.as_dict(), "after": after, "kept": kept}

    record = run.checkpointed("fine_tune", {"composed": tuned}, stage)
    run.histories["fine_tune"] = record["history"]
    run.metrics["vae_mlp_after_fine_tune"] = record["after"]
    run.metrics["fine_tuned"] = bool(record["kept"])
    if not record["kept"]:
        return None
    run.scores["vae_mlp"] = record["after"]
    if config.average.epochs:
        with frozen(vae):
            average(run, tuned, "composed", "fine_tune_average", 4, "vae_mlp",
                    "vae_mlp_after_average")
    return tuned.decoder


def average(run: Stages, model: nn.Module, key: str, stage: str, offset: int, score: str,
            metric: str) -> None:
    """Weight averaging (SWA) from the trained weights of ``model`` (checkpointed as ``key``):
    more epochs at a constant rate, the weights averaged; reverted when not better on
    validation, ``run.scores[score]`` updated when kept."""
    config, data = run.config, run.data
    before = run.scores[score]
    n_avg = min(config.average.epochs, config.fit.epochs)

    def train() -> FitHistory:
        loop = replace(fit_config(config, n_avg, config.average.learning_rate, offset),
                       schedule="constant", average=True)
        return fit(model, mse_loss, run.augmented(data.source("secondary", "primary")),
                   ArraySource(data.s_va, data.p_va), loop,
                   on_epoch=run.report.epochs(stage, n_avg), device=run.device)

    def stage_run() -> dict[str, Any]:
        h, after, kept = kept_if_better(model, before, train, lambda: run.val_rse(model),
                                        stage)
        return {"history": h.as_dict(), "after": after, "kept": kept}

    record = run.checkpointed(stage, {key: model}, stage_run)
    run.histories[stage] = record["history"]
    run.metrics[metric] = record["after"]
    if record["kept"]:
        run.scores[score] = record["after"]
    model.eval()


def score_mean(run: Stages) -> MeanPredictor:
    """The mean training spectrum: always scored (the floor to beat)."""
    mean = MeanPredictor().fit(run.data.s_tr, run.data.p_tr)
    run.scores["mean"] = run.data.val_rse(mean.predict(run.data.s_va))
    return mean


def train_one_step(run: Stages) -> OneStepMLP:
    """The one-step MLP baseline (secondary -> primary directly), then its weight average."""
    config, data = run.config, run.data
    nets = config.networks
    torch.manual_seed(config.seed + 3)
    one_step = OneStepMLP(data.n_secondary_px, data.n_primary_px, nets.mlp_hidden, nets.latent,
                          tuple(reversed(nets.vae_hidden)), nets.linear_rank)

    def stage() -> dict[str, Any]:
        h = run.fit(one_step, mse_loss, run.augmented(data.source("secondary", "primary")),
                    ArraySource(data.s_va, data.p_va), "one_step_mlp", config.fit.epochs,
                    config.fit.learning_rate, 3)
        return {"history": h.as_dict()}

    run.histories["one_step_mlp"] = run.checkpointed("one_step_mlp", {"one_step": one_step},
                                                     stage)["history"]
    one_step.eval()
    run.scores["one_step_mlp"] = run.val_rse(one_step)
    if config.average.epochs:
        average(run, one_step, "one_step", "one_step_average", 5, "one_step_mlp",
                "one_step_mlp_after_average")
    return one_step


def fit_baselines(run: Stages, mean: MeanPredictor) -> dict[str, Any]:
    """PLS and KNN (each chosen on validation), PDS and the mean spectrum, fitted on the
    training arrays in memory; PLS then refitted on training + validation with the chosen
    components when ``pls_refit`` (the paper's protocol; its validation score is the one it
    was chosen by). Their selection goes to ``run.metrics["selection"]``, saying what each
    was fitted on."""
    config, data, scores = run.config.baselines, run.data, run.scores
    s_tr, p_tr, s_va, p_va = data.s_tr, data.p_tr, data.s_va, data.p_va
    n_sub = len(p_tr)
    baselines: dict[str, Any] = {}
    selection: dict[str, Any] = {}
    max_components = min(n_sub - 1, data.n_secondary_px)
    pls_cands = [int(c) for c in config.pls_candidates if int(c) <= max_components]
    knn_cands = [int(k) for k in config.knn_candidates if int(k) <= n_sub]
    n_steps = 3
    run.report.step("baselines", 0, n_steps)
    if pls_cands:
        pls, best, found = select(PLSModel, pls_cands, (s_tr, p_tr), (s_va, p_va), data.score)
        fitted_on = "train"
        if config.pls_refit:
            pls = PLSModel(best).fit(np.concatenate([s_tr, s_va]), np.concatenate([p_tr, p_va]))
            fitted_on = "train+val"
        baselines["pls"] = pls
        selection["pls"] = {"n_components": best, "scores": {str(k): v for k, v in found.items()},
                            "fitted_on": fitted_on,
                            "validation_score": "of the fit on train that chose the components"}
        scores["pls"] = found[best]
    run.report.step("baselines", 1, n_steps, scores.get("pls"))
    if knn_cands:
        knn, best, found = select(KNNModel, knn_cands, (s_tr, p_tr), (s_va, p_va), data.score)
        baselines["knn"] = knn
        selection["knn"] = {"k": best, "scores": {str(k): v for k, v in found.items()},
                            "fitted_on": "train"}
        scores["knn"] = found[best]
    run.report.step("baselines", 2, n_steps, scores.get("knn"))
    pds = PDSModel(data.primary_wavelength_nm, data.secondary_wavelength_nm,
                   half_window=config.pds_half_window, global_components=min(16, max_components))
    pds.fit(s_tr, p_tr)
    baselines["pds"] = pds
    scores["pds"] = data.val_rse(pds.predict(s_va))
    baselines["mean"] = mean
    run.report.step("baselines", 3, n_steps, scores["pds"])
    selection["pds"] = {"fitted_on": "train"}
    run.metrics["selection"] = selection
    return baselines


__all__ = ["ProgressCallback", "Reporter", "Stages", "average", "fine_tune", "fit_baselines",
           "fit_config", "frozen", "score_mean", "train_latent_mlp", "train_one_step",
           "train_vae"]
