"""Fixtures of the GUI tests (the tiny model is tests/conftest.py's): a settings file of their
own, the simulated bench profile and the main window."""

from __future__ import annotations

from pathlib import Path

import pytest
from scan_files import simulated_bench_profile

from plumelink.app.gui.main_window import MainWindow
from plumelink.app.gui.settings import ENV, open_settings


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


