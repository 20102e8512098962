"""A third spectrometer joins a trained package: only its latent MLP is trained.

End to end on the tiny preset: maps of primary + secondary and of primary + broadband CCD
(same seed and regions), a package trained on the first, the CCD joined into it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from plumelink.app.join_command import register
from plumelink.models.fit import predict
from plumelink.models.join import join_secondary
from plumelink.models.metrics import rse
from plumelink.models.package import PackageMismatchError, check_data, load_package
from plumelink.models.train import TrainOptions, train_transfer
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs
from plumelink.pipeline.simulate import PRESETS, simulate_map

FAST = TrainOptions(epochs=4, batch_size=32, threads=2, baselines=False, hash_inputs=False)
JOIN_EPOCHS = 10
# Bound on the joined CCD's validation RSE. Measured on this set-up: ~0.4, with the VAE's own
# reconstruction of the same primary spectra (the floor of any transfer through this latent
# space) at ~0.4 and the mean spectrum at ~1.4. 0.7 leaves room for other torch builds while
# still failing any transfer that did not learn (mean spectrum >= ~1, an untrained MLP >> 1).
MAX_RSE = 0.7


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def join_maps(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("join_maps")
    preset = PRESETS["tiny"]
    paths = {}
    for secondary in ("secondary", "broadband_ccd"):
        for spec in preset.maps[:2]:  # train and val
            paths[secondary, spec.name] = simulate_map(
                out / f"{secondary}-{spec.name}.h5", spec, step_um=preset.step_um, seed=0,
                secondary=secondary)
    return paths


@pytest.fixture(scope="module")
def joined(join_maps, tmp_path_factory) -> tuple[Path, dict, dict[str, str], dict]:
    folder = train_transfer(join_maps["secondary", "train"], join_maps["secondary", "val"],
                            tmp_path_factory.mktemp("join_pkg") / "model", FAST)
    before = {p.name: _sha(p) for p in folder.glob("*.safetensors")}
    manifest_before = json.loads((folder / "manifest.json").read_text())
    calls: list[tuple] = []
    metrics = join_secondary(folder, "broadband_ccd", join_maps["broadband_ccd", "train"],
                             join_maps["broadband_ccd", "val"], epochs=JOIN_EPOCHS, seed=0,
                             progress=lambda *a: calls.append(a))
    assert calls and calls[0][0] == "latent_mlp" and calls[-1][2] == JOIN_EPOCHS
    return folder, metrics, before, manifest_before


def test_package_lists_both_systems_and_old_files_are_untouched(joined) -> None:
    folder, _, before, manifest_before = joined
    pkg = load_package(folder)
    assert pkg.systems == ["broadband_ccd", "secondary"]
    assert pkg.secondary_wavelength_nm["broadband_ccd"].size == 2048
    assert pkg.secondary_wavelength_nm["secondary"].size == 3872
    files = pkg.manifest["files"]
    for name, digest in before.items():  # the VAE and the original system, byte for byte
        assert _sha(folder / name) == digest == files[name]["sha256"]
        assert files[name] == manifest_before["files"][name]
    assert "vae.safetensors" in before and "latent_mlp-secondary.safetensors" in before
    assert set(files) - set(before) == {"latent_mlp-broadband_ccd.safetensors",
                                        "baseline-mean-broadband_ccd.safetensors"}
    entry = pkg.manifest["secondary"]["broadband_ccd"]
    assert entry["fingerprint"]["train"]["file"] == "broadband_ccd-train.h5"
    assert entry["latent_mlp"]["config"]["hidden"] == list(FAST.networks.mlp_hidden)
    assert pkg.manifest["metrics"]["validation_rse"] == manifest_before["metrics"]["validation_rse"]


def test_joined_ccd_transfers_to_primary_spectra(joined, join_maps) -> None:
    folder, metrics, _, _ = joined
    pkg = load_package(folder)
    val = preprocess_pairs(load_pairs(join_maps["broadband_ccd", "val"]))
    check_data(pkg, "broadband_ccd", val.primary_wavelength_nm, val.secondary_wavelength_nm)
    x = pkg.scalers["broadband_ccd"].transform(val.secondary)
    pred = pkg.scalers["primary"].inverse_transform(predict(pkg.composed("broadband_ccd"), x))
    got = rse(val.primary, pred)
    mean = rse(val.primary, pkg.scalers["primary"].inverse_transform(
        pkg.baselines["broadband_ccd"]["mean"].predict(x)))
    assert mean > 0.9  # the mean spectrum explains nothing of the validation map
    assert got < MAX_RSE and got < 0.5 * mean, (got, mean)
    scores = metrics["validation_rse"]
    assert scores["vae_mlp"] == pytest.approx(got, rel=1e-4)
    assert scores["mean"] == pytest.approx(mean, rel=1e-4)
    assert 0 < metrics["vae_reconstruction_rse"] < MAX_RSE
    assert set(metrics["other_systems_validation_rse"]) == {"secondary"}
    stored = pkg.manifest["metrics"]["broadband_ccd"]
    assert stored["validation_rse"]["vae_mlp"] == pytest.approx(got, rel=1e-4)
    assert len(pkg.manifest["histories"]["broadband_ccd"]["latent_mlp"]["train_loss"]) >= 1


def test_join_with_fine_tuning_gets_its_own_decoder_and_the_vae_stays(joined, join_maps,
                                                                     tmp_path) -> None:
    folder = shutil.copytree(joined[0], tmp_path / "model")
    shared = {p.name: _sha(p) for p in folder.glob("*.safetensors")
              if "broadband_ccd" not in p.name}
    metrics = join_secondary(folder, "broadband_ccd", join_maps["broadband_ccd", "train"],
                             join_maps["broadband_ccd", "val"], epochs=JOIN_EPOCHS, seed=0,
                             replace=True, fine_tune=True)
    for name, digest in shared.items():  # the VAE and the first system, byte for byte
        assert _sha(folder / name) == digest
    before, after = metrics["vae_mlp_before_fine_tune"], metrics["vae_mlp_after_fine_tune"]
    assert np.isfinite(before) and np.isfinite(after)
    pkg = load_package(folder)
    kept = after < before
    assert ("broadband_ccd" in pkg.decoders) == kept
    assert (folder / "decoder-broadband_ccd.safetensors").exists() == kept
    assert metrics["validation_rse"]["vae_mlp"] == pytest.approx(min(before, after))
    val = preprocess_pairs(load_pairs(join_maps["broadband_ccd", "val"]))
    x = pkg.scalers["broadband_ccd"].transform(val.secondary)
    pred = pkg.scalers["primary"].inverse_transform(predict(pkg.composed("broadband_ccd"), x))
    assert rse(val.primary, pred) == pytest.approx(min(before, after), rel=1e-4)


def test_wavelength_check_tells_the_two_secondaries_apart(joined, join_maps) -> None:
    folder = joined[0]
    pkg = load_package(folder)
    ccd = load_pairs(join_maps["broadband_ccd", "val"])
    sec = load_pairs(join_maps["secondary", "val"])
    with pytest.raises(PackageMismatchError, match=r"secondary \(secondary\) axis has 3872 "
                       r"pixels, this map's has 2048"):
        check_data(pkg, "secondary", ccd.primary_wavelength_nm, ccd.secondary_wavelength_nm)
    with pytest.raises(PackageMismatchError, match=r"secondary \(broadband_ccd\) axis has 2048 "
                       r"pixels, this map's has 3872"):
        check_data(pkg, "broadband_ccd", sec.primary_wavelength_nm, sec.secondary_wavelength_nm)
    check_data(pkg, "secondary", sec.primary_wavelength_nm, sec.secondary_wavelength_nm)


def test_join_refuses_a_taken_name_and_a_foreign_primary(joined, join_maps, tmp_path) -> None:
    folder = joined[0]
    manifest = (folder / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="already has a secondary system 'broadband_ccd'"):
        join_secondary(folder, "broadband_ccd", join_maps["broadband_ccd", "train"],
                       join_maps["broadband_ccd", "val"], epochs=1)
    spec = PRESETS["tiny"].maps[1]
    odd = simulate_map(tmp_path / "odd.h5", spec, step_um=40.0, seed=0,
                       secondary="broadband_ccd")
    # a map whose primary is not the package's (its calibration is 0.5 nm off)
    with h5py.File(odd, "r+") as f:
        f["map/primary/wavelength"][...] = f["map/primary/wavelength"][...] + 0.5
    with pytest.raises(PackageMismatchError, match=r"primary spectrometer of .*odd\.h5"):
        join_secondary(folder, "other", odd, odd, epochs=1)
    assert (folder / "manifest.json").read_bytes() == manifest


def test_cli_join(joined, join_maps, tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    shutil.copytree(joined[0], folder)
    parser = argparse.ArgumentParser(prog="plumelink")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["join", "--model", str(folder), "--system", "ccd2",
                              "--train", str(join_maps["broadband_ccd", "train"]),
                              "--val", str(join_maps["broadband_ccd", "val"]), "--epochs", "2",
                              "-q"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ccd2 (VAE + new latent MLP)" in out and "primary-only reference" in out
    assert "joined the model package" in out
    assert load_package(folder).systems == ["broadband_ccd", "ccd2", "secondary"]
    with pytest.raises(SystemExit):
        parser.parse_args(["join", "--model", str(folder), "--system", "x", "--train", "t",
                           "--val", "v", "--epochs", "0"])


def test_join_trains_with_the_packages_recorded_input_noise(joined, join_maps, tmp_path) -> None:
    """The joined MLP gets the same input noise as the package's own networks had: the same
    recorded setting gives the same weights, another one other weights."""
    recorded = load_package(joined[0]).manifest["metrics"]["options"]["input_noise"]
    assert recorded == FAST.augment.input_noise > 0

    def joined_mlp(name: str, noise: float) -> dict:
        folder = shutil.copytree(joined[0], tmp_path / name)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["metrics"]["options"]["input_noise"] = noise
        (folder / "manifest.json").write_text(json.dumps(manifest))
        join_secondary(folder, "broadband_ccd", join_maps["broadband_ccd", "train"],
                       join_maps["broadband_ccd", "val"], epochs=2, seed=0, replace=True)
        return load_package(folder).latent_mlps["broadband_ccd"].state_dict()

    a, b, quiet = (joined_mlp("a", recorded), joined_mlp("b", recorded),
                   joined_mlp("quiet", 0.0))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert not all(np.array_equal(a[k].numpy(), quiet[k].numpy()) for k in a)
