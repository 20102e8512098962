"""Line identification: peaks of a spectrum with their candidate table lines, peak tables of a
spot or a map's mean spectrum, and their CSV."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from plumelink.app.cli import main
from plumelink.pipeline.element_maps import Resolution
from plumelink.pipeline.line_catalogue import parse_line
from plumelink.pipeline.peaks import CSV_HEADER, find_spectrum_peaks, peak_table, write_peak_csv


def synthetic(lines: dict[str, float], noise: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """390-400 nm at 0.01 nm/pixel: a sloped baseline, Gaussian lines of the given areas."""
    axis = np.linspace(390.0, 400.0, 1001)
    sigma = 0.05 / 2.3548
    y = 1000.0 + 5.0 * (axis - 390.0)
    for name, area in lines.items():
        w0 = parse_line(name).wavelength_nm
        y = y + area * np.exp(-0.5 * ((axis - w0) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return axis, y + np.random.default_rng(0).normal(0.0, noise, axis.size)


def test_peaks_are_found_where_the_lines_are_and_named_after_them() -> None:
    axis, y = synthetic({"Ca II 393.37": 400.0, "Al I 396.15": 150.0})
    res = Resolution(np.full(axis.shape, 0.05), "test")
    peaks = find_spectrum_peaks(axis, y, res, elements=("Ca", "Al", "Si", "Fe", "K"))
    assert len(peaks) == 2
    ca, al = peaks  # strongest first
    assert abs(ca.wavelength_nm - 393.366) < 0.011 and ca.candidates[0].line.label == "Ca II 393.37"
    assert al.candidates[0].line.label == "Al I 396.15"
    np.testing.assert_allclose([ca.area, al.area], [400.0, 150.0], rtol=0.05)
    sigma = 0.05 / 2.3548  # the Gaussian's peak above the 1000-count baseline:
    np.testing.assert_allclose(ca.height, 400.0 / (sigma * np.sqrt(2 * np.pi)), rtol=0.05)


def test_a_flat_noisy_spectrum_has_no_peaks() -> None:
    axis, y = synthetic({})
    assert find_spectrum_peaks(axis, y, Resolution(np.full(axis.shape, 0.05), "t")) == []


def test_nan_and_wrong_shapes_are_refused() -> None:
    axis, y = synthetic({})
    res = Resolution(np.full(axis.shape, 0.05), "t")
    y[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_spectrum_peaks(axis, y, res)
    with pytest.raises(ValueError, match="pixels"):
        find_spectrum_peaks(axis, y[:-1], res)


def test_mean_spectrum_of_a_simulated_map_shows_its_major_lines(maps) -> None:
    table = peak_table(maps["test"], "primary")
    assert table.what.startswith("mean of 128")
    named = [p.candidates[0].line.label for p in table.peaks[:10] if p.candidates]
    assert "Si I 288.16" in named and "Al I 309.27" in named


def test_peak_table_csv_round_trips_and_refuses_to_overwrite(maps, tmp_path: Path) -> None:
    table = peak_table(maps["test"], "secondary", (2, 5))
    out = write_peak_csv(table, tmp_path / "peaks.csv")
    with out.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert "spot (iy=2, ix=5)" in rows[0][0] and tuple(rows[1]) == CSV_HEADER
    assert len(rows) - 2 == len(table.peaks) > 0
    np.testing.assert_allclose([float(r[0]) for r in rows[2:]],
                               [p.wavelength_nm for p in table.peaks], atol=1e-4)
    with pytest.raises(FileExistsError):
        write_peak_csv(table, out)


def test_peaks_command_refuses_an_invalid_spot(maps, tmp_path: Path, capsys) -> None:
    holey = tmp_path / "holey.h5"
    shutil.copy(maps["test"], holey)
    with h5py.File(holey, "r+") as f:
        f["map/primary/valid"][1, 1] = False
    assert main(["peaks", str(holey), "--spot", "1,1"]) == 2
    assert "invalid" in capsys.readouterr().err
    assert main(["peaks", str(holey), "--spot", "99,1"]) == 2
    assert "outside" in capsys.readouterr().err
    csv_out = tmp_path / "p.csv"
    assert main(["peaks", str(holey), "--spot", "0,0", "--csv", str(csv_out)]) == 0
    assert csv_out.stat().st_size > 100
