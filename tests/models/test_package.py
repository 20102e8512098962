"""Model packages round-trip via safetensors + JSON, refuse corrupt files, explain mismatches."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel
from plumelink.models.networks import (
    VAE,
    ComposedTransfer,
    LatentMLP,
    LinearPath,
    OneStepMLP,
    SystemDecoder,
)
from plumelink.models.package import (
    MANIFEST,
    ModelPackage,
    PackageError,
    PackageMismatchError,
    add_secondary,
    check_data,
    load_package,
    save_package,
)
from plumelink.pipeline.preprocess import SpectralScaler

N_P, N_S, LATENT = 48, 40, 6
PRIMARY_NM = np.linspace(200.0, 900.0, N_P)
SECONDARY_NM = np.linspace(250.0, 800.0, N_S)


def _data(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, N_S)).astype(np.float32),
            rng.normal(size=(n, N_P)).astype(np.float32))


def _scaler(x: np.ndarray) -> SpectralScaler:
    return SpectralScaler("train").fit(x)


def _save(folder: Path, *, with_extras: bool = True) -> dict:
    torch.manual_seed(0)
    x, y = _data(0)
    vae = VAE(N_P, hidden=(16, 8), latent=LATENT)
    mlp = LatentMLP(N_S, hidden=(8, 12), latent=LATENT)
    one_step = OneStepMLP(N_S, N_P, hidden=(8,), latent=LATENT, decoder_hidden=(12,))
    baselines = {
        "mean": MeanPredictor().fit(x, y),
        "pls": PLSModel(3).fit(x, y),
        "knn": KNNModel(4).fit(x, y),
        "pds": PDSModel(PRIMARY_NM, SECONDARY_NM, half_window=2, global_components=3).fit(x, y),
    }
    save_package(
        folder, vae=vae, latent_mlps={"sysA": mlp}, primary_wavelength_nm=PRIMARY_NM,
        secondary_wavelength_nm={"sysA": SECONDARY_NM},
        scalers={"primary": _scaler(y), "sysA": _scaler(x)},
        preprocessing={"baseline": {"window": 51}}, fingerprint={"sha256": "abc", "n": 60},
        baselines=baselines if with_extras else None, one_step=one_step if with_extras else None,
        metrics={"sysA": {"rse": np.float32(0.5)}},
        histories={"vae": {"train_loss": [1.0, float("nan")]}},
    )
    return {"vae": vae, "mlp": mlp, "one_step": one_step, "baselines": baselines}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "pkg"
    return folder, _save(folder)


def test_round_trip_predictions_are_identical(saved: tuple[Path, dict]) -> None:
    folder, orig = saved
    pkg = load_package(folder)
    assert isinstance(pkg, ModelPackage) and pkg.systems == ["sysA"]
    x = torch.from_numpy(_data(5, 20)[0])
    with torch.no_grad():
        expected = orig["vae"].eval().decode(orig["mlp"].eval()(x))
        assert torch.equal(pkg.composed("sysA")(x), expected)
        assert torch.equal(pkg.one_step["sysA"](x), orig["one_step"].eval()(x))
    for name, model in orig["baselines"].items():
        np.testing.assert_array_equal(pkg.baselines["sysA"][name].predict(x.numpy()),
                                      model.predict(x.numpy()), err_msg=name)
    np.testing.assert_array_equal(pkg.primary_wavelength_nm, PRIMARY_NM)
    np.testing.assert_array_equal(pkg.secondary_wavelength_nm["sysA"], SECONDARY_NM)
    np.testing.assert_array_equal(pkg.scalers["sysA"].to_dict()["mean"],
                                  _scaler(_data(0)[0]).to_dict()["mean"])
    m = pkg.manifest
    assert m["primary"]["vae"]["config"] == orig["vae"].config()
    assert m["versions"]["torch"] == torch.__version__
    assert m["preprocessing"] == {"baseline": {"window": 51}}
    assert m["metrics"]["sysA"]["rse"] == pytest.approx(0.5)
    assert m["histories"]["vae"]["train_loss"] == [1.0, None]  # strict JSON, no NaN
    assert set(m["files"]) == {"vae.safetensors", "latent_mlp-sysA.safetensors",
                               "one_step_mlp-sysA.safetensors"} | {
        f"baseline-{n}-sysA.safetensors" for n in orig["baselines"]}
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def test_no_pickle_is_ever_used(saved: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    for mod, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"),
                      (pickle, "Unpickler")]:
        monkeypatch.setattr(mod, name, refuse)
    pkg = load_package(saved[0])
    assert pkg.baselines["sysA"]["knn"].k == 4


def test_add_secondary_leaves_the_vae_untouched(saved: tuple[Path, dict]) -> None:
    folder, orig = saved
    vae_bytes = (folder / "vae.safetensors").read_bytes()
    n_b = 30
    axis_b = np.linspace(300.0, 700.0, n_b)
    torch.manual_seed(3)
    mlp_b = LatentMLP(n_b, hidden=(10,), latent=LATENT)
    xb = np.random.default_rng(7).normal(size=(50, n_b)).astype(np.float32)
    add_secondary(folder, "sysB", mlp_b, axis_b, _scaler(xb), fingerprint={"sha256": "def"},
                  metrics={"rse": 0.4}, history={"train_loss": [2.0, 1.0]})
    assert (folder / "vae.safetensors").read_bytes() == vae_bytes
    pkg = load_package(folder)
    assert pkg.systems == ["sysA", "sysB"]
    x = torch.from_numpy(xb[:5])
    with torch.no_grad():
        assert torch.equal(pkg.composed("sysB")(x), orig["vae"].eval().decode(mlp_b.eval()(x)))
    assert pkg.manifest["secondary"]["sysB"]["fingerprint"] == {"sha256": "def"}
    assert pkg.manifest["metrics"]["sysB"] == {"rse": 0.4}
    assert "knn" in pkg.baselines["sysA"]  # the first system is kept
    with pytest.raises(ValueError, match="already has a secondary system 'sysB'"):
        add_secondary(folder, "sysB", mlp_b, axis_b, _scaler(xb))
    with pytest.raises(ValueError, match="latent dimensions"):
        add_secondary(folder, "sysC", LatentMLP(n_b, (4,), LATENT + 1), axis_b, _scaler(xb))


def test_a_system_decoder_is_its_own_file_and_the_shared_vae_is_unchanged(
        saved: tuple[Path, dict]) -> None:
    """A fine-tuned decoder of a joined system: its own file, used only by that system."""
    folder, orig = saved
    vae_bytes = (folder / "vae.safetensors").read_bytes()
    n_b = 30
    axis_b = np.linspace(300.0, 700.0, n_b)
    torch.manual_seed(4)
    mlp_b = LatentMLP(n_b, hidden=(10,), latent=LATENT)
    decoder = SystemDecoder.from_vae(orig["vae"])
    with torch.no_grad():
        for param in decoder.parameters():  # stands for fine-tuning: differs from the VAE's
            param.add_(0.1)
    xb = np.random.default_rng(8).normal(size=(50, n_b)).astype(np.float32)
    add_secondary(folder, "sysB", mlp_b, axis_b, _scaler(xb), decoder=decoder)
    assert (folder / "vae.safetensors").read_bytes() == vae_bytes
    pkg = load_package(folder)
    assert pkg.manifest["secondary"]["sysB"]["decoder"]["file"] == "decoder-sysB.safetensors"
    assert "decoder-sysB.safetensors" in pkg.manifest["files"]
    assert set(pkg.decoders) == {"sysB"}
    x = torch.from_numpy(xb[:5])
    xa = torch.from_numpy(_data(5, 5)[0])
    with torch.no_grad():
        assert torch.equal(pkg.composed("sysB")(x), decoder.eval()(mlp_b.eval()(x)))
        assert not torch.equal(pkg.composed("sysB")(x),
                               orig["vae"].eval().decode(mlp_b(x)))
        # the other system still decodes with the shared, unchanged VAE decoder
        assert torch.equal(pkg.composed("sysA")(xa),
                           orig["vae"].eval().decode(orig["mlp"].eval()(xa)))
    with pytest.raises(ValueError, match="SystemDecoder"):
        add_secondary(folder, "sysC", LatentMLP(n_b, (4,), LATENT), axis_b, _scaler(xb),
                      decoder=SystemDecoder([LATENT, 7, N_P + 1]))
    add_secondary(folder, "sysB", mlp_b, axis_b, _scaler(xb), replace=True)  # no decoder now
    assert not (folder / "decoder-sysB.safetensors").exists()
    assert load_package(folder).decoders == {}


def test_linear_paths_are_saved_loaded_and_added_to_the_output(saved: tuple[Path, dict]
                                                               ) -> None:
    folder, orig = saved
    vae = orig["vae"].eval()
    n_b = 30
    axis_b = np.linspace(300.0, 700.0, n_b)
    torch.manual_seed(4)
    mlp_b = LatentMLP(n_b, hidden=(10,), latent=LATENT).eval()
    xb = np.random.default_rng(8).normal(size=(50, n_b)).astype(np.float32)
    x = torch.from_numpy(xb[:5])
    decoder = SystemDecoder.from_vae(vae, n_b, 3)
    with torch.no_grad():  # an untrained path starts at zero: the plain composed model
        assert torch.equal(ComposedTransfer(mlp_b, vae, decoder)(x), vae.decode(mlp_b(x)))
        decoder.path.up.weight.normal_()  # stands for training
    one_step = OneStepMLP(n_b, N_P, hidden=(8,), latent=LATENT, decoder_hidden=(12,),
                          path_rank=2)
    with torch.no_grad():
        one_step.path.up.weight.normal_()
    add_secondary(folder, "sysB", mlp_b, axis_b, _scaler(xb), decoder=decoder,
                  one_step=one_step)
    pkg = load_package(folder)
    entry = pkg.manifest["secondary"]["sysB"]
    assert entry["decoder"]["config"]["path_rank"] == 3
    with torch.no_grad():
        linear = x @ decoder.path.down.weight.T @ decoder.path.up.weight.T
        expected = decoder.net(mlp_b(x)) + linear
        torch.testing.assert_close(pkg.composed("sysB")(x), expected)
        linear1 = x @ one_step.path.down.weight.T @ one_step.path.up.weight.T
        torch.testing.assert_close(pkg.one_step["sysB"].eval()(x), one_step.net(x) + linear1)
    with pytest.raises(ValueError, match="linear path"):
        add_secondary(folder, "sysC", LatentMLP(n_b, (4,), LATENT), axis_b, _scaler(xb),
                      decoder=SystemDecoder.from_vae(vae, n_b + 1, 3))
    with pytest.raises(ValueError, match="rank >= 1"):
        LinearPath(n_b, N_P, -1)


def test_corrupted_file_is_named(saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    path = folder / "latent_mlp-sysA.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"latent_mlp-sysA\.safetensors is corrupt"):
        load_package(folder)


def test_missing_file_is_named(saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    (folder / "baseline-pds-sysA.safetensors").unlink()
    with pytest.raises(PackageError, match=r"baseline-pds-sysA\.safetensors .* is missing"):
        load_package(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(PackageError, match=r"manifest\.json is missing"):
        load_package(folder)


def _rehash(folder: Path, name: str) -> None:
    import hashlib

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_tensor_shapes_that_do_not_match_the_architecture_are_explained(
        saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    other = LatentMLP(N_S, hidden=(8, 13), latent=LATENT)  # one hidden width differs
    safetensors.torch.save_file(other.state_dict(), str(folder / "latent_mlp-sysA.safetensors"))
    _rehash(folder, "latent_mlp-sysA.safetensors")
    with pytest.raises(PackageError, match=r"latent_mlp-sysA\.safetensors does not match its "
                       r"architecture.*tensor net\.2\.weight has shape \(13, 8\), "
                       r"expected \(12, 8\)"):
        load_package(folder)


def test_manifest_architecture_disagreeing_with_tensors_is_explained(
        saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["primary"]["vae"]["config"]["hidden"] = [16, 8, 4]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"vae\.safetensors does not match.*missing tensors"):
        load_package(folder)


def test_saving_refuses_inconsistent_inputs_and_existing_packages(
        saved: tuple[Path, dict], tmp_path: Path) -> None:
    folder, orig = saved
    with pytest.raises(FileExistsError):
        _save(folder)
    _save(folder.parent / "again", with_extras=False)
    with pytest.raises(ValueError, match=r"takes 48 pixels.*has 47"):
        save_package(tmp_path / "bad", vae=orig["vae"], latent_mlps={"sysA": orig["mlp"]},
                     primary_wavelength_nm=PRIMARY_NM[:-1],
                     secondary_wavelength_nm={"sysA": SECONDARY_NM},
                     scalers={"primary": _scaler(_data(0)[1]), "sysA": _scaler(_data(0)[0])},
                     preprocessing={}, fingerprint={})
    assert not (tmp_path / "bad" / "manifest.json").exists()
    # a bad secondary input is refused before any file of an existing package is replaced
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="not fitted"):
        save_package(folder, vae=orig["vae"], latent_mlps={"sysA": orig["mlp"]},
                     primary_wavelength_nm=PRIMARY_NM,
                     secondary_wavelength_nm={"sysA": SECONDARY_NM},
                     scalers={"primary": _scaler(_data(0)[1]), "sysA": _scaler(_data(0)[0])},
                     preprocessing={}, fingerprint={}, baselines={"pls": PLSModel(2)},
                     overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_overwrite_replaces_and_removes_stale_files(saved: tuple[Path, dict]) -> None:
    folder, orig = saved
    x, y = _data(0)
    save_package(folder, vae=orig["vae"], latent_mlps={"sysA": orig["mlp"]},
                 primary_wavelength_nm=PRIMARY_NM, secondary_wavelength_nm={"sysA": SECONDARY_NM},
                 scalers={"primary": _scaler(y), "sysA": _scaler(x)}, preprocessing={},
                 fingerprint={}, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [
        "latent_mlp-sysA.safetensors", "manifest.json", "vae.safetensors"]
    assert load_package(folder).baselines == {}


def test_check_data_explains_mismatches(saved: tuple[Path, dict]) -> None:
    pkg = load_package(saved[0])
    check_data(pkg, "sysA", PRIMARY_NM, SECONDARY_NM + 1e-5)  # within tolerance: no error
    with pytest.raises(PackageMismatchError,
                       match="the model's secondary \\(sysA\\) axis has 40 pixels, this map's "
                             "has 38"):
        check_data(pkg, "sysA", secondary_wavelength_nm=SECONDARY_NM[:38])
    shifted = PRIMARY_NM.copy()
    shifted[10:] += 0.25
    with pytest.raises(PackageMismatchError,
                       match=r"primary axis differs from the model's by up to 0\.25 nm \(pixel 10"
                             r".*38 of 48 pixels"):
        check_data(pkg, "sysA", primary_wavelength_nm=shifted)
    with pytest.raises(PackageMismatchError, match="no secondary system 'sysZ'; it has 'sysA'"):
        check_data(pkg, "sysZ", PRIMARY_NM, SECONDARY_NM)
    with pytest.raises(PackageMismatchError):
        pkg.composed("sysZ")
    assert issubclass(PackageMismatchError, ValueError)


def test_the_preprocessor_of_a_system_and_a_manifest_with_an_unknown_key(
        saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    pkg = load_package(folder)
    pre = pkg.preprocessor("sysA")  # a record without a version: the default baseline
    assert pre.primary is pkg.scalers["primary"] and pre.secondary is pkg.scalers["sysA"]
    assert pre.baseline.min_window == 100
    with pytest.raises(PackageMismatchError, match="no secondary system 'sysB'"):
        pkg.preprocessor("sysB")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["secondary"]["sysA"]["scalers"] = {}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=r"secondary\.sysA\.scalers is not a known key"):
        load_package(folder)
