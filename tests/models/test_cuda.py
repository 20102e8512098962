"""Training on a CUDA GPU: deterministic for a seed and resumable (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plumelink.models.package import load_package
from plumelink.models.train import TrainOptions, train_transfer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GPU = TrainOptions(epochs=3, batch_size=32, vae_hidden=(256, 64), latent=8, mlp_hidden=(32, 32),
                   hash_inputs=False, patience=50, pls_candidates=(8,), knn_candidates=(3,),
                   device="cuda")


class Interrupt(Exception):
    pass


def _digest(folder: Path) -> str:
    return load_package(folder).manifest["metrics"]["weights_sha256"]


@pytest.mark.parametrize("stream", [False, True])
def test_gpu_training_is_deterministic_and_resumes_exactly(maps, tmp_path, stream) -> None:
    options = GPU.replace(stream=stream, block_spots=32, shuffle_spots=64)

    def run(name: str, stop_at=None, resume=False) -> Path:
        def progress(stage, epoch, *_):
            if (stage, epoch) == stop_at:
                raise Interrupt

        return train_transfer(maps["train"], maps["val"], tmp_path / name, options,
                              progress=progress, resume=resume)

    a, b = run("a"), run("b")
    manifest = load_package(a).manifest
    assert manifest["metrics"]["options"]["device"].startswith("cuda")
    assert _digest(a) == _digest(b)
    with pytest.raises(Interrupt):
        run("c", ("fine_tune", 2))
    assert _digest(run("c", resume=True)) == _digest(a)
