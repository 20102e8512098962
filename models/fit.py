"""One training loop for every network: mini-batches, Adam, early stopping, progress.

Data come from a `BatchSource`, so the same loop trains from arrays in memory (`ArraySource`)
or from blocks streamed out of map files (`plumelink.models.streaming.MapPairSource`).
Deterministic for a seed on one device. Optional: a device (CPU or GPU), data parallel
(DistributedDataParallel when a process group is initialised, see `distributed`), and
checkpoints after every epoch (`checkpoint.Checkpointer`) from which `fit` resumes exactly.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import distributed
from .checkpoint import (
    Checkpointer,
    generator_state,
    load_optimiser,
    set_generator_state,
)
from .networks import VAE, ComposedTransfer, kl_divergence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5  # L2 on the weights
    patience: int = 10  # epochs without validation improvement before stopping
    seed: int = 0
    max_batches: int | None = None  # cap of training batches per epoch (measurements)
    # learning-rate schedule: "constant"; "cosine" (to min_lr_fraction x lr at the last
    # step of `epochs`); "plateau" (x lr_decay_factor after lr_decay_patience epochs without
    # a new best validation loss, at most down to min_lr_fraction x lr)
    schedule: str = "constant"
    min_lr_fraction: float = 0.01
    lr_decay_patience: int = 5
    lr_decay_factor: float = 0.3
    # stochastic weight averaging: the weights are averaged over the epochs (equal weights,
    # after each epoch) and the average is what is validated, kept and returned
    average: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class FitHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    learning_rate: list[float] = field(default_factory=list)  # at the end of each epoch

    def as_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "learning_rate": self.learning_rate}


class BatchSource(Protocol):
    n_samples: int

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        """Tuples of float32 tensors; shuffled (and this rank's shard) when rng is given.

        With several ranks every rank gets the same rng state and must consume it the same
        way, and every rank must yield the same number of batches (DDP steps in lockstep).
        """

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training batches per epoch on this rank (for schedules)."""


class ArraySource:
    """Batches from arrays held in memory (inputs, targets...), all with the same length.

    With world_size > 1 each epoch's permutation (the same on every rank) is dealt out
    round-robin, rank r taking positions r, r + world_size, ...; every rank gets
    n_samples // world_size samples (at most world_size - 1 dropped per epoch).
    """

    def __init__(self, *arrays: np.ndarray, rank: int = 0, world_size: int = 1):
        n = {len(a) for a in arrays}
        if len(n) != 1:
            raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
        self.tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                        for a in arrays]
        self.n_samples = n.pop()
        self.rank, self.world_size = int(rank), int(world_size)

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_samples // self.world_size / batch_size)

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        order = rng.permutation(self.n_samples) if rng is not None else None
        if order is not None and self.world_size > 1:
            per_rank = self.n_samples // self.world_size
            order = order[self.rank :: self.world_size][:per_rank]
        n = self.n_samples if order is None else order.size
        for start in range(0, n, batch_size):
            if order is None:
                yield tuple(t[start : start + batch_size] for t in self.tensors)
            else:
                idx = torch.from_numpy(order[start : start + batch_size])
                yield tuple(t[idx] for t in self.tensors)


class MappedSource:
    """A source whose batches are moved to `device` and passed through fn (e.g. targets
    computed by a frozen network: the latent MLP learns the VAE's latent mean)."""

    def __init__(self, source: BatchSource, fn: Callable[[tuple], tuple],
                 device: torch.device | str = "cpu"):
        self.source, self.fn, self.device = source, fn, torch.device(device)
        self.n_samples = source.n_samples

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.source.steps_per_epoch(batch_size)

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        for batch in self.source.batches(batch_size, rng):
            with torch.no_grad():  # never yield inside: grad mode is global to the thread
                out = self.fn(_to(batch, self.device))
            yield out


def _to(batch: tuple, device: torch.device) -> tuple:
    return tuple(t.to(device, non_blocking=True) for t in batch)


# loss(model, batch, step) -> (training loss, validation criterion) as tensors
LossFn = Callable[[nn.Module, tuple, int], tuple[torch.Tensor, torch.Tensor]]
EpochCallback = Callable[[int, float, float], None]  # (epoch, train loss, val loss)


def cyclic_kl_weight(step: int, total_steps: int, cycles: int = 4, maximum: float = 0.5,
                     ramp_fraction: float = 0.5) -> float:
    """Cyclical linear KL annealing (Fu et al. 2019): 0 -> maximum over each cycle's ramp."""
    period = max(total_steps / cycles, 1.0)
    phase = (step % period) / period
    return maximum * min(phase / ramp_fraction, 1.0)


