"""A new spectrometer from a few pairs (`plumelink join --pairs N`), on the tiny preset.

The budget's selection (spread over the map, deterministic, refused when too large), the
adapter that folds into a plain latent MLP, the package round trip through `plumelink
transfer --system`, the CLI flags, and that an adapted join from a budget learns.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from plumelink.app.cli import main as cli_main
from plumelink.app.join_command import register
from plumelink.models.adapt import (
    AdaptedMLP,
    resampling,
    select_pairs,
    split_budget,
)
from plumelink.models.evaluate import TransferModels
from plumelink.models.join import join_secondary
from plumelink.models.metrics import rse
from plumelink.models.networks import LatentMLP
from plumelink.models.package import load_package
from plumelink.models.train import TrainOptions, train_transfer
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs
from plumelink.pipeline.simulate import PRESETS, simulate_map

FAST = TrainOptions(epochs=4, batch_size=32, threads=1, baselines=False, hash_inputs=False)
BUDGET = 60  # of the tiny training map's 192 spots


def _grid(ny: int, nx: int) -> np.ndarray:
    return np.arange(ny * nx, dtype=np.int64)


def _covering_radius(index: np.ndarray, chosen: np.ndarray, nx: int) -> float:
    """The largest distance (grid steps) from any spot to its nearest chosen spot."""
    pts = np.stack([index // nx, index % nx], 1).astype(float)
    d = np.linalg.norm(pts[:, None, :] - pts[chosen][None, :, :], axis=2)
    return float(d.min(axis=1).max())


def test_spread_selection_covers_the_map_better_than_random() -> None:
    ny, nx, n = 12, 16, 12
    index = _grid(ny, nx)
    spread = select_pairs(index, (ny, nx), n, "spread", seed=3)
    assert len(set(spread.tolist())) == n
    quadrants = {(int(i // nx) >= ny // 2, int(i % nx) >= nx // 2) for i in index[spread]}
    assert len(quadrants) == 4  # every quarter of the map has a pair
    r_spread = _covering_radius(index, spread, nx)
    r_random = [_covering_radius(index, select_pairs(index, (ny, nx), n, "random", seed=s), nx)
                for s in range(5)]
    assert r_spread < min(r_random), (r_spread, r_random)


def test_selection_is_deterministic_for_a_seed_and_a_prefix_is_spread_too() -> None:
    index = _grid(12, 16)[::2]  # a map with gaps: every other spot valid
    for how in ("spread", "random"):
        a = select_pairs(index, (12, 16), 30, how, seed=7)
        assert np.array_equal(a, select_pairs(index, (12, 16), 30, how, seed=7))
        assert not np.array_equal(a, select_pairs(index, (12, 16), 30, how, seed=8))
    longer = select_pairs(index, (12, 16), 40, "spread", seed=7)
    assert np.array_equal(longer[:30], select_pairs(index, (12, 16), 30, "spread", seed=7))


def test_a_budget_larger_than_the_map_is_refused() -> None:
    index = _grid(4, 5)
    with pytest.raises(ValueError, match="21 pairs asked for, but the training map has only "
                       "20 spots"):
        select_pairs(index, (4, 5), 21, "spread", seed=0)
    with pytest.raises(ValueError, match="integer >= 1"):
        select_pairs(index, (4, 5), 0, "random", seed=0)
    with pytest.raises(ValueError, match="pair selection must be one of"):
        select_pairs(index, (4, 5), 3, "grid", seed=0)  # type: ignore[arg-type]


def test_split_budget_holds_out_one_in_five() -> None:
    order = np.array([9, 3, 7, 1, 5, 0, 8, 2, 6, 4], dtype=np.int64)
    fit, stop = split_budget(order)
    assert stop.tolist() == [4, 5]  # the 5th and the 10th chosen
    assert sorted(fit.tolist() + stop.tolist()) == list(range(10))
    assert list(fit) == sorted(fit)


def test_adapter_folds_into_the_same_latent_mlp() -> None:
    torch.manual_seed(0)
    base = LatentMLP(40, (16, 24), 6)
    source_nm, base_nm = np.linspace(200, 420, 30), np.linspace(250, 380, 40)
    left, weight, inside = resampling(source_nm, base_nm)
    assert inside.all()
    match = np.random.default_rng(1).uniform(0.5, 2.0, 40).astype(np.float32)
    adapter = AdaptedMLP(base, 30, left, weight, match, rank=3)
    with torch.no_grad():  # trained-looking adapters: nothing at its initial value
        for p in adapter.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(50, 30)
    folded = adapter.fold()
    assert isinstance(folded, LatentMLP) and folded.n_pixels == 30
    assert torch.allclose(folded(x), adapter(x), atol=1e-5)
    # the resampling is linear interpolation on the wavelength axis
    line = torch.from_numpy(source_nm[None, :].astype(np.float32))
    resampled = line[:, adapter.left] * (1 - adapter.weight) + line[:, adapter.left + 1] * \
        adapter.weight
    assert np.allclose(resampled.numpy()[0], base_nm, atol=1e-3)
    expected = 2 * 40 + 3 * (16 + 30) + 3 * (24 + 16) + 3 * (6 + 24) + (16 + 24 + 6)
    assert adapter.trained_parameters() == expected


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("pairs_maps")
    preset = PRESETS["tiny"]
    paths = {}
    for secondary in ("secondary", "broadband_ccd"):
        for spec in preset.maps:
            paths[secondary, spec.name] = simulate_map(
                out / f"{secondary}-{spec.name}.h5", spec, step_um=preset.step_um, seed=0,
                secondary=secondary)
    return paths


@pytest.fixture(scope="module")
def package(maps, tmp_path_factory) -> Path:
    return train_transfer(maps["secondary", "train"], maps["secondary", "val"],
                          tmp_path_factory.mktemp("pairs_pkg") / "model", FAST)


@pytest.fixture(scope="module")
def adapted(package, maps, tmp_path_factory) -> tuple[Path, dict]:
    folder = shutil.copytree(package, tmp_path_factory.mktemp("adapted") / "model")
    metrics = join_secondary(folder, "broadband_ccd", maps["broadband_ccd", "train"],
                             maps["broadband_ccd", "val"], epochs=30, seed=0, threads=1,
                             pairs=BUDGET)
    return folder, metrics


def test_adapted_join_from_a_budget_learns_and_records_it(adapted, maps) -> None:
    folder, metrics = adapted
    assert metrics["method"] == "adapt" and metrics["base_system"] == "secondary"
    budget = metrics["pairs"]
    assert budget["n_pairs"] == BUDGET and budget["selection"] == "spread"
    assert budget["validation"] == "pairs" and budget["seed"] == 0
    fit, stop = budget["fit_spots"], budget["early_stopping_spots"]
    assert len(fit) + len(stop) == BUDGET and not set(fit) & set(stop)
    assert len(stop) == BUDGET // 5 and metrics["n_train_pairs"] == len(fit)
    train = preprocess_pairs(load_pairs(maps["broadband_ccd", "train"]))
    assert set(fit) | set(stop) == set(train.index[select_pairs(
        train.index, train.shape, BUDGET, "spread", 0)].tolist())
    pkg = load_package(folder)
    mlp = pkg.latent_mlps["secondary"]
    sizes = [m.out_features for m in mlp.net if isinstance(m, torch.nn.Linear)]
    ins = [2048, *sizes[:-1]]  # the first adapter reads the CCD's own pixels
    assert metrics["trained_parameters"] == 2 * mlp.n_pixels + sum(sizes) + 8 * sum(
        a + b for a, b in zip(ins, sizes, strict=True))
    assert pkg.manifest["metrics"]["broadband_ccd"]["pairs"]["fit_spots"] == fit
    # it learned: far below the mean spectrum on the (untouched) validation map
    scores = metrics["validation_rse"]
    assert scores["vae_mlp"] < 0.5 * scores["mean"], scores
    assert np.isfinite(metrics["early_stopping_rse"])
    blend = metrics["blend"]  # on by default with a budget, chosen on the held-out pairs
    assert blend["chosen_on"] == "the early-stopping pairs" and 0 <= blend["weight"] <= 1
    assert min(blend["scores"].values()) == pytest.approx(
        blend["scores"]["network" if blend["weight"] == 1 else
                        f"{blend['components']}/{blend['weight']:g}"])
    assert ("broadband_ccd" in pkg.decoders) == (blend["weight"] < 1)


def test_adapted_package_round_trip_transfer_gives_the_same_numbers(adapted, maps,
                                                                    tmp_path) -> None:
    folder, metrics = adapted
    pkg = load_package(folder)
    val = preprocess_pairs(load_pairs(maps["broadband_ccd", "val"]))
    models = TransferModels.from_package(pkg, "broadband_ccd")
    pred = models.predict("vae_mlp", val.secondary)
    assert rse(val.primary, pred) == pytest.approx(metrics["validation_rse"]["vae_mlp"],
                                                   rel=1e-4)
    out = tmp_path / "transferred.h5"
    assert cli_main(["transfer", "--model", str(folder), "--system", "broadband_ccd",
                     "--input", str(maps["broadband_ccd", "val"]), "--out", str(out),
                     "-q"]) == 0
    with h5py.File(out, "r") as f:
        spectra = f["map/primary/spectra"][...]
    ny, nx = val.shape
    got = spectra.reshape(ny * nx, -1)[val.index]
    assert np.allclose(got, pred, atol=1e-3 * float(np.abs(pred).max()))


def test_join_refuses_bad_budgets_and_combinations(package, maps, tmp_path) -> None:
    folder = shutil.copytree(package, tmp_path / "model")
    manifest = (folder / "manifest.json").read_bytes()
    train, val = maps["broadband_ccd", "train"], maps["broadband_ccd", "val"]
    with pytest.raises(ValueError, match=r"500 pairs asked for, but training map .*"
                       r"broadband_ccd-train\.h5 has only 192 spots"):
        join_secondary(folder, "ccd", train, val, epochs=1, pairs=500)
    with pytest.raises(ValueError, match="choose one"):
        join_secondary(folder, "ccd", train, val, epochs=1, pairs=20, fine_tune=True)
    with pytest.raises(ValueError, match="method 'full' only"):
        join_secondary(folder, "ccd", train, val, epochs=1, pairs=20, fine_tune=True,
                       blend=False)
    with pytest.raises(ValueError, match="join method must be one of"):
        join_secondary(folder, "ccd", train, val, epochs=1, pairs=20, method="lora")
    with pytest.raises(ValueError, match="give pairs"):
        join_secondary(folder, "ccd", train, val, epochs=1, validation="pairs")
    with pytest.raises(ValueError, match="base system 'nope'"):
        join_secondary(folder, "ccd", train, val, epochs=1, pairs=20, base_system="nope")
    assert (folder / "manifest.json").read_bytes() == manifest


def test_first_layer_join_and_map_validation(package, maps, tmp_path) -> None:
    folder = shutil.copytree(package, tmp_path / "model")
    metrics = join_secondary(folder, "ccd", maps["broadband_ccd", "train"],
                             maps["broadband_ccd", "val"], epochs=5, seed=1, threads=1,
                             pairs=30, pair_selection="random", method="first_layer",
                             validation="map")
    assert metrics["method"] == "first_layer"
    assert metrics["trained_parameters"] == 2048 * FAST.networks.mlp_hidden[0] + \
        FAST.networks.mlp_hidden[0]
    budget = metrics["pairs"]
    assert budget["selection"] == "random" and budget["early_stopping_spots"] is None
    assert len(budget["fit_spots"]) == 30 and "early_stopping_rse" not in metrics
    assert metrics["blend"]["pls_fitted_on" if metrics["blend"]["weight"] < 1 else
                            "chosen_on"] in ("fitting pairs", "the early-stopping pairs")
    assert load_package(folder).latent_mlps["ccd"].n_pixels == 2048


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plumelink")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_pairs_flags(package, maps, tmp_path, capsys) -> None:
    parser = _parser()
    base = ["join", "--model", "m", "--system", "x", "--train", "t", "--val", "v"]
    args = parser.parse_args(base)
    assert args.pairs is None and args.method is None and args.pair_selection == "spread"
    for bad in (["--pairs", "0"], ["--pairs", "x"], ["--method", "lora"],
                ["--pair-selection", "grid"], ["--rank", "-1"], ["--validation", "test"]):
        with pytest.raises(SystemExit):
            parser.parse_args(base + bad)
    capsys.readouterr()
    folder = shutil.copytree(package, tmp_path / "model")
    args = parser.parse_args(["join", "--model", str(folder), "--system", "ccd",
                              "--train", str(maps["broadband_ccd", "train"]),
                              "--val", str(maps["broadband_ccd", "val"]), "--epochs", "3",
                              "--pairs", "25", "--pair-selection", "random", "--rank", "2",
                              "-q"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ccd (VAE + adapt of secondary)" in out
    assert "from 25 of 192 training pairs (random, seed 0" in out
    record = json.loads((folder / "manifest.json").read_text())["metrics"]["ccd"]
    assert record["rank"] == 2 and record["pairs"]["n_pairs"] == 25
    assert f"trained parameters: {record['trained_parameters']:,}" in out


def test_blend_decoder_is_the_weighted_sum_of_network_and_pls() -> None:
    torch.manual_seed(0)
    from plumelink.models.adapt import Blend, choose_blend
    from plumelink.models.baselines import PLSModel
    from plumelink.models.networks import VAE, ComposedTransfer

    vae, mlp = VAE(50, (32, 16), 4).eval(), LatentMLP(20, (8,), 4).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 20)).astype(np.float32)
    y = (x @ rng.standard_normal((20, 50)) + 0.1 * rng.standard_normal((60, 50))).astype(
        np.float32)
    pls = PLSModel(3).fit(x, y)
    decoder = Blend(weight=0.3, components=3, scores={}).decoder(vae, pls)
    assert decoder is not None and decoder.path is not None and decoder.path.rank == 3
    with torch.no_grad():
        network = ComposedTransfer(mlp, vae)(torch.from_numpy(x)).numpy()
        blended = ComposedTransfer(mlp, vae, decoder)(torch.from_numpy(x)).numpy()
    assert np.allclose(blended, 0.3 * network + 0.7 * pls.predict(x), atol=1e-4)
    assert Blend(weight=1.0, components=3, scores={}).decoder(vae, pls) is None
    # a network far worse than the linear truth: the choice leans on PLS, and the network
    # alone is kept when it is the better one
    def score(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean((a - b) ** 2))

    lean = choose_blend(np.zeros_like(y[40:]), (x[:40], x[40:]), (y[:40], y[40:]), [2, 4],
                        score)
    assert lean.weight < 0.5 and lean.components in (2, 4) and "network" in lean.scores
    alone = choose_blend(y[40:], (x[:40], x[40:]), (y[:40], y[40:]), [2], score)
    assert alone.weight == 1.0


def test_evaluate_scores_the_adapted_system_on_its_own_maps(adapted, maps) -> None:
    """`evaluate --system` of a joined system calibrates on the system's own validation map
    (the package's is the first secondary's, 3872 pixels) and scores the stored blend."""
    from plumelink.models.evaluate import evaluate_package

    folder, _ = adapted
    metrics, _ = evaluate_package(folder, maps["broadband_ccd", "test"], None,
                                  system="broadband_ccd", k_values=(2, 3))
    test = preprocess_pairs(load_pairs(maps["broadband_ccd", "test"]))
    models = TransferModels.from_package(load_package(folder), "broadband_ccd")
    expected = rse(test.primary, models.predict("vae_mlp", test.secondary))
    assert metrics["models"]["vae_mlp"]["rse"] == pytest.approx(expected, rel=1e-4)
