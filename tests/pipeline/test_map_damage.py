"""Damaged and foreign map files: refused with the file's name and the problem, and never
changed by the refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from _maps import SPEC, create_map, make_line

from plumelink.pipeline.map_layout import CorruptMapError, ForeignFileError, MapShapeError
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster_line import RasterLine


def _line(iy: int, dtype: str) -> RasterLine:
    line = make_line(iy)
    if dtype == "uint16":
        return line
    as_float = {s: replace(getattr(line, s), spectra=getattr(line, s).spectra.astype(dtype))
                for s in ("primary", "secondary")}
    return replace(line, **as_float)


def _complete_map(path: Path, dtype: str = "uint16") -> Path:
    with create_map(path, spectra_dtype=dtype) as writer:
        for iy in range(SPEC.ny):
            writer.append_line(_line(iy, dtype))
    return path


def test_resuming_an_empty_file_leaves_it_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(CorruptMapError, match=r"empty\.h5.*not an HDF5 file.*nothing was"):
        MapWriter.resume(empty)
    assert empty.read_bytes() == b""


def test_resuming_a_foreign_hdf5_file_leaves_it_unchanged(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(5)
    before = foreign.read_bytes()
    with pytest.raises(ForeignFileError, match=r"foreign\.h5.*not a plumelink map"):
        MapWriter.resume(foreign)
    assert foreign.read_bytes() == before


@pytest.mark.parametrize("reading", ["line", "blocks"])
def test_a_nan_spectrum_flagged_valid_is_refused_by_name(tmp_path: Path, reading: str) -> None:
    path = _complete_map(tmp_path / "float.h5", dtype="float32")
    with MapReader(path) as m:
        iy = 2
        ix = int(np.flatnonzero(m.read_line(iy).secondary.valid)[0])
    with h5py.File(path, "r+") as f:
        f["map/secondary/spectra"][iy, ix, 7] = np.nan
    with MapReader(path) as m:
        with pytest.raises(CorruptMapError,
                           match=rf"float\.h5.*secondary spectrum of spot \(line {iy}, "
                                 rf"column {ix}\) is flagged valid but holds NaN"):
            if reading == "line":
                m.read_line(iy)
            else:
                list(m.iter_blocks("secondary"))
        m.read_line(0)  # the other lines stay readable
        assert np.isfinite(m.read_line(0).primary.spectra).all()


def test_a_nan_spectrum_flagged_invalid_is_fine(tmp_path: Path) -> None:
    path = _complete_map(tmp_path / "float.h5", dtype="float32")
    with MapReader(path) as m:
        ix = int(np.flatnonzero(~m.read_line(1).primary.valid)[0])
    with h5py.File(path, "r+") as f:
        f["map/primary/spectra"][1, ix, 0] = np.inf
    with MapReader(path) as m:
        assert not m.read_line(1).primary.valid[ix]


def test_systems_of_different_raster_shapes_are_refused_when_opened(tmp_path: Path) -> None:
    path = _complete_map(tmp_path / "shapes.h5")
    with h5py.File(path, "r+") as f:
        valid = f["map/secondary/valid"][()]
        del f["map/secondary/valid"]
        f["map/secondary/valid"] = np.ones((SPEC.ny, SPEC.nx + 3), bool)
        assert valid.shape == (SPEC.ny, SPEC.nx)
    with pytest.raises(MapShapeError,
                       match=rf"shapes\.h5.*{SPEC.ny} x {SPEC.nx} raster.*secondary/valid"):
        MapReader(path)
