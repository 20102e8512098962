"""`plumelink repack`, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from plumelink.app.cli import main
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster_line import RasterLine, SystemLine

NY, NX, N_PX = 3, 5, 16


def make_line(iy: int) -> RasterLine:
    rng = np.random.default_rng(iy)
    x = 10.0 * np.arange(NX)

    def system() -> SystemLine:
        return SystemLine(spectra=rng.poisson(300, (NX, N_PX)).astype(np.uint16),
                          valid=np.ones(NX, bool), frame_id=np.arange(NX),
                          timestamp_s=np.zeros(NX))

    return RasterLine(index=iy, x_um=x, y_um=np.full(NX, 10.0 * iy), x_measured_um=x,
                      y_measured_um=np.full(NX, 10.0 * iy), shot_id=iy * NX + np.arange(NX),
                      primary=system(), secondary=system())


def _lz4_map(path: Path) -> Path:
    with MapWriter.create(path, ny=NY, nx=NX, primary_wavelength_nm=np.linspace(250, 400, N_PX),
                          secondary_wavelength_nm=np.linspace(260, 370, N_PX),
                          x_um=10.0 * np.arange(NX), y_um=10.0 * np.arange(NY),
                          compression="lz4") as writer:
        for iy in (0, 1):
            writer.append_line(make_line(iy))
    return path


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
