"""`plumelink repack`, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from _small_map import NX, NY, make_line, small_map

from plumelink.app.cli import main
from plumelink.pipeline.map_reader import MapReader


def _lz4_map(path: Path) -> Path:
    return small_map(path, "lz4")


def test_repack_command_converts_and_says_what_readers_need(tmp_path: Path) -> None:
    source, out = _lz4_map(tmp_path / "fast.h5"), tmp_path / "portable.h5"
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "repack", str(source), str(out), "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "deflate" in result.stdout and "no plugin" in result.stdout
    with h5py.File(out, "r") as f:
        assert f["map/secondary/spectra"].attrs["filter_plugin"] == "none"
    with MapReader(out) as reader:
        np.testing.assert_array_equal(reader.read_line(1).primary.spectra,
                                      make_line(1).primary.spectra)
        assert reader.shape == (NY, NX)


def test_repack_command_to_lz4_and_its_errors(tmp_path: Path, capsys) -> None:
    source = _lz4_map(tmp_path / "fast.h5")
    assert main(["repack", str(source), str(tmp_path / "b.h5"), "--compression", "none",
                 "-q"]) == 0
    assert "readers need no plugin" in capsys.readouterr().out
    assert main(["repack", str(tmp_path / "b.h5"), str(tmp_path / "c.h5"),
                 "--compression", "lz4", "-q"]) == 0
    assert "hdf5plugin" in capsys.readouterr().out
    assert main(["repack", str(source), str(tmp_path / "c.h5"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    assert main(["repack", str(foreign), str(tmp_path / "d.h5"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "not a plumelink map" in err and str(foreign) in err
