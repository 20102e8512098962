"""A model package whose weight file is truncated, garbled or replaced by a pickle (its sha256
updated in the manifest so that the checksum passes), given to the commands that load
packages: exit status 2, one line naming the file and the problem, no traceback, nothing
unpickled, nothing written, the package unchanged."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from weight_damage import DAMAGES, PICKLES, damage, unpickling_would_run

from plumelink.app.cli import main


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _commands(model: Path, maps: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "evaluate": ["evaluate", "--model", str(model), "--test", str(maps["test"]),
                     "--report", str(out / "report")],
        "transfer": ["transfer", "--model", str(model), "--input", str(maps["test"]),
                     "--out", str(out / "t.h5")],
        "join": ["join", "--model", str(model), "--system", "newcomer", "--train",
                 str(maps["train"]), "--val", str(maps["val"]), "--epochs", "1", "-q"],
    }


CASES = [("vae.safetensors", how) for how in sorted(DAMAGES)] + [
    ("latent_mlp-secondary.safetensors", how) for how in ("truncated", "garbled_data", "pickle")]


@pytest.mark.parametrize("command", ["evaluate", "transfer", "join"])
@pytest.mark.parametrize(("name", "how"), CASES)
def test_damaged_weights_end_in_one_line_and_exit_2(tiny_model, tmp_path: Path, capsys,
                                                   how: str, command: str, name: str) -> None:
    maps, trained = tiny_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    marker = tmp_path / "unpickled"
    words = damage(model, name, how, marker)
    before = _digest(model)
    rc = main(_commands(model, maps, tmp_path)[command])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(model / name) in err and words in err, err
    assert not marker.exists(), "a pickle put in the package was executed"
    assert _digest(model) == before
    assert not (tmp_path / "report").exists() and not (tmp_path / "t.h5").exists()


def test_a_baseline_file_replaced_by_a_pickle_is_refused(tiny_model, tmp_path: Path,
                                                         capsys) -> None:
    maps, trained = tiny_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    baselines = sorted(p.name for p in model.glob("baseline-*.safetensors"))
    assert baselines, "the tiny model has no baseline to damage"
    marker = tmp_path / "unpickled"
    for name in baselines:
        damage(model, name, "pickle", marker)
    rc = main(_commands(model, maps, tmp_path)["evaluate"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "Python pickle" in err, err
    assert any(str(model / name) in err for name in baselines), err
    assert not marker.exists()


def test_the_installed_command_refuses_a_pickle_too(tiny_model, tmp_path: Path) -> None:
    """The console script, in a process of its own: one line on stderr, exit 2."""
    unpickling_would_run(tmp_path / "check")  # the payload is live
    maps, trained = tiny_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    marker = tmp_path / "unpickled"
    damage(model, "vae.safetensors", PICKLES[-1], marker)
    exe = Path(sys.executable).with_name("plumelink")
    proc = subprocess.run([str(exe), *_commands(model, maps, tmp_path)["transfer"]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "vae.safetensors" in line]
    assert len(proc.stderr.strip().splitlines()) == 1 and "zip archive" in proc.stderr
    assert not marker.exists()
