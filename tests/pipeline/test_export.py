"""Maps as calibrated hyperspectral cubes: the NXdata per system (silx), the HyperSpy export
(loaded back with hs.load) and the CSV exports."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from _maps import MapSpec, create_map, make_line

from plumelink.pipeline.export import (
    export_hspy,
    export_line_map_csv,
    export_spots_csv,
    line_intensity,
)

ROWS = [0, 1, 3]
# a spectrograph's axis: a polynomial in pixel number, not evenly spaced
CURVED = MapSpec(ny=4, nx=7, n_primary=64, n_secondary=40)


def _curved(n_px: int, start: float) -> np.ndarray:
    px = np.arange(n_px)
    return start + 0.08 * px + 2e-4 * px**2


def write_map(path: Path, spec: MapSpec = CURVED) -> None:
    with create_map(path, spec, primary_wavelength_nm=_curved(spec.n_primary, 250.0),
                    secondary_wavelength_nm=_curved(spec.n_secondary, 300.0)) as writer:
        for iy in ROWS:
            writer.append_line(make_line(iy, spec))


@pytest.fixture
def map_path(tmp_path: Path) -> Path:
    path = tmp_path / "map.h5"
    write_map(path)
    return path


def test_silx_reads_each_system_as_a_calibrated_cube(map_path: Path) -> None:
    import silx.io
    from silx.io.nxdata import NXdata, get_default

    with silx.io.open(str(map_path)) as f:
        assert get_default(f).signal.name == "/map/emissivity/primary"  # still the default plot
        for system, n_px in (("primary", CURVED.n_primary), ("secondary", CURVED.n_secondary)):
            cube = NXdata(f[f"map/{system}_spectra"])
            assert cube.is_valid, cube.issues
            assert cube.signal.shape == (CURVED.ny, CURVED.nx, n_px)
            assert cube.interpretation == "spectrum"
            assert cube.axes_dataset_names == ["y", "x", "wavelength"]
            np.testing.assert_array_equal(cube.axes[0], CURVED.y_um)
            np.testing.assert_array_equal(cube.axes[1], CURVED.x_um)
            np.testing.assert_array_equal(cube.axes[2], _curved(n_px, 250.0 if
                                                                system == "primary" else 300.0))
            np.testing.assert_array_equal(cube.signal[ROWS[1]],
                                          getattr(make_line(ROWS[1], CURVED), system).spectra)
    with h5py.File(map_path, "r") as f:  # links, not copies
        assert f["map/primary_spectra/spectra"].id == f["map/primary/spectra"].id
        assert f["map/secondary_spectra/wavelength"].id == f["map/secondary/wavelength"].id
        assert f["map/primary_spectra/x"].id == f["map/raster/x"].id


def test_hspy_export_loads_as_signal1d_with_calibrated_axes(map_path: Path,
                                                           tmp_path: Path) -> None:
    import hyperspy.api as hs

    out = export_hspy(map_path, tmp_path / "cube.hspy", "secondary")
    signal = hs.load(out)
    assert type(signal).__name__ == "Signal1D"
    assert signal.data.shape == (CURVED.ny, CURVED.nx, CURVED.n_secondary)
    x, y = signal.axes_manager.navigation_axes  # HyperSpy lists navigation axes fastest first
    assert (x.name, x.units, x.size, y.name, y.units, y.size) == (
        "x", "µm", CURVED.nx, "y", "µm", CURVED.ny)
    np.testing.assert_allclose(x.axis, CURVED.x_um)
    np.testing.assert_allclose(y.axis, CURVED.y_um)
    wavelength = signal.axes_manager.signal_axes[0]
    assert (wavelength.units, wavelength.is_uniform) == ("nm", False)
    np.testing.assert_allclose(wavelength.axis, _curved(CURVED.n_secondary, 300.0))
    line = make_line(3, CURVED)
    np.testing.assert_array_equal(signal.inav[:, 3].data, line.secondary.spectra)
    np.testing.assert_array_equal(signal.original_metadata.plumelink.valid[3],
                                  line.secondary.valid)
    assert signal.original_metadata.instrument.laser.model == "Quantel Q-smart"
    with pytest.raises(FileExistsError):
        export_hspy(map_path, out, "secondary")
    with pytest.raises(ValueError, match=r"\.hspy"):
        export_hspy(map_path, tmp_path / "cube.h5")


def test_spots_csv_holds_the_chosen_spectra(map_path: Path, tmp_path: Path) -> None:
    out = export_spots_csv(map_path, tmp_path / "spots.csv", [(1, 2), (3, 6)])
    with out.open(encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert rows[0][0] == "wavelength_nm" and rows[0][1].startswith("iy=1 ix=2 (x=150 um")
    table = np.array(rows[1:], dtype=float)
    np.testing.assert_allclose(table[:, 0], _curved(CURVED.n_primary, 250.0), rtol=1e-6)
    np.testing.assert_array_equal(table[:, 1], make_line(1, CURVED).primary.spectra[2])
    np.testing.assert_array_equal(table[:, 2], make_line(3, CURVED).primary.spectra[6])
    with pytest.raises(ValueError, match="outside"):
        export_spots_csv(map_path, tmp_path / "bad.csv", [(9, 0)])
    with pytest.raises(ValueError, match="not written"):
        export_spots_csv(map_path, tmp_path / "bad.csv", [(2, 0)])


def test_line_intensity_is_the_area_above_a_straight_baseline() -> None:
    wavelength = np.linspace(390.0, 400.0, 101)  # 0.1 nm per pixel
    baseline = 100 + 5 * (wavelength - 390)
    peak = np.where(np.isclose(wavelength, 396.1), 700.0, 0.0)
    peak += np.where(np.isclose(wavelength, 396.0) | np.isclose(wavelength, 396.2), 300.0, 0)
    spectra = np.stack([baseline + peak, baseline])
    np.testing.assert_allclose(line_intensity(spectra, wavelength, 396.1, 0.6), [1300.0, 0.0],
                               atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        line_intensity(spectra, wavelength, 420.0, 0.6)


def test_line_map_csv_is_a_grid_with_empty_cells_where_nothing_is_valid(
    map_path: Path, tmp_path: Path
) -> None:
    wavelength = _curved(CURVED.n_primary, 250.0)
    out = export_line_map_csv(map_path, tmp_path / "line.csv", float(wavelength[30]), 0.5)
    with out.open(encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    np.testing.assert_allclose(np.array(rows[0][1:], dtype=float), CURVED.x_um)
    np.testing.assert_allclose([float(r[0]) for r in rows[1:]], CURVED.y_um)
    for iy in range(CURVED.ny):
        cells = rows[1 + iy][1:]
        if iy not in ROWS:
            assert cells == [""] * CURVED.nx
            continue
        line = make_line(iy, CURVED).primary
        expected = line_intensity(line.spectra.astype(np.float32), wavelength,
                                  float(wavelength[30]), 0.5)
        for ix, cell in enumerate(cells):
            if line.valid[ix]:
                assert float(cell) == pytest.approx(expected[ix], rel=1e-5)
            else:
                assert cell == ""



def test_repack_gives_an_older_map_its_cubes(map_path: Path, tmp_path: Path) -> None:
    from plumelink.pipeline.repack import repack

    with h5py.File(map_path, "r+") as f:  # as written before the cubes existed
        del f["map/primary_spectra"], f["map/secondary_spectra"]
    out = repack(map_path, tmp_path / "new.h5")
    with h5py.File(out, "r") as f:
        cube = f["map/primary_spectra"]
        assert cube.attrs["signal"] == "spectra"
        assert cube["spectra"].id == f["map/primary/spectra"].id
        assert list(cube.attrs["axes"]) == ["y", "x", "wavelength"]
