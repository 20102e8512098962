"""The plumelink command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plumelink.app.cli import main
from plumelink.pipeline.map_reader import MapReader


def test_simulate_command_writes_maps_and_says_where(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "simulate", "--preset", "tiny",
         "--out", str(out), "--seed", "3", "--truth"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("train", "val", "test"):
        assert f"{name}: {out / f'{name}.h5'}" in result.stdout
        with MapReader(out / f"{name}.h5") as reader:
            assert reader.status == "complete"
            assert reader.has_truth
    assert "simulate tiny" in result.stderr  # the progress bar


def test_simulate_into_an_unwritable_place_is_a_clear_error(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["simulate", "--preset", "tiny", "--out", str(blocker / "sub"), "-q"])
    assert code == 2
    assert "plumelink simulate: error:" in capsys.readouterr().err


def test_unknown_preset_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--preset", "huge", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
