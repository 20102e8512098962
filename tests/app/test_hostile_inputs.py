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


# ---------------------------------------------------------------- every command, every kind
def _missing(path: Path) -> Path:
    return path  # never created


KINDS = {"text": _text, "empty": _empty, "foreign_hdf5": _foreign, "binary": _binary,
         "missing": _missing}


def _npy_dir(tmp: Path, bad: Path) -> Path:
    """A folder of the paper's .npy names, each holding the hostile content."""
    folder = tmp / "npy"
    folder.mkdir()
    for system in ("s1", "s2"):
        for part in ("train", "val", "test"):
            target = folder / f"{system}_{part}.npy"
            if bad.exists():
                target.write_bytes(bad.read_bytes())
    for name in ("wavelengths_s1.npy", "wavelengths_s2.npy"):
        if bad.exists():
            (folder / name).write_bytes(bad.read_bytes())
    return folder


def _model_dir(tmp: Path, bad: Path) -> Path:
    """A model folder whose manifest is the hostile content, and a good map t.h5 beside it
    (so that the model is what is refused)."""
    from _small_map import small_map

    small_map(tmp / "t.h5")
    folder = tmp / "model"
    folder.mkdir()
    if bad.exists():
        (folder / "manifest.json").write_bytes(bad.read_bytes())
    return folder


def _scan_for(tmp: Path) -> Path:
    from scan_files import simulated_bench_profile, step_scan_text

    scan = tmp / "good.toml"
    scan.write_text(step_scan_text(simulated_bench_profile(tmp), tmp / "unused.h5", ny=2, nx=2))
    return scan


# command -> (argv from (bad file, tmp folder), the file the message must name, outputs)
COMMANDS = {
    "acquire-scan": lambda bad, tmp: (["acquire", str(bad), "--dry-run"], bad, []),
    "acquire-resume": lambda bad, tmp: (["acquire", str(_scan_for(tmp)), "--out", str(bad),
                                         "--resume", "-q"], bad, []),
    "simulate": lambda bad, tmp: (["simulate", "--out", str(tmp / "sim"), "--secondary",
                                   str(bad), "-q"], bad, [tmp / "sim" / "train.h5"]),
    "import-npy": lambda bad, tmp: (["import-npy", str(_npy_dir(tmp, bad)), "--out",
                                     str(tmp / "imp"), "-q"], tmp / "npy",
                                    [tmp / "imp" / "train.h5"]),
    "train": lambda bad, tmp: (["train", "--train", str(bad), "--val", str(bad), "--out",
                                str(tmp / "m"), "-q"], bad, [tmp / "m" / "manifest.json"]),
    "evaluate-model": lambda bad, tmp: (["evaluate", "--model", str(_model_dir(tmp, bad)),
                                         "--test", str(tmp / "t.h5"), "--report",
                                         str(tmp / "r")], tmp / "model", [tmp / "r"]),
    "transfer-model": lambda bad, tmp: (["transfer", "--model", str(_model_dir(tmp, bad)),
                                         "--input", str(tmp / "t.h5"), "--out",
                                         str(tmp / "o.h5")], tmp / "model", [tmp / "o.h5"]),
    "join-model": lambda bad, tmp: (["join", "--model", str(_model_dir(tmp, bad)), "--system",
                                     "x", "--train", str(tmp / "t.h5"), "--val",
                                     str(tmp / "t.h5")], tmp / "model", []),
    "tune": lambda bad, tmp: (["tune", "--train", str(bad), "--val", str(bad), "--trials",
                               "1", "--epochs", "1", "--threads", "1", "--out",
                               str(tmp / "best.json")], bad, [tmp / "best.json"]),
    "repack": lambda bad, tmp: (["repack", str(bad), str(tmp / "re.h5"), "-q"], bad,
                                [tmp / "re.h5"]),
    "export": lambda bad, tmp: (["export", str(bad), "--format", "csv", "--spot", "0,0",
                                 "--out", str(tmp / "e.csv")], bad, [tmp / "e.csv"]),
    "import-firefly": lambda bad, tmp: (["import-firefly", str(bad), "--out",
                                         str(tmp / "ff.h5"), "-q"], bad, [tmp / "ff.h5"]),
    "bench-check": lambda bad, tmp: (["bench", "check", str(bad)], bad, []),
}


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_hostile_input_in_one_line(tmp_path: Path, capsys,
                                                         command: str, kind: str) -> None:
    bad = KINDS[kind](tmp_path / "bad.h5")
    argv, named, outputs = COMMANDS[command](bad, tmp_path)
    before = _snapshot(named)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusal (a usage line and the error)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("usage:")]
    assert len(lines) == 1, err
    assert named.name in lines[0], err
    assert _snapshot(named) == before, "the refused input was changed"
    for out in outputs:
        assert not out.exists(), f"{out} written although the input was refused"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("command", ["evaluate", "transfer", "join"])
def test_model_commands_refuse_a_hostile_map_in_one_line(tiny_model, tmp_path: Path, capsys,
                                                         command: str, kind: str) -> None:
    _, model = tiny_model
    bad = KINDS[kind](tmp_path / "bad.h5")
    argv = {"evaluate": ["evaluate", "--model", str(model), "--test", str(bad), "--report",
                         str(tmp_path / "r")],
            "transfer": ["transfer", "--model", str(model), "--input", str(bad), "--out",
                         str(tmp_path / "o.h5"), "-q"],  # its bar is drawn before the check
            "join": ["join", "--model", str(model), "--system", "x", "--train", str(bad),
                     "--val", str(bad), "--epochs", "1", "-q"]}[command]
    before, package = _snapshot(bad), _snapshot(model)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "bad.h5" in err, err
    assert _snapshot(bad) == before and _snapshot(model) == package
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.h5").exists()
