"""Element maps (`plumelink lines`): line names, windows and baselines, truth, every map kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from scan_files import simulated_bench_profile, step_scan_text
from test_import_firefly import calibration, firefly_file, shots

from plumelink.app.cli import main
from plumelink.pipeline.element_maps import (
    ElementMapError,
    Resolution,
    element_maps,
    line_areas,
    line_window,
    resolution,
    write_element_maps,
)
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.import_firefly import import_firefly
from plumelink.pipeline.line_catalogue import LineNameError, parse_line
from plumelink.pipeline.scan import parse_scan
from plumelink.pipeline.simulate import simulate_dataset

PRIMARY = (245.0, 407.0)


@pytest.fixture(scope="module")
def small_test_map(tmp_path_factory) -> Path:
    """The small preset's test map (50 x 50 spots) with its ground truth."""
    return simulate_dataset("small", tmp_path_factory.mktemp("small"), seed=0, truth=True)["test"]


# --- names ----------------------------------------------------------------------------------

def test_a_named_line_is_the_table_row_of_that_element_and_ion() -> None:
    line = parse_line("Ca II 393.37")
    assert (line.element, line.ion) == ("Ca", 2)
    assert abs(line.wavelength_nm - 393.37) < 0.01
    assert parse_line("Ca 393.37") == line  # the ion may be left out
    assert parse_line("393.37 nm").element == "Ca"  # a wavelength alone: the table's line


def test_an_element_alone_is_its_strongest_line_on_the_axis() -> None:
    assert parse_line("Ca", PRIMARY).label == "Ca II 393.37"
    on_secondary = parse_line("Ca", (260.0, 370.0))
    assert 260 < on_secondary.wavelength_nm < 370 and on_secondary.element == "Ca"


@pytest.mark.parametrize("name, words", [
    ("Xx 300", "not in the shipped line table"),
    ("Ca II 300", "nearest are Ca II"),
    ("Ca IV 393.37", "bad line"),
    ("", "bad line"),
    ("P", "no line in the table within"),
])
def test_bad_line_names_are_refused_in_words(name: str, words: str) -> None:
    with pytest.raises(LineNameError, match=words):
        parse_line(name, PRIMARY)


# --- windows and baselines ------------------------------------------------------------------

