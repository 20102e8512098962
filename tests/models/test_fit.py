"""The training loop: learns, stops early, keeps the best epoch, survives divergence."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from plumelink.models.fit import (
    ArraySource,
    FitConfig,
    FitHistory,
    cosine_lr,
    cyclic_kl_weight,
    fit,
    kept_if_better,
    mse_loss,
    predict,
    vae_loss,
)
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, OneStepMLP


def _spectra(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axis = np.linspace(0, 1, 64)
    amps = rng.uniform(0.5, 1.5, size=(n, 2))
    peaks = np.exp(-0.5 * ((axis - 0.3) / 0.03) ** 2), np.exp(-0.5 * ((axis - 0.7) / 0.03) ** 2)
    return (amps[:, :1] * peaks[0] + amps[:, 1:] * peaks[1]).astype(np.float32)


def test_cyclic_kl_weight_has_four_linear_ramps_to_half() -> None:
    total = 400
    weights = [cyclic_kl_weight(s, total) for s in range(total)]
    assert weights[0] == 0.0 and max(weights) == 0.5
    assert weights[50] == 0.5 and weights[25] == 0.25
    assert weights[100] == 0.0 and weights[300] == 0.0  # four cycles
    assert sum(1 for a, b in pairwise(weights) if b < a) == 3


def test_vae_learns_to_reconstruct_and_latent_mlp_composes() -> None:
    x_train, x_val = _spectra(512, 0), _spectra(128, 1)
    vae = VAE(64, hidden=(32, 16), latent=4)
    config = FitConfig(epochs=80, batch_size=32, learning_rate=3e-3, seed=0)
    history = fit(vae, vae_loss(80 * 16), ArraySource(x_train), ArraySource(x_val), config)
    assert history.val_loss[history.best_epoch] < 0.25 * history.val_loss[0]
    recon = predict(lambda t: vae.decode(vae.encode(t)[0]), x_val)
    assert np.mean((recon - x_val) ** 2) < 0.15 * np.var(x_val)

    secondary = x_train[:, ::2] * 1.7  # a "secondary system" seeing the same plume
    latent = predict(lambda t: vae.encode(t)[0], x_train)
    mlp = LatentMLP(32, hidden=(16, 16), latent=4)
    fit(mlp, mse_loss, ArraySource(secondary[:400], latent[:400]),
        ArraySource(secondary[400:], latent[400:]), config)
    transferred = predict(ComposedTransfer(mlp, vae).eval(), x_val[:, ::2] * 1.7)
    assert np.mean((transferred - x_val) ** 2) < 0.2 * np.var(x_val)


def test_early_stopping_keeps_the_best_epoch_weights() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 8)).astype(np.float32)  # pure noise: validation gets worse
    model = OneStepMLP(8, 8, hidden=(64, 64), latent=64, decoder_hidden=(64, 64))
    config = FitConfig(epochs=200, batch_size=8, learning_rate=1e-2, patience=5, seed=0)
    history = fit(model, mse_loss, ArraySource(x[:32], y[:32]), ArraySource(x[32:], y[32:]),
                  config)
    assert history.stopped_early and len(history.val_loss) < 200
    assert len(history.val_loss) - 1 - history.best_epoch == 5
    with torch.no_grad():
        final = float(((model(torch.from_numpy(x[32:])) - torch.from_numpy(y[32:])) ** 2).mean())
    assert abs(final - history.val_loss[history.best_epoch]) < 1e-5


def test_divergence_stops_training_and_restores_finite_weights() -> None:
    x = _spectra(64, 3)
    model = OneStepMLP(64, 64, hidden=(16, 16), latent=8, decoder_hidden=(16, 16))
    config = FitConfig(epochs=30, batch_size=16, learning_rate=1e6, seed=0)
    history = fit(model, mse_loss, ArraySource(x, x), ArraySource(x, x), config)
    assert history.stopped_early
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_array_source_shards_one_permutation_over_ranks() -> None:
    x = np.arange(10, dtype=np.float32)[:, None]
    shards = []
    for rank in (0, 1, 2):
        source = ArraySource(x, rank=rank, world_size=3)
        assert source.steps_per_epoch(2) == 2
        rows = np.concatenate([b[0].numpy() for b in source.batches(2, np.random.default_rng(4))])
        shards.append(set(rows.ravel().tolist()))
        assert rows.size == 3  # 10 // 3 each, the same count on every rank
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2])
    evaluation = np.concatenate([b[0].numpy() for b in source.batches(4, None)])
    np.testing.assert_array_equal(evaluation, x)  # evaluation is never sharded


def test_fit_limits_batches_per_epoch_and_is_deterministic() -> None:
    x = _spectra(256, 5)
    config = FitConfig(epochs=2, batch_size=16, learning_rate=1e-3, seed=3, max_batches=3)

    def run() -> tuple[list[float], dict]:
        torch.manual_seed(0)
        model = OneStepMLP(64, 64, hidden=(16, 16), latent=4, decoder_hidden=(16, 16))
        h = fit(model, mse_loss, ArraySource(x, x), ArraySource(x[:32], x[:32]), config)
        return h.train_loss, model.state_dict()

    (loss_a, a), (loss_b, b) = run(), run()
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_schedule_falls_from_the_rate_to_its_floor() -> None:
    config = FitConfig(learning_rate=1e-3, schedule="cosine", min_lr_fraction=0.01)
    rates = [cosine_lr(config, s, 100) for s in range(100)]
    assert rates[0] == 1e-3 and abs(rates[-1] - 1e-5) < 1e-12
    assert all(b < a for a, b in pairwise(rates))
    assert abs(rates[49] - (1e-5 + 0.99e-3 * 0.5 * (1 + np.cos(np.pi * 49 / 99)))) < 1e-12


def test_plateau_schedule_cuts_the_rate_when_validation_stops_improving() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 8)).astype(np.float32)  # pure noise: validation gets worse
    config = FitConfig(epochs=12, batch_size=8, learning_rate=1e-2, patience=100, seed=0,
                       schedule="plateau", lr_decay_patience=2, lr_decay_factor=0.5,
                       min_lr_fraction=0.2)
    torch.manual_seed(0)
    model = OneStepMLP(8, 8, hidden=(64, 64), latent=64, decoder_hidden=(64, 64))
    history = fit(model, mse_loss, ArraySource(x[:32], y[:32]), ArraySource(x[32:], y[32:]),
                  config)
    rates = history.learning_rate
    assert len(rates) == 12 and rates[0] == 1e-2
    assert min(rates) == 2e-3  # cut by halves, never below the floor
    cuts = [i for i, (a, b) in enumerate(pairwise(rates)) if b < a]
    assert cuts, "the rate never decreased although validation did not improve"
    assert cuts[0] >= history.best_epoch + 2  # not before lr_decay_patience epochs
    assert all(b - a >= 2 for a, b in pairwise(cuts))


def test_constant_schedule_keeps_the_rate_and_unknown_schedules_are_refused() -> None:
    x = _spectra(64, 4)
    model = OneStepMLP(64, 64, hidden=(8,), latent=4, decoder_hidden=(8,))
    history = fit(model, mse_loss, ArraySource(x, x), ArraySource(x, x),
                  FitConfig(epochs=3, batch_size=16, learning_rate=1e-3))
    assert history.learning_rate == [1e-3] * 3
    with pytest.raises(ValueError, match="schedule"):
        FitConfig(schedule="step")


def test_weight_averaging_returns_the_mean_of_the_epoch_weights_up_to_the_best() -> None:
    x = _spectra(128, 4)
    y = x[:, ::-1].copy()
    model = OneStepMLP(64, 64, hidden=(16,), latent=8, decoder_hidden=(16,))
    snapshots: list[list[torch.Tensor]] = []
    config = FitConfig(epochs=6, batch_size=16, learning_rate=1e-3, seed=0, patience=6,
                       average=True)
    history = fit(model, mse_loss, ArraySource(x[:96], y[:96]), ArraySource(x[96:], y[96:]),
                  config, on_epoch=lambda *_: snapshots.append(
                      [p.detach().clone() for p in model.parameters()]))
    k = history.best_epoch + 1
    assert len(snapshots) == 6
    for i, p in enumerate(model.parameters()):
        mean = torch.stack([s[i] for s in snapshots[:k]]).mean(0)
        torch.testing.assert_close(p.detach(), mean, rtol=1e-5, atol=1e-6)
    # what is validated is the average: the returned weights score the best validation loss
    with torch.no_grad():
        got = float(((model(torch.from_numpy(x[96:])) - torch.from_numpy(y[96:])) ** 2).mean())
    assert got == pytest.approx(history.val_loss[history.best_epoch], rel=1e-5)
    with pytest.raises(ValueError, match="checkpoint"):
        fit(model, mse_loss, ArraySource(x, y), ArraySource(x, y), config,
            checkpoint=object(), stage="average")  # type: ignore[arg-type]


@pytest.mark.parametrize("after, kept", [(0.5, True), (1.0, False), (2.0, False)])
def test_a_stage_that_does_not_improve_gives_the_weights_back(after, kept) -> None:
    net = torch.nn.Linear(3, 2)
    before_weights = {k: v.clone() for k, v in net.state_dict().items()}
    history = FitHistory(val_loss=[after])

    def train() -> FitHistory:
        with torch.no_grad():
            net.weight.add_(1.0)  # the stage changes the weights
        return history

    got = kept_if_better(net, 1.0, train, lambda: after, "a stage")
    assert got == (history, after, kept)
    same = all(torch.equal(net.state_dict()[k], v) for k, v in before_weights.items())
    assert same == (not kept)
