"""`plumelink evaluate` and `plumelink transfer` through their argparse registration."""

from __future__ import annotations

import argparse
import json
import shutil

import h5py
import pytest

from plumelink.app import evaluate_command, transfer_command
from plumelink.models.evaluate import METRIC_KEYS, MODELS
from plumelink.models.report import FIGURES
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.transfer import read_confidence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plumelink")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate_command.register(sub)
    transfer_command.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_evaluate_command_writes_metrics_and_report(tiny_model, tmp_path, capsys):
    maps, model = tiny_model
    out = tmp_path / "report"
    code = _run(["evaluate", "--model", str(model), "--test", str(maps["test"]),
                 "--report", str(out), "--k", "2-3", "--train", str(maps["train"]),
                 "--val", str(maps["val"])])
    assert code == 0
    captured = capsys.readouterr()
    assert "evaluate kmeans" in captured.err and "evaluate report" in captured.err
    assert captured.out.splitlines()[0].split() == ["model", "euclid", "cosine", "RSE",
                                                    "k-score"]
    assert f"metrics and report written to {out}" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == set(MODELS)
    for values in metrics["models"].values():
        assert set(values) == set(METRIC_KEYS)
    assert metrics["kmeans"]["k"] in (2, 3)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert all((out / f"{name}.png").is_file() for name, _ in FIGURES)


def test_transfer_command_writes_a_map(tiny_model, tmp_path, capsys):
    maps, model = tiny_model
    out = tmp_path / "t.h5"
    assert _run(["transfer", "--model", str(model), "--input", str(maps["test"]),
                 "--out", str(out), "--block-spots", "7"]) == 0
    captured = capsys.readouterr()
    assert "transfer" in captured.err and "100%" in captured.err
    assert f"transferred map written to {out}" in captured.out
    with MapReader(out) as r:
        assert r.shape == (8, 16) and r.status == "complete"
    assert read_confidence(out).shape == (8, 16)


def test_bad_arguments_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["evaluate", "--model", "m", "--test", "t", "--report", "r",
                              "--k", "1-3"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["transfer", "--model", "m", "--input", "i", "--out", "o",
                              "--block-spots", "0"])
    assert "at least" in capsys.readouterr().err


def test_clear_errors_for_missing_foreign_and_mismatched_inputs(tiny_model, tmp_path):
    maps, model = tiny_model
    base = ["--model", str(model), "--out", str(tmp_path / "o.h5")]
    with pytest.raises(FileNotFoundError, match=r"input map .* does not exist"):
        _run(["transfer", "--input", str(tmp_path / "missing.h5"), *base])
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        _run(["transfer", "--input", str(text), *base])
    with pytest.raises(ValueError, match="is not a model package"):
        _run(["transfer", "--input", str(maps["test"]), "--model", str(tmp_path),
              "--out", str(tmp_path / "o.h5")])
    bad = tmp_path / "shifted.h5"
    shutil.copy(maps["test"], bad)
    with h5py.File(bad, "r+") as f:
        f["map/secondary/wavelength"][...] += 0.5
    with pytest.raises(ValueError, match=r"secondary \(secondary\) axis differs .* nm"):
        _run(["transfer", "--input", str(bad), *base])
    with pytest.raises(ValueError, match=r"secondary \(secondary\) axis"):
        _run(["evaluate", "--model", str(model), "--test", str(bad), "--report",
              str(tmp_path / "r"), "--k", "2"])
    with pytest.raises(FileNotFoundError, match="test map"):
        _run(["evaluate", "--model", str(model), "--test", str(tmp_path / "none.h5"),
              "--report", str(tmp_path / "r")])