def test_the_area_of_a_line_on_a_sloped_baseline_is_recovered() -> None:
    axis = np.linspace(390.0, 397.0, 700)  # 0.01 nm pixels
    line = parse_line("Ca II 393.37")
    res = Resolution(np.full(axis.shape, 0.05), "test")
    window = line_window(line, axis, res, window_fwhm=4.0)
    sigma = 0.05 / 2.3548
    areas = np.array([100.0, 2500.0])
    peak = np.exp(-0.5 * ((axis - line.wavelength_nm) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    baseline = 1300.0 + 40.0 * (axis - 390.0)
    spectra = baseline + areas[:, None] * peak
    got = line_areas(spectra, [window])[:, 0]
    np.testing.assert_allclose(got, areas, rtol=0.02)  # a baseline error would be ~1300 x 0.2 nm


def test_a_line_outside_the_axis_is_refused_naming_the_system() -> None:
    axis = np.linspace(260.0, 370.0, 3872)
    res = Resolution(np.full(axis.shape, 0.03), "test")
    with pytest.raises(ElementMapError, match="outside the secondary axis"):
        line_window(parse_line("Ca II 393.37"), axis, res, system="secondary")


def test_beryllium_313_names_the_niobium_line_within_its_window() -> None:
    axis = np.linspace(245.0, 407.0, 4062)
    res = resolution({"primary": {"resolution_fwhm_nm": [0.035, 0.046]}}, "primary", axis)
    window = line_window(parse_line("Be II 313.04"), axis, res)
    assert "Nb II 313.08" in [c.line.label for c in window.interferences]
    assert all(c.line.element != "Be" for c in window.interferences)


def test_a_map_without_a_recorded_resolution_says_what_it_assumed() -> None:
    axis = np.linspace(245.0, 407.0, 1001)
    res = resolution({}, "primary", axis)
    assert "assumed 3 pixels" in res.source
    np.testing.assert_allclose(res.fwhm_nm, 3 * 0.162, rtol=1e-6)


# --- maps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["Na", "Mg", "Al", "Ca", "Mn", "Fe", "Nb"])
def test_element_maps_track_the_true_concentration(small_test_map: Path, line: str) -> None:
    result = element_maps(small_test_map, [line], truth=True)
    assert result.maps[0].truth_spearman >= 0.5, result.maps[0].name


def test_silicon_tracks_its_concentration_once_normalised_to_the_total_emission(
        small_test_map: Path) -> None:
    raw = element_maps(small_test_map, ["Si I 251.61"], truth=True).maps[0]
    total = element_maps(small_test_map, ["Si I 251.61"], truth=True, normalise="total").maps[0]
    assert total.truth_spearman >= 0.7 > raw.truth_spearman


def test_ratio_map_is_the_quotient_of_its_line_maps(maps: dict[str, Path]) -> None:
    result = element_maps(maps["test"], ["Ca II 393.37", "Si I 288.16"],
                          ["Ca II 393.37/Si I 288.16"])
    ca, si, ratio = (m.values for m in result.maps)
    ok = si > 0
    np.testing.assert_allclose(ratio[ok], ca[ok] / si[ok], rtol=1e-5)
    assert np.isnan(ratio[~ok]).all()


def test_invalid_spots_are_nan_and_the_file_is_nxdata_for_silx(maps, tmp_path: Path) -> None:
    from silx.io.nxdata import NXdata

    holey = tmp_path / "holey.h5"
    shutil.copy(maps["test"], holey)
    with h5py.File(holey, "r+") as f:
        f["map/primary/valid"][2, 3] = False
    out = tmp_path / "lines.h5"
    assert main(["lines", str(holey), "--line", "Be II 313.04", "--line", "Al",
                 "--ratio", "Al/Be II 313.04", "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        entry = f["lines"]
        assert set(entry) == {"Be_II_313.04", "Al_I_309.27", "Al_I_309.27_over_Be_II_313.04"}
        be = entry["Be_II_313.04"]
        nx = NXdata(be)
        assert nx.is_valid and nx.signal.shape == (8, 16)
        assert [a.name.rsplit("/", 1)[1] for a in nx.axes] == ["y", "x"]
        assert be["x"].attrs["units"] == "um"
        assert be.attrs["element"] == "Be" and be.attrs["ion"] == "II"
        assert "Nb II 313.08" in list(be.attrs["interferences"].astype(str))
        assert be.attrs["window_nm"][0] < 313.04 < be.attrs["window_nm"][1]
        values = be["intensity"][()]
        assert np.isnan(values[2, 3]) and np.isfinite(np.delete(values.ravel(), 2 * 16 + 3)).all()


def test_an_existing_output_is_kept_unless_overwrite(maps, tmp_path: Path) -> None:
    out = tmp_path / "lines.h5"
    out.write_bytes(b"keep me")
    result = element_maps(maps["test"], ["Ca"])
    with pytest.raises(FileExistsError):
        write_element_maps(result, out)
    assert out.read_bytes() == b"keep me"
    assert main(["lines", str(maps["test"]), "--line", "Xx 1", "--out", str(out),
                 "--overwrite"]) == 2
    assert out.read_bytes() == b"keep me"  # a refused line writes nothing


def test_lines_on_an_acquired_map(tmp_path: Path) -> None:
    bench = simulated_bench_profile(tmp_path, 200.0)
    out = tmp_path / "acquired.h5"
    acquire(parse_scan(step_scan_text(bench, out, ny=2, nx=3), source="scan.toml"))
    result = element_maps(out, ["Al", "Si I 288.16"], system="secondary")
    assert result.maps[0].values.shape == (2, 3)
    assert np.isfinite(result.maps[0].values).all()
    assert "instrument snapshot" in result.resolution.source


def test_lines_on_a_transferred_map(tiny_model, tmp_path: Path) -> None:
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package
    from plumelink.pipeline.transfer import transfer_map

    maps, model = tiny_model
    out = transfer_map(maps["test"], tmp_path / "t.h5", PackageTransfer(load_package(model)))
    transferred = element_maps(out, ["Ca II 393.37"], system="transferred").maps[0].values
    assert transferred.shape == (8, 16) and np.isfinite(transferred).all()
    with pytest.raises(ElementMapError, match="not a transferred map"):
        element_maps(maps["test"], ["Ca"], system="transferred")


def test_lines_on_an_imported_firefly_map_follow_the_line(tmp_path: Path) -> None:
    data = shots()
    axis = calibration()
    ca = parse_line("Ca II 393.37").wavelength_nm
    amplitude = np.linspace(100.0, 5000.0, data["data"].shape[0])
    peak = np.exp(-0.5 * ((axis - ca) / 2.0) ** 2)  # ~2 nm pixels: a line a few pixels wide
    data["data"] = (500 + amplitude[:, None] * peak).astype(np.uint16)
    data["Invalid"][:] = False
    source = firefly_file(tmp_path / "ff.h5", {"m": data})
    imported = import_firefly(source, tmp_path / "imported.h5")
    result = element_maps(imported, ["Ca II 393.37"])
    assert "assumed 3 pixels" in result.resolution.source
    values = result.maps[0].values.ravel()
    order = np.argsort(values)
    assert np.corrcoef(np.sort(amplitude), values[order])[0, 1] > 0.999


def test_ion_lines_gain_on_atom_lines_as_the_plasma_heats() -> None:
    from plumelink.pipeline.line_catalogue import sticks

    ion = parse_line("Ca II 393.37").wavelength_nm
    atom = parse_line("Ca I", PRIMARY).wavelength_nm
    ratios = []
    for t in (8_000.0, 14_000.0):
        wl, rel = sticks("Ca", PRIMARY, t)
        assert rel.max() == 1.0
        ratios.append(rel[np.argmin(np.abs(wl - ion))] / rel[np.argmin(np.abs(wl - atom))])
    assert ratios[1] > 3 * ratios[0]  # Saha: the ion stage fills as the plasma heats
