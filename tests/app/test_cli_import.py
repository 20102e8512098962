"""`plumelink import-npy`, run as a user would run it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plumelink.app.cli import main, parse_dims
from plumelink.pipeline.map_reader import MapReader

DIMS = {"train": (2, 3), "val": (1, 4), "test": (3, 2)}


def _npy_set(directory: Path) -> Path:
    directory.mkdir()
    np.save(directory / "s1_wavelengths.npy", np.linspace(250.0, 400.0, 40))
    np.save(directory / "s2_wavelengths.npy", np.linspace(380.0, 395.0, 33))
    for split, (ny, nx) in DIMS.items():
        for system, n_px in ((1, 40), (2, 33)):
            rows = np.arange(ny * nx)[:, None] * 10 + np.arange(n_px) + 100 * system
            np.save(directory / f"s{system}_{split}.npy", rows.astype(np.uint16))
    return directory


def test_import_npy_command_writes_maps_and_says_where(tmp_path: Path) -> None:
    source, out = _npy_set(tmp_path / "npy"), tmp_path / "maps"
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "import-npy", str(source), "--out", str(out),
         "--dims", "train=2x3,val=1x4,test=3x2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    for name, (ny, nx) in DIMS.items():
        assert f"{name}: {out / f'{name}.h5'}" in result.stdout
        with MapReader(out / f"{name}.h5") as reader:
            assert reader.shape == (ny, nx)
            assert reader.status == "complete"
    with MapReader(out / "test.h5") as reader:  # row 1 is reversed: column 0 is snake row 3
        assert reader.read_line(1).primary.spectra[0, 0] == 3 * 10 + 100
    assert "import-npy" in result.stderr  # the progress bar


def test_default_dims_are_the_papers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = _npy_set(tmp_path / "npy")
    code = main(["import-npy", str(source), "--out", str(tmp_path / "maps"), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "plumelink import-npy: error:" in err
    assert "has 6 rows (spots) but dims train=560x560 need 313600" in err


def test_dims_given_by_name_replace_only_those(tmp_path: Path, capsys) -> None:
    source = _npy_set(tmp_path / "npy")
    code = main(["import-npy", str(source), "--out", str(tmp_path / "m"), "-q",
                 "--dims", "train=2x3"])
    assert code == 2
    assert "dims val=266x500 need 133000" in capsys.readouterr().err


def test_parse_dims() -> None:
    assert parse_dims("train=560x560,val=266x500,test=500x500") == {
        "train": (560, 560), "val": (266, 500), "test": (500, 500),
    }
    assert parse_dims(" val = 3X4 ") == {"val": (3, 4)}
    for bad in ("train=560", "train560x560", "=3x4", "train=3x-4", "train=0x4",
                "a=1x1,a=2x2", "train=axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_dims(bad)


def test_bad_dims_are_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["import-npy", "d", "--out", "x", "--dims", "train=560"])
    assert exc.value.code == 2
    assert "expected NAME=NYxNX" in capsys.readouterr().err


def test_missing_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(["import-npy", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), "-q"])
    assert code == 2
    assert "is not a folder of the paper's .npy files" in capsys.readouterr().err
