"""A weight file truncated, garbled or replaced by a pickle, with its sha256 updated in the
manifest so that the checksum passes: loading refuses it as a PackageError naming the file
and the problem, and never unpickles anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from weight_damage import DAMAGES, PICKLES, damage, unpickling_would_run

from plumelink.models.baselines import MeanPredictor, PLSModel
from plumelink.models.networks import VAE, LatentMLP
from plumelink.models.package import PackageError, load_package, save_package
from plumelink.pipeline.preprocess import SpectralScaler

N_P, N_S, LATENT = 24, 20, 4
FILES = ("vae.safetensors", "latent_mlp-sysA.safetensors", "baseline-pls-sysA.safetensors")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, N_S)).astype(np.float32)
    y = rng.normal(size=(30, N_P)).astype(np.float32)
    folder = tmp_path / "pkg"
    save_package(folder, vae=VAE(N_P, hidden=(8,), latent=LATENT),
                 latent_mlps={"sysA": LatentMLP(N_S, hidden=(6,), latent=LATENT)},
                 primary_wavelength_nm=np.linspace(200, 900, N_P),
                 secondary_wavelength_nm={"sysA": np.linspace(250, 800, N_S)},
                 scalers={"primary": SpectralScaler("train").fit(y),
                          "sysA": SpectralScaler("train").fit(x)},
                 preprocessing={}, fingerprint={},
                 baselines={"mean": MeanPredictor().fit(x, y), "pls": PLSModel(2).fit(x, y)})
    return folder


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_damaged_weight_file_is_refused_by_name(package: Path, tmp_path: Path, name: str,
                                                how: str) -> None:
    marker = tmp_path / "unpickled"
    words = damage(package, name, how, marker)
    with pytest.raises(PackageError) as info:
        load_package(package)
    text = str(info.value)
    assert str(package / name) in text and words in text, text
    assert "\n" not in text
    assert not marker.exists(), "a pickle in the package was executed"


def test_the_pickle_payloads_would_run_if_unpickled(tmp_path: Path) -> None:
    unpickling_would_run(tmp_path / "marker")  # so the test above can fail
    assert set(PICKLES) <= set(DAMAGES)


def test_wrong_dtype_and_trailing_bytes_are_named(package: Path, tmp_path: Path) -> None:
    name = "latent_mlp-sysA.safetensors"
    tensors = safetensors.torch.load_file(str(package / name))
    safetensors.torch.save_file({k: v.double() for k, v in tensors.items()},
                                str(package / name))
    damage(package, name, "truncated", tmp_path / "m")  # first: still refused as truncated
    with pytest.raises(PackageError, match="truncated"):
        load_package(package)
    safetensors.torch.save_file({k: v.double() for k, v in tensors.items()},
                                str(package / name))
    _rehash(package, name)
    with pytest.raises(PackageError, match=r"latent_mlp-sysA\.safetensors does not match its "
                       r"architecture.*tensor net\.0\.weight is torch\.float64, expected "
                       r"torch\.float32"):
        load_package(package)
    safetensors.torch.save_file(tensors, str(package / name))
    with open(package / name, "ab") as f:
        f.write(b"\0" * 16)
    _rehash(package, name)
    with pytest.raises(PackageError, match=r"16 bytes follow the last tensor"):
        load_package(package)


def test_baseline_with_the_wrong_shape_names_the_file(package: Path) -> None:
    name = "baseline-mean-sysA.safetensors"
    safetensors.numpy.save_file({"mean": np.zeros(N_P + 1, np.float32)}, str(package / name))
    _rehash(package, name)
    with pytest.raises(PackageError, match=rf"{name}: mean has shape \({N_P + 1},\)"):
        load_package(package)


def _rehash(folder: Path, name: str) -> None:
    import hashlib
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["truncated", "pickle", "torch_save"])
def test_a_damaged_training_checkpoint_is_refused_by_name(tmp_path: Path, how: str) -> None:
    from plumelink.models.checkpoint import Checkpointer
    from plumelink.models.files import WeightFileError

    folder = tmp_path / "checkpoints"
    Checkpointer(folder, {"run": 1}, resume=False).save_stage(
        "vae", {"vae": torch.nn.Linear(3, 2)}, {"epochs": 1})
    path = folder / "stage-vae.safetensors"
    marker = tmp_path / "unpickled"
    make, words = DAMAGES[how]
    path.write_bytes(make(path.read_bytes(), marker))
    resumed = Checkpointer(folder, {"run": 1}, resume=True)
    with pytest.raises(WeightFileError) as info:
        resumed.load_stage("vae", {"vae": torch.nn.Linear(3, 2)})
    assert isinstance(info.value, ValueError)  # the CLI's one-line refusal
    assert str(path) in str(info.value) and words in str(info.value)
    assert not marker.exists()
    (folder / "state.json").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match=r"state\.json is not a training checkpoint"):
        Checkpointer(folder, {"run": 1}, resume=True)
