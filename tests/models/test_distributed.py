"""Data-parallel training through torchrun: two CPU processes on the gloo backend."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plumelink.models.package import load_package


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _check_package(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    ddp = manifest["metrics"]["data_parallel"]
    assert ddp["world_size"] == 2
    assert ddp["ranks_identical"], ddp  # both ranks ended with the same parameters
    assert ddp["weights_sha256_by_rank"][0] == manifest["metrics"]["weights_sha256"]
    load_package(out)
    assert not (out / "checkpoints").exists()
    return manifest


def test_two_gloo_processes_train_small_networks_on_streamed_shards(maps, tmp_path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(f"""
        from plumelink.models.train import TrainOptions, train_transfer
        options = TrainOptions(epochs=1, batch_size=32, vae_hidden=(32, 16), latent=4,
                               mlp_hidden=(16, 16), hash_inputs=False, baselines=False,
                               stream=True, block_spots=32, shuffle_spots=64, device="cpu")
        train_transfer({str(maps["train"])!r}, {str(maps["val"])!r}, {str(tmp_path / "m")!r},
                       options)
    """))
    result = _torchrun([str(script)], timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = _check_package(tmp_path / "m")
    assert manifest["metrics"]["data"]["mode"] == "stream"
    assert len(manifest["histories"]["vae"]["train_loss"]) == 1


@pytest.mark.slow
def test_plumelink_train_under_torchrun(maps, tmp_path) -> None:
    out = tmp_path / "model"
    result = _torchrun(["-m", "plumelink.app.cli", "train", "--train", str(maps["train"]),
                        "--val", str(maps["val"]), "--out", str(out), "--epochs", "1",
                        "--device", "cpu"], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("model package written to") == 1  # rank 0 only
    manifest = _check_package(out)
    assert set(manifest["metrics"]["validation_rse"]) == {
        "vae_mlp", "one_step_mlp", "pls", "knn", "pds", "mean"}