def vae_loss(total_steps: int, cycles: int = 4, kl_max: float = 0.5) -> LossFn:
    """MSE (summed over pixels) + annealed KL; validation criterion: reconstruction MSE."""

    def loss(model: nn.Module, batch: tuple, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(getattr(model, "module", model), VAE)
        (x,) = batch
        recon, mean, log_var = model(x)
        sq = (recon - x).pow(2).sum(dim=1)
        beta = cyclic_kl_weight(step, total_steps, cycles, kl_max)
        total = (sq + beta * kl_divergence(mean, log_var)).mean()
        return total, sq.mean() / x.shape[1]

    return loss


def mse_loss(model: nn.Module, batch: tuple, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    err = (model(x) - y).pow(2).mean()
    return err, err


def kept_if_better(restore: nn.Module, before: float, train: Callable[[], FitHistory],
                   score: Callable[[], float], what: str) -> tuple[FitHistory, float, bool]:
    """A training stage that must earn its place (fine-tuning, weight averaging): run
    ``train``, then ``score`` the result (validation RSE, lower is better); when it is not
    below ``before``, ``restore`` gets its weights from before the stage back. Returns the
    stage's history, the score after it and whether the stage was kept."""
    state = copy.deepcopy(restore.state_dict())
    history = train()
    after = score()
    kept = after < before
    if not kept:
        log.info("%s did not improve the validation RSE (%.5g -> %.5g); keeping the weights "
                 "before it", what, before, after)
        restore.load_state_dict(state)
    return history, after, kept


def make_adam(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for every parameter) where torch offers it: measured 25x
    faster than the per-parameter loop for the VAE's 9.4 M weights on the CPU, where the
    loop took longer than the forward and backward passes together."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay,
                                fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(net: nn.Module, loss_fn: LossFn, batch: tuple, step: int,
               optimiser: torch.optim.Optimizer) -> torch.Tensor:
    """One optimiser step on one batch; returns the training loss (a tensor, not synced to
    the host). The step of `fit`, and the one benchmarks/bench_keras.py times."""
    loss, _ = loss_fn(net, batch, step)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss


def cosine_factor(step: int, total_steps: int, floor: float) -> float:
    """Cosine decay of the learning rate's factor from 1 to ``floor`` over total_steps."""
    phase = min(step / max(total_steps - 1, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * phase))


def cosine_lr(config: FitConfig, step: int, total_steps: int) -> float:
    """The learning rate of the "cosine" schedule at a step."""
    return config.learning_rate * cosine_factor(step, total_steps, config.min_lr_fraction)


Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def make_scheduler(optimiser: torch.optim.Optimizer, config: FitConfig, total_steps: int
                   ) -> Scheduler | None:
    """torch's scheduler for ``config.schedule``: "cosine" steps after every batch (LambdaLR),
    "plateau" after every epoch on the validation loss (ReduceLROnPlateau: x lr_decay_factor
    after lr_decay_patience epochs without a strictly lower loss, down to min_lr_fraction x lr);
    "constant": None."""
    if config.schedule == "cosine":
        floor = config.min_lr_fraction
        return torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: cosine_factor(step, total_steps, floor))
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode="min", factor=config.lr_decay_factor,
            patience=config.lr_decay_patience - 1, threshold=0.0, threshold_mode="abs",
            min_lr=config.learning_rate * config.min_lr_fraction, eps=0.0)
    return None


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: BatchSource,
    val: BatchSource,
    config: FitConfig = FitConfig(),
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    device: torch.device | str | None = None,
    checkpoint: Checkpointer | None = None,
    stage: str | None = None,
) -> FitHistory:
    """Train with Adam; keep the weights of the best validation epoch.

    device: where the model and batches go (default CPU). When a torch.distributed process
    group is initialised, the model trains wrapped in DistributedDataParallel (the sources
    shard the training data by rank). checkpoint + stage: after every epoch the state
    (weights, Adam moments, best weights, history, torch and numpy RNG states) is saved, and
    a checkpoint of this stage found at the start is resumed: the result is that of an
    uninterrupted run. The checkpoint is saved before on_epoch is called.

    config.average: the weights are averaged over the epochs (Izmailov et al. 2018, SWA; a
    flatter optimum generalises better); the average is validated for early stopping and the
    best average is returned. Mid-stage checkpoints do not hold the average: not with
    ``checkpoint`` (a short averaging stage is redone whole on resume).
    """
    if config.average and checkpoint is not None and stage:
        raise ValueError("fit: weight averaging has no mid-stage checkpoints; pass "
                         "checkpoint=None (the stage is redone on resume)")
    device = torch.device(device or "cpu")
    info = distributed.current()
    model.to(device)
    torch.manual_seed(config.seed + info.rank)  # the VAE's sampling noise differs by rank
    rng = np.random.default_rng(config.seed)  # the same on every rank: shared shuffling
    optimiser = make_adam(model, config.learning_rate, config.weight_decay)
    history = FitHistory()
    best = math.inf
    best_state = _clone_state(model)
    step, first_epoch, stop = 0, 0, False
    per_epoch = train.steps_per_epoch(config.batch_size)
    if config.max_batches is not None:
        per_epoch = min(per_epoch, config.max_batches)
    scheduler = make_scheduler(optimiser, config, max(1, per_epoch * config.epochs))
    per_batch = isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    resumed = checkpoint.epoch_state(stage) if checkpoint is not None and stage else None
    if resumed is not None:
        record, tensors = resumed
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        load_optimiser(optimiser, tensors, record["param_groups"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        set_generator_state(rng, record["rng"])
        history = FitHistory(**record["history"])
        best, step = float(record["best"]), int(record["step"])
        first_epoch, stop = int(record["epoch"]) + 1, bool(record["stop"])
        if scheduler is not None:
            scheduler.load_state_dict(record["scheduler"])
        log.info("%s: resuming after epoch %d", stage, first_epoch)
    # the average is copied before any DDP wrapping (no reducer hooks on its parameters)
    averaged = AveragedModel(model) if config.average else None
    net: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            # the composed model's encoder takes no part in its forward pass
            find_unused_parameters=isinstance(model, ComposedTransfer))
    for epoch in range(first_epoch, config.epochs):
        if stop:
            break
        net.train()
        # the epoch's loss is summed on the device: no host sync (GPU) per batch
        summed, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for i, batch in enumerate(train.batches(config.batch_size, rng)):
            if config.max_batches is not None and i >= config.max_batches:
                break
            batch = _to(batch, device)
            loss = train_step(net, loss_fn, batch, step, optimiser)
            if per_batch:
                scheduler.step()  # type: ignore[union-attr]
            step += 1
            summed += loss.detach().double() * len(batch[0])
            count += len(batch[0])
        total, count = distributed.all_reduce_sum([float(summed), float(count)], info, device)
        if averaged is not None:
            averaged.update_parameters(model)  # equal weights over the epochs so far
        validated = averaged.module if averaged is not None else model
        val_loss = evaluate(validated, loss_fn, val, config.batch_size * 8, step, device=device)
        history.train_loss.append(total / max(count, 1))
        history.val_loss.append(val_loss)
        history.learning_rate.append(float(optimiser.param_groups[0]["lr"]))
        diverged = not (math.isfinite(val_loss) and math.isfinite(history.train_loss[-1]))
        if not diverged and val_loss < best:
            best, history.best_epoch = val_loss, epoch
            best_state = _clone_state(validated)
        stop = diverged or epoch - history.best_epoch >= config.patience
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not stop:
            scheduler.step(val_loss)
        history.stopped_early = history.stopped_early or stop
        if checkpoint is not None and stage:
            checkpoint.save_epoch(stage, {
                "epoch": epoch, "step": step, "best": best, "stop": stop,
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "history": history.as_dict(), "rng": generator_state(rng),
                "config": asdict(config)}, model, best_state, optimiser)
        if diverged:
            log.warning("epoch %d: loss is not finite (diverged); keeping epoch %d",
                        epoch, history.best_epoch)
            break
        log.info("epoch %d: train %.5g, validation %.5g", epoch, history.train_loss[-1], val_loss)
        if on_epoch is not None:
            on_epoch(epoch, history.train_loss[-1], val_loss)
        if stop:
            break
        if should_stop is not None and should_stop():
            history.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, source: BatchSource, batch_size: int,
             step: int = 0, *, device: torch.device | str | None = None) -> float:
    """Mean validation criterion over a source, in evaluation mode."""
    model.eval()
    device = torch.device(device or "cpu")
    total, count = 0.0, 0
    for batch in source.batches(batch_size, None):
        batch = _to(batch, device)
        _, crit = loss_fn(model, batch, step)
        total += float(crit) * len(batch[0])
        count += len(batch[0])
    return total / max(count, 1)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
            batch_size: int = 4096, device: torch.device | str | None = None) -> np.ndarray:
    """Apply a network (on `device`, default CPU) to an array in batches; float32 result."""
    device = torch.device(device or "cpu")
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size],
                                                   dtype=np.float32)).to(device)
        out.append(model(xb).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)
