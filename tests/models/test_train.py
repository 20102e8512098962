"""Training orchestration on the tiny simulated maps: package, quality, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plumelink.models.evaluate import TransferModels
from plumelink.models.fit import predict
from plumelink.models.metrics import rse
from plumelink.models.networks import ComposedTransfer
from plumelink.models.package import load_package
from plumelink.models.train import TrainOptions, format_rse_table, train_transfer
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs

FAST = TrainOptions(epochs=4, batch_size=32, threads=2)


@pytest.fixture(scope="module")
def trained(maps, tmp_path_factory) -> tuple[Path, list[tuple]]:
    calls: list[tuple] = []
    out = tmp_path_factory.mktemp("pkg") / "model"
    folder = train_transfer(maps["train"], maps["val"], out, FAST,
                            progress=lambda *a: calls.append(a))
    return folder, calls


def test_package_is_written_and_loads_with_everything(trained, maps) -> None:
    folder, _ = trained
    pkg = load_package(folder)
    m = pkg.manifest
    assert pkg.systems == ["secondary"]
    assert set(pkg.baselines["secondary"]) == {"pls", "knn", "pds", "mean"}
    assert "secondary" in pkg.one_step
    rses = m["metrics"]["validation_rse"]
    assert set(rses) == {"vae_mlp", "one_step_mlp", "pls", "knn", "pds", "mean"}
    assert all(np.isfinite(v) and v > 0 for v in rses.values())
    assert set(m["histories"]) == {"vae", "latent_mlp", "fine_tune", "fine_tune_average",
                                   "one_step_mlp", "one_step_average"}
    assert len(m["histories"]["fine_tune_average"]["val_loss"]) <= FAST.fit.epochs
    assert len(m["histories"]["vae"]["train_loss"]) == FAST.fit.epochs
    fp = m["fingerprint"]
    assert fp["train"]["file"] == "train.h5" and fp["val"]["file"] == "val.h5"
    assert fp["train"]["n_pairs"] == len(load_pairs(maps["train"]))
    assert len(fp["train"]["sha256"]) == 64
    assert fp["train"]["size"] == maps["train"].stat().st_size
    pre = m["preprocessing"]
    assert pre["baseline"]["min_window"] == 100 and pre["scaler"]["spread"] == "global"
    assert pkg.scalers["primary"].spread == "global"
    assert pkg.scalers["primary"].mode == "train"
    sel = m["metrics"]["selection"]
    assert sel["pls"]["n_components"] in (8, 16, 32)
    assert sel["knn"]["k"] in (1, 3, 5, 10, 20)
    table = format_rse_table(rses).splitlines()
    assert table[1].split()[0] == min(rses, key=rses.get) and len(table) == 1 + len(rses)


def test_composed_model_beats_the_mean_spectrum_on_validation(trained, maps) -> None:
    """Recompute from the loaded package: scaled secondary -> MLP -> decoder -> unscaled."""
    folder, _ = trained
    pkg = load_package(folder)
    val = preprocess_pairs(load_pairs(maps["val"]))
    x = pkg.scalers["secondary"].transform(val.secondary)
    composed = pkg.composed("secondary")  # with the system's fine-tuned decoder, if any
    pred = pkg.scalers["primary"].inverse_transform(predict(composed, x))
    got = rse(val.primary, pred)
    mean_pred = pkg.scalers["primary"].inverse_transform(
        pkg.baselines["secondary"]["mean"].predict(x))
    floor = rse(val.primary, mean_pred)
    assert floor > 0.9  # the mean spectrum explains nothing of the validation map
    assert got < 0.6 and got < 0.5 * floor, (got, floor)
    rses = pkg.manifest["metrics"]["validation_rse"]
    assert rses["vae_mlp"] == pytest.approx(got, rel=1e-4)
    assert rses["mean"] == pytest.approx(floor, rel=1e-4)


def test_fine_tuning_writes_a_system_decoder_and_leaves_the_vae_as_trained(trained,
                                                                          maps) -> None:
    folder, _ = trained
    pkg = load_package(folder)
    m = pkg.manifest["metrics"]
    assert m["fine_tuned"], "fine-tuning did not improve on the tiny maps (test set-up)"
    assert (folder / "decoder-secondary.safetensors").is_file()
    assert set(pkg.decoders) == {"secondary"}
    shared = pkg.vae.decoder.state_dict()
    own = pkg.decoders["secondary"].net.state_dict()
    assert any(not torch.equal(shared[k], own[k]) for k in shared)
    # the saved VAE is the one before fine-tuning: its reconstruction score is unchanged
    val = preprocess_pairs(load_pairs(maps["val"]))
    xp = pkg.scalers["primary"].transform(val.primary)
    recon = pkg.scalers["primary"].inverse_transform(predict(lambda t: pkg.vae(t)[0], xp))
    assert rse(val.primary, recon) == pytest.approx(m["vae_reconstruction_rse"], rel=1e-4)
    # without the system decoder (MLP + shared decoder) the score is the one after fine-tuning
    # of the MLP only, i.e. not the recorded vae_mlp score
    x = pkg.scalers["secondary"].transform(val.secondary)
    plain = ComposedTransfer(pkg.latent_mlps["secondary"], pkg.vae).eval()
    plain_rse = rse(val.primary, pkg.scalers["primary"].inverse_transform(predict(plain, x)))
    assert plain_rse != pytest.approx(m["validation_rse"]["vae_mlp"], rel=1e-4)
    # evaluation and transfer (with the confidence) decode with the system's decoder too
    transferred, _ = TransferModels.from_package(pkg, "secondary").transfer(val.secondary)
    assert rse(val.primary, transferred) == pytest.approx(m["validation_rse"]["vae_mlp"],
                                                          rel=1e-4)


def test_progress_reports_every_stage_in_order(trained) -> None:
    _, calls = trained
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["vae", "latent_mlp", "fine_tune", "fine_tune_average", "one_step_mlp",
                      "one_step_average", "baselines"]
    vae = [c for c in calls if c[0] == "vae"]
    assert [c[1] for c in vae] == [1, 2, 3, 4] and all(c[2] == 4 for c in vae)
    assert all(np.isfinite(c[3]) and np.isfinite(c[4]) for c in vae)


def test_no_baselines_writes_no_baseline_files(maps, tmp_path) -> None:
    opts = TrainOptions(epochs=2, batch_size=32, threads=2, baselines=False)
    folder = train_transfer(maps["train"], maps["val"], tmp_path / "m", opts)
    names = sorted(p.name for p in folder.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    own_decoder = ["decoder-secondary.safetensors"] if manifest["metrics"]["fine_tuned"] else []
    assert names == sorted(["latent_mlp-secondary.safetensors", "manifest.json",
                            "vae.safetensors", *own_decoder])
    assert set(manifest["metrics"]["validation_rse"]) == {"vae_mlp", "mean"}
    pkg = load_package(folder)
    assert pkg.baselines == {} and pkg.one_step == {}


def test_same_seed_gives_identical_weights_and_another_seed_does_not(maps, tmp_path) -> None:
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        opts = TrainOptions(epochs=2, batch_size=64, threads=2, baselines=False, seed=seed)
        pkg = load_package(train_transfer(maps["train"], maps["val"], tmp_path / name, opts))
        return {**pkg.vae.state_dict(),
                **{f"mlp.{k}": v for k, v in pkg.latent_mlps["secondary"].state_dict().items()}}

    a, b, c = weights(7, "a"), weights(7, "b"), weights(8, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("changes", [
    {"drift_gain": 0.1, "drift_shift_px": 0.1, "drift_response": 0.02},
    {"input_noise": 0.1},
], ids=["drift", "input_noise"])
def test_augmentation_changes_only_the_secondary_networks(maps, tmp_path, changes) -> None:
    def trained_with(name: str, **augmentation: float) -> tuple[dict, dict, dict]:
        opts = TrainOptions(epochs=2, batch_size=64, threads=2, baselines=False, seed=5,
                            drift_gain=0.0, drift_shift_px=0.0, drift_response=0.0,
                            input_noise=0.0)
        folder = train_transfer(maps["train"], maps["val"], tmp_path / name,
                                opts.replace(**augmentation))
        pkg = load_package(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        return (pkg.vae.state_dict(), pkg.latent_mlps["secondary"].state_dict(),
                manifest["metrics"]["options"])

    vae_off, mlp_off, opts_off = trained_with("off")
    vae_on, mlp_on, opts_on = trained_with("on", **changes)
    assert all(torch.equal(vae_off[k], vae_on[k]) for k in vae_off)  # primary only: untouched
    assert not all(torch.equal(mlp_off[k], mlp_on[k]) for k in mlp_off)
    for name, value in changes.items():
        assert (opts_off[name], opts_on[name]) == (0.0, value)


def test_an_existing_package_is_not_overwritten(trained, maps) -> None:
    folder, _ = trained
    with pytest.raises(FileExistsError):
        train_transfer(maps["train"], maps["val"], folder, FAST)


def test_options_are_checked_and_capped() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainOptions(epochs=0)
    with pytest.raises(ValueError, match="spread"):
        TrainOptions(scaler_spread="pixel")
    capped = TrainOptions().capped(3)
    assert capped.fit.epochs == 3 and capped.fine_tune.epochs == 3
    with pytest.raises(ValueError, match="schedule"):
        TrainOptions(schedule="step")
    with pytest.raises(ValueError, match="kl_max"):
        TrainOptions(kl_max=0)
    with pytest.raises(ValueError, match="gain"):
        TrainOptions(drift_gain=-0.1)
    with pytest.raises(ValueError, match="shift_px"):
        TrainOptions(drift_shift_px=2.0)
    with pytest.raises(ValueError, match="linear_rank"):
        TrainOptions(linear_rank=-1)
    with pytest.raises(ValueError, match="average_epochs"):
        TrainOptions(average_epochs=-1)
    with pytest.raises(ValueError, match="average_learning_rate"):
        TrainOptions(average_learning_rate=0.0)
    for bad in (-0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="input_noise"):
            TrainOptions(input_noise=bad)  # type: ignore[arg-type]
    assert TrainOptions(average_epochs=60).capped(3).average.epochs == 3
    paper = TrainOptions.paper()
    assert (paper.fit.learning_rate, paper.fit.epochs, paper.data.scaler_mode,
            paper.data.scaler_spread, paper.fine_tune.enabled, paper.fit.schedule,
            paper.networks.linear_rank, paper.average.epochs) == (
        1e-4, 50, "per-map", "channel", False, "constant", 0, 0)
    assert TrainOptions.paper(epochs=7).fit.epochs == 7
    assert TrainOptions(fine_tune_epochs=2).capped(5).fine_tune.epochs == 2


def test_pls_is_refitted_on_training_and_validation_as_in_the_paper(trained, maps) -> None:
    """The components are chosen on validation, then PLS is fitted on train + val: so the
    packaged PLS fits the validation pairs better than the train-only fit that chose it."""
    from plumelink.models.evaluate import TransferModels

    folder, _ = trained
    pkg = load_package(folder)
    sel = pkg.manifest["metrics"]["selection"]
    assert sel["pls"]["fitted_on"] == "train+val"
    assert sel["knn"]["fitted_on"] == "train" and sel["pds"]["fitted_on"] == "train"
    models = TransferModels.from_package(pkg)
    val = preprocess_pairs(load_pairs(maps["val"]))
    refitted = rse(val.primary, models.predict("pls", val.secondary))
    chosen_by = pkg.manifest["metrics"]["validation_rse"]["pls"]  # the train-only fit's
    assert refitted < chosen_by
