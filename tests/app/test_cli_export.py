"""`plumelink export`, run as a user would run it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from _small_map import N_PX, NX, NY, PRIMARY_NM, make_line, small_map

from plumelink.app.cli import main


def test_export_hspy_command_writes_next_to_the_map(tmp_path: Path) -> None:
    source = small_map(tmp_path / "scan.h5")
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "export", str(source), "--format", "hspy"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "scan_primary.hspy"
    assert str(out) in result.stdout
    from rsciio.hspy import file_reader

    (signal,) = file_reader(str(out))
    assert signal["data"].shape == (NY, NX, N_PX)
    wavelength = next(a for a in signal["axes"] if not a["navigate"])
    np.testing.assert_allclose(wavelength["axis"], PRIMARY_NM)
    assert [a["name"] for a in signal["axes"] if a["navigate"]] == ["y", "x"]


def test_export_csv_spots_and_line_map(tmp_path: Path, capsys) -> None:
    source = small_map(tmp_path / "scan.h5")
    spots = tmp_path / "spots.csv"
    assert main(["export", str(source), "--format", "csv", "--spot", "1,4", "--spot", "0,0",
                 "--out", str(spots)]) == 0
    with spots.open(encoding="utf-8") as stream:
        table = list(csv.reader(stream))
    assert len(table) == 1 + N_PX and len(table[0]) == 3
    np.testing.assert_array_equal([int(r[1]) for r in table[1:]],
                                  make_line(1).primary.spectra[4])
    assert main(["export", str(source), "--format", "csv", "--line", f"{PRIMARY_NM[8]}",
                 "--width", "30", "--system", "secondary"]) == 0
    assert "intensity map" in capsys.readouterr().out
    assert list(tmp_path.glob("scan_secondary_*nm.csv"))


def test_export_errors_are_reported(tmp_path: Path, capsys) -> None:
    source = small_map(tmp_path / "scan.h5")
    assert main(["export", str(source), "--format", "csv"]) == 2
    assert "--spot" in capsys.readouterr().err
    assert main(["export", str(source), "--format", "csv", "--spot", "2,0"]) == 2
    assert "not written" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.h5"), "--format", "hspy"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(source), "--format", "csv", "--line", "900"]) == 2
    assert "pixel" in capsys.readouterr().err
