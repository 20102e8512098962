"""Fixtures shared by the training, evaluation and transfer tests: the tiny simulated maps
(simulated once per session) and a 2-epoch model package trained on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from plumelink.models.train import TrainOptions, train_transfer
from plumelink.pipeline.simulate import simulate_dataset


@pytest.fixture(scope="session")
def maps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.h5, val.h5 and test.h5 of the tiny preset, seed 0, with the true spectra.

    Shared by every test of the session: copy a map before changing it."""
    return simulate_dataset("tiny", tmp_path_factory.mktemp("tiny_maps"), seed=0, truth=True)


@pytest.fixture(scope="session")
def tiny_model(maps: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[dict[str, Path], Path]:
    """The tiny maps and a 2-epoch package trained on them (no fine-tuning, one PLS and one
    KNN candidate)."""
    model = tmp_path_factory.mktemp("tiny_model") / "model"
    train_transfer(maps["train"], maps["val"], model,
                   TrainOptions(epochs=2, threads=1, fine_tune=False, pls_candidates=(8,),
                                knn_candidates=(3,), hash_inputs=False))
    return maps, model


@pytest.fixture(scope="session")
def tiny_gui_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """Tiny simulated maps and a 1-epoch package (no baselines, no fine-tuning): what the GUI
    and line-transfer tests load, built once per session."""
    base = tmp_path_factory.getbasetemp() / "gui_tiny_model"
    maps = {name: base / "maps" / f"{name}.h5" for name in ("train", "val", "test")}
    model = base / "model"
    if not (model / "manifest.json").exists():
        simulate_dataset("tiny", base / "maps", seed=0, truth=True)
        train_transfer(maps["train"], maps["val"], model,
                       TrainOptions(epochs=1, threads=1, fine_tune=False, baselines=False,
                                    hash_inputs=False))
    return maps, model
