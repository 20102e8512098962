"""Checkpoints: an interrupted training resumed from its checkpoint ends as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plumelink.models.checkpoint import CheckpointMismatchError
from plumelink.models.package import load_package
from plumelink.models.train import CHECKPOINTS, TrainOptions, train_transfer

SMALL = TrainOptions(epochs=3, batch_size=32, threads=1, vae_hidden=(64, 32), latent=8,
                     mlp_hidden=(32, 32), hash_inputs=False, patience=50,
                     pls_candidates=(8,), knn_candidates=(3,), device="cpu",
                     checkpoint_interval_s=0.0)  # every epoch: resume points are checked
STREAM = SMALL.replace(stream=True, block_spots=32, shuffle_spots=64)


class Interrupt(Exception):
    pass


def _train(maps, out: Path, options: TrainOptions, stop_at=None, resume=False) -> Path:
    def progress(stage, epoch, n_epochs, train_loss, val_loss) -> None:
        if (stage, epoch) == stop_at:
            raise Interrupt(stage, epoch)

    return train_transfer(maps["train"], maps["val"], out, options, progress=progress,
                          resume=resume)


@pytest.fixture(scope="module")
def reference(maps, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference")
    return {"memory": _train(maps, root / "memory", SMALL),
            "stream": _train(maps, root / "stream", STREAM)}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    pkg = load_package(folder)
    out = {f"vae.{k}": v for k, v in pkg.vae.state_dict().items()}
    out.update({f"mlp.{k}": v for k, v in pkg.latent_mlps["secondary"].state_dict().items()})
    for name, module in pkg.one_step.items():
        out.update({f"one_step.{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    assert ma["histories"] == mb["histories"]
    assert ma["metrics"]["validation_rse"] == mb["metrics"]["validation_rse"]
    assert ma["metrics"]["weights_sha256"] == mb["metrics"]["weights_sha256"]


@pytest.mark.parametrize("stop_at", [("vae", 2), ("latent_mlp", 1), ("fine_tune", 3),
                                     ("one_step_mlp", 2)])
def test_resumed_training_equals_an_uninterrupted_one(maps, reference, tmp_path, stop_at):
    out = tmp_path / "model"
    with pytest.raises(Interrupt):
        _train(maps, out, SMALL, stop_at)
    assert not (out / "manifest.json").exists()
    files = sorted(p.name for p in (out / CHECKPOINTS).iterdir())
    assert "state.json" in files
    assert all(name.endswith((".json", ".safetensors")) for name in files), files  # no pickle
    state = json.loads((out / CHECKPOINTS / "state.json").read_text())
    assert state["epoch"]["stage"] == stop_at[0] and state["epoch"]["epoch"] == stop_at[1] - 1
    _train(maps, out, SMALL, resume=True)
    _assert_same(out, reference["memory"])
    assert not (out / CHECKPOINTS).exists()  # removed once the package is written


def test_resumed_streaming_training_equals_an_uninterrupted_one(maps, reference, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(Interrupt):
        _train(maps, out, STREAM, ("latent_mlp", 2))
    _train(maps, out, STREAM, resume=True)
    _assert_same(out, reference["stream"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["data"]["mode"] == "stream"


def test_resume_refuses_other_options_and_missing_checkpoints(maps, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _train(maps, out, SMALL, resume=True)
    with pytest.raises(Interrupt):
        _train(maps, out, SMALL, ("vae", 1))
    with pytest.raises(CheckpointMismatchError, match="seed"):
        _train(maps, out, SMALL.replace(seed=5), resume=True)
    # a fresh start (no --resume) clears the old checkpoint and trains from scratch
    _train(maps, out, SMALL.replace(epochs=1, baselines=False))
    assert (out / "manifest.json").exists()
