"""One training loop for every network: mini-batches, Adam, early stopping, progress.

Data come from a `BatchSource`, so the same loop trains from arrays in memory or from
blocks streamed out of map files. Deterministic for a seed on one device.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .networks import VAE, kl_divergence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5  # L2 on the weights
    patience: int = 10  # epochs without validation improvement before stopping
    seed: int = 0


@dataclass
class FitHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}


class BatchSource(Protocol):
    n_samples: int

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        """Tuples of float32 tensors; shuffled when rng is given."""


class ArraySource:
    """Batches from arrays held in memory (inputs, targets...), all with the same length."""

    def __init__(self, *arrays: np.ndarray):
        n = {len(a) for a in arrays}
        if len(n) != 1:
            raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
        self.tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                        for a in arrays]
        self.n_samples = n.pop()

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        order = rng.permutation(self.n_samples) if rng is not None else None
        for start in range(0, self.n_samples, batch_size):
            if order is None:
                yield tuple(t[start : start + batch_size] for t in self.tensors)
            else:
                idx = torch.from_numpy(order[start : start + batch_size])
                yield tuple(t[idx] for t in self.tensors)


# loss(model, batch, step) -> (training loss, validation criterion) as tensors
LossFn = Callable[[nn.Module, tuple, int], tuple[torch.Tensor, torch.Tensor]]
EpochCallback = Callable[[int, float, float], None]  # (epoch, train loss, val loss)


def cyclic_kl_weight(step: int, total_steps: int, cycles: int = 4, maximum: float = 0.5,
                     ramp_fraction: float = 0.5) -> float:
    """Cyclical linear KL annealing (Fu et al. 2019): 0 -> maximum over each cycle's ramp."""
    period = max(total_steps / cycles, 1.0)
    phase = (step % period) / period
    return maximum * min(phase / ramp_fraction, 1.0)


def vae_loss(total_steps: int) -> LossFn:
    """MSE (summed over pixels) + annealed KL; validation criterion: reconstruction MSE."""

    def loss(model: nn.Module, batch: tuple, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(model, VAE)
        (x,) = batch
        recon, mean, log_var = model(x)
        sq = (recon - x).pow(2).sum(dim=1)
        beta = cyclic_kl_weight(step, total_steps)
        total = (sq + beta * kl_divergence(mean, log_var)).mean()
        return total, sq.mean() / x.shape[1]

    return loss


def mse_loss(model: nn.Module, batch: tuple, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    err = (model(x) - y).pow(2).mean()
    return err, err


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: BatchSource,
    val: BatchSource,
    config: FitConfig = FitConfig(),
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitHistory:
    """Train with Adam; keep the weights of the best validation epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    history = FitHistory()
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    step = 0
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for batch in train.batches(config.batch_size, rng):
            loss, _ = loss_fn(model, batch, step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            total += float(loss.detach()) * len(batch[0])
            count += len(batch[0])
        val_loss = evaluate(model, loss_fn, val, config.batch_size * 8, step)
        history.train_loss.append(total / max(count, 1))
        history.val_loss.append(val_loss)
        if not (math.isfinite(val_loss) and math.isfinite(history.train_loss[-1])):
            log.warning("epoch %d: loss is not finite (diverged); keeping epoch %d",
                        epoch, history.best_epoch)
            history.stopped_early = True
            break
        if val_loss < best:
            best, history.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        log.info("epoch %d: train %.5g, validation %.5g", epoch, history.train_loss[-1], val_loss)
        if on_epoch is not None:
            on_epoch(epoch, history.train_loss[-1], val_loss)
        if epoch - history.best_epoch >= config.patience:
            history.stopped_early = True
            break
        if should_stop is not None and should_stop():
            history.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, source: BatchSource, batch_size: int,
             step: int = 0) -> float:
    """Mean validation criterion over a source, in evaluation mode."""
    model.eval()
    total, count = 0.0, 0
    for batch in source.batches(batch_size, None):
        _, crit = loss_fn(model, batch, step)
        total += float(crit) * len(batch[0])
        count += len(batch[0])
    return total / max(count, 1)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
            batch_size: int = 4096) -> np.ndarray:
    """Apply a network to an array in batches; float32 result."""
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size],
                                                   dtype=np.float32))
        out.append(model(xb).numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)
