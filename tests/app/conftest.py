"""Fixtures of the GUI tests: a tiny model, a settings file of their own, the simulated bench
profile and the main window."""

from __future__ import annotations

from pathlib import Path

import pytest
from scan_files import simulated_bench_profile

from plumelink.app.gui.main_window import MainWindow
from plumelink.app.gui.settings import ENV, open_settings
from plumelink.models.train import TrainOptions, train_transfer
from plumelink.pipeline.simulate import simulate_dataset


@pytest.fixture(scope="session")
def tiny_gui_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """Tiny simulated maps and a 1-epoch package (no baselines), built once per session."""
    base = tmp_path_factory.getbasetemp() / "gui_tiny_model"
    maps = {name: base / "maps" / f"{name}.h5" for name in ("train", "val", "test")}
    model = base / "model"
    if not (model / "manifest.json").exists():
        simulate_dataset("tiny", base / "maps", seed=0, truth=True)
        train_transfer(maps["train"], maps["val"], model,
                       TrainOptions(epochs=1, threads=1, fine_tune=False, baselines=False,
                                    hash_inputs=False))
    return maps, model


@pytest.fixture(autouse=True)
def settings_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "gui.ini"
    monkeypatch.setenv(ENV, str(path))
    return path


@pytest.fixture
def bench_profile(tmp_path) -> Path:
    return simulated_bench_profile(tmp_path, speedup=100.0)


@pytest.fixture
def window(qtbot, settings_file):
    w = MainWindow(settings=open_settings(settings_file))
    qtbot.addWidget(w)
    w.show()
    yield w
    w.confirm_close = lambda: True
    w.close()
    w.session.disconnect()


