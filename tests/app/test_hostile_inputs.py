"""Hostile input on the command line: every case ends with exit status 2 and one line that
names the file and the problem, never a traceback, and leaves its input unchanged."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from plumelink.app.cli import main


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(128, 256)) * 3)
    return path


def _text(path: Path) -> Path:
    path.write_text("spectra, but as text\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _foreign(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["data"] = [1, 2, 3]
    return path


@pytest.mark.parametrize("make", [_binary, _text, _empty, _foreign])
def test_train_refuses_a_file_that_is_not_a_map(tmp_path: Path, capsys, make) -> None:
    bad = make(tmp_path / "bad.h5")
    before = bad.read_bytes()
    rc = main(["train", "--train", str(bad), "--val", str(bad), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.h5" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert bad.read_bytes() == before
    assert not (tmp_path / "m" / "manifest.json").exists()


@pytest.mark.parametrize("make", [_binary, _foreign])
def test_transfer_and_evaluate_refuse_a_model_that_is_not_a_package(tmp_path: Path, capsys,
                                                                     make) -> None:
    model = tmp_path / "model"
    model.mkdir()
    make(model / "manifest.json")
    for argv in (["evaluate", "--model", str(model), "--test", str(model / "x.h5"),
                  "--report", str(tmp_path / "r")],
                 ["transfer", "--model", str(model), "--input", str(model / "x.h5"),
                  "--out", str(tmp_path / "t.h5")]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert "Traceback" not in err and str(model) in err, err


def test_acquire_refuses_a_binary_scan_file(tmp_path: Path, capsys) -> None:
    scan = _binary(tmp_path / "scan.toml")
    rc = main(["acquire", str(scan), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "scan.toml" in err and "not UTF-8 text" in err and "Traceback" not in err


def test_acquire_resume_into_an_empty_file_leaves_it_empty(tmp_path: Path, capsys) -> None:
    from scan_files import simulated_bench_profile, step_scan_text

    out = _empty(tmp_path / "empty.h5")
    scan = tmp_path / "scan.toml"
    scan.write_text(step_scan_text(simulated_bench_profile(tmp_path), out, ny=2, nx=2))
    rc = main(["acquire", str(scan), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "empty.h5" in err and "not an HDF5 file" in err and "Traceback" not in err
    assert out.read_bytes() == b""
