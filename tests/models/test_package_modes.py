"""Files of a model package and of a training checkpoint follow the user's umask, like any
file the user writes (a lab shares models in a group folder): 0644 under umask 022, 0640
under 027. They used to be 0600, the mode of tempfile.mkstemp."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from plumelink.models.baselines import MeanPredictor
from plumelink.models.checkpoint import Checkpointer
from plumelink.models.files import atomic_write
from plumelink.models.networks import VAE, LatentMLP
from plumelink.models.package import save_package
from plumelink.pipeline.preprocess import SpectralScaler


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_package_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 10)).astype(np.float32), rng.normal(size=(20, 12))
    folder = tmp_path / "pkg"
    save_package(folder, vae=VAE(12, hidden=(6,), latent=3),
                 latent_mlps={"sysA": LatentMLP(10, hidden=(5,), latent=3)},
                 primary_wavelength_nm=np.linspace(200, 900, 12),
                 secondary_wavelength_nm={"sysA": np.linspace(250, 800, 10)},
                 scalers={"primary": SpectralScaler("train").fit(y),
                          "sysA": SpectralScaler("train").fit(x)},
                 preprocessing={}, fingerprint={}, baselines={"mean": MeanPredictor().fit(x, y)})
    modes = _modes(folder)
    assert set(modes) == {"manifest.json", "vae.safetensors", "latent_mlp-sysA.safetensors",
                          "baseline-mean-sysA.safetensors"}
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the same mode as a file written without plumelink
    assert set(modes.values()) == {stat.S_IMODE(plain.stat().st_mode)}


def test_checkpoint_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    ck = Checkpointer(tmp_path / "checkpoints", {"run": 1}, resume=False)
    net = torch.nn.Linear(3, 2)
    ck.save_stage("vae", {"vae": net}, {"epochs": 1})
    modes = _modes(tmp_path / "checkpoints")
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, lambda p: Path(p).write_text("old"))
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda p: (Path(p).write_text("half"), _fail()))
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def _fail() -> None:
    raise RuntimeError("disk full")
