"""bench_keras: its arithmetic, its command line and its skip message run by default; the
measurements themselves (torch workers, and Keras, which installs TensorFlow) are opt-in
(pytest -m benchmark, and -m slow for Keras)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_keras

from plumelink.models.dense import ENV_SWITCH


def test_defaults_and_busy_core_mode() -> None:
    args = bench_keras.parse_args([])
    assert args.conditions == ["idle", "busy-core"] and args.batch == 128
    assert args.venv == bench_keras.DEFAULT_VENV["cpu"] and args.threads is None
    assert bench_keras.parse_args(["--busy-core"]).conditions == ["busy-core"]
    cuda = bench_keras.parse_args(["--device", "cuda"])
    assert cuda.venv == bench_keras.DEFAULT_VENV["cuda"] != args.venv
    assert "and-cuda" in bench_keras.REQUIREMENT["cuda"]
    assert bench_keras.REQUIREMENT["cpu"] == "tensorflow-cpu==2.21.0"
    assert ENV_SWITCH == bench_keras.ENV_SWITCH  # restated so the driver needs no torch


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--threads", "0"], ["--warmup", "-1"],
                                 ["--conditions", "busy"]])
def test_bad_arguments_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench_keras.parse_args(bad)


def test_both_sides_run_the_same_steps_and_kl_schedule() -> None:
    args = bench_keras.parse_args(["--rounds", "2", "--steps", "7", "--warmup", "1",
                                   "--threads", "3"])
    torch_cmd = bench_keras.torch_command(args)
    keras_cmd = bench_keras.keras_command(Path("/venv/bin/python"), args, xla=True)
    for cmd in (torch_cmd, keras_cmd):
        opts = dict(zip(cmd[2::2], cmd[3::2], strict=False))
        assert (opts["--steps"], opts["--warmup"], opts["--batch"]) == ("7", "1", "128")
        assert opts["--total-steps"] == str(3 * 8) and opts["--threads"] == "3"
    assert keras_cmd[-1] == "--xla" and "--xla" not in bench_keras.keras_command(
        Path("/venv/bin/python"), args, xla=False)


def test_mean_and_best_window() -> None:
    # batch 10; round 1: steps of 0.1 s and one slow 0.5 s; round 2: 0.05 s steps
    r = bench_keras.summarise([[0.1, 0.1, 0.5, 0.1], [0.05, 0.05]], batch=10, window=2)
    assert r["samples_per_s_mean"] == pytest.approx(60 / 0.9)
    assert r["samples_per_s_best"] == pytest.approx(20 / 0.1)  # round 2's window
    assert r["samples_per_s_rounds"] == pytest.approx([40 / 0.8, 20 / 0.1])
    assert r["timed_steps"] == 6
    # a round shorter than the window still counts, whole
    assert bench_keras.summarise([[0.2]], 4, 5)["samples_per_s_best"] == pytest.approx(20)
    with pytest.raises(ValueError, match="no timed step"):
        bench_keras.summarise([[]], 4, 5)


def test_ratios_are_torch_over_each_keras_against_the_targets() -> None:
    def r(mean: float, best: float) -> dict:
        return {"samples_per_s_mean": mean, "samples_per_s_best": best}

    results = {"torch": r(2400, 2600), "keras": r(2000, 2600), "keras-xla": r(2500, 2000),
               "torch-aten": r(1, 1)}
    q = bench_keras.ratios(results, "idle")
    assert set(q) == {"torch/keras", "torch/keras-xla"}
    assert q["torch/keras"]["mean"] == pytest.approx(1.2) and q["torch/keras"]["met"]
    assert q["torch/keras"]["best"] == pytest.approx(1.0)
    assert q["torch/keras-xla"]["mean"] == pytest.approx(0.96)
    assert not q["torch/keras-xla"]["met"] and q["torch/keras-xla"]["target"] == 1.0
    busy = bench_keras.ratios(results, "busy-core")
    assert busy["torch/keras-xla"]["target"] == 0.8 and busy["torch/keras-xla"]["met"]
    assert bench_keras.ratios({"keras": r(1, 1)}, "idle") == {}
    table = bench_keras.format_table({"conditions": {"idle": {"results": results,
                                                              "ratios": q}}})
    assert "target >= 1.0: NOT met" in table and "target >= 1.2: met" in table


def fake_python(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_python_that_cannot_make_venvs_is_a_skip_naming_the_folder(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "python", "echo 'No module named venv' >&2\nexit 1\n")
    venv = tmp_path / "env"
    got, why = bench_keras.keras_python(venv, "tensorflow-cpu==2.21.0", python)
    assert got is None
    assert f"cannot create the virtual environment {venv}" in why and "No module named venv" in why


def test_a_failing_pip_is_a_skip_naming_the_requirement(tmp_path: Path) -> None:
    # `-m venv DIR` makes DIR/bin/python, a python whose every command (pip too) fails
    inner = "#!/bin/sh\\necho 'ERROR: No matching distribution found' >&2\\nexit 1\\n"
    python = fake_python(tmp_path / "python", f'mkdir -p "$3/bin"\nprintf "{inner}" > '
                         f'"$3/bin/python"\nchmod +x "$3/bin/python"\n')
    venv = tmp_path / "env"
    got, why = bench_keras.keras_python(venv, "tensorflow-cpu==2.21.0", python)
    assert got is None and (venv / "bin" / "python").exists()
    assert f"cannot install tensorflow-cpu==2.21.0 into {venv}" in why
    assert "No matching distribution" in why
    # without installing, a missing environment is named as such
    got, why = bench_keras.keras_python(tmp_path / "none", "x", python, install=False)
    assert got is None and "no TensorFlow environment at" in why and "--no-install" in why


@pytest.mark.benchmark
def test_torch_alone_is_measured_when_keras_is_skipped(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    assert bench_keras.main(["--no-install", "--venv", str(tmp_path / "none"), "--rounds", "2",
                             "--steps", "2", "--warmup", "1", "--batch", "8", "--threads", "1",
                             "--aten", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "no TensorFlow environment" in report["keras_skipped"]
    for condition in ("idle", "busy-core"):
        results = report["conditions"][condition]["results"]
        assert set(results) == {"torch", "torch-aten"}
        assert results["torch"]["threads"] == 1 and results["torch"]["timed_steps"] == 4
        assert results["torch"]["onednn_linear"] in (True, False)
        assert results["torch-aten"]["onednn_linear"] is False
        assert report["conditions"][condition]["ratios"] == {}
    assert "Keras skipped" in capsys.readouterr().out


@pytest.mark.benchmark
@pytest.mark.slow
def test_keras_is_measured_with_and_without_xla(tmp_path: Path) -> None:
    """Makes ~/.cache/plumelink/bench-keras-venv (TensorFlow) when it is missing."""
    out = tmp_path / "r.json"
    assert bench_keras.main(["--conditions", "idle", "--rounds", "1", "--steps", "2",
                             "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    if report["keras_skipped"]:
        pytest.skip(report["keras_skipped"])
    block = report["conditions"]["idle"]
    assert set(block["results"]) == {"torch", "keras", "keras-xla"}
    assert block["results"]["keras"]["tensorflow"] == "2.21.0"
    assert block["ratios"]["torch/keras"]["mean"] > 0
