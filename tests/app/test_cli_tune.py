"""`plumelink tune` as a user runs it: output, chained VAE -> MLP search, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plumelink.app.cli import build_parser, main
from plumelink.models.tune import in_space

SPACE = {
    "hidden_1": {"kind": "categorical", "choices": [32]},
    "hidden_2": {"kind": "categorical", "choices": [16]},
    "latent": {"kind": "categorical", "choices": [4, 8]},
}


def test_the_cli_does_not_import_optuna_unless_tune_runs() -> None:
    code = ("import sys; from plumelink.app.cli import build_parser; "
            "build_parser().parse_args(['tune', '--train', 't.h5', '--val', 'v.h5']); "
            "print('optuna' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_vae_result_feeds_the_mlp_search(maps, tmp_path, capsys) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    common = ["--train", str(maps["train"]), "--val", str(maps["val"]), "--epochs", "1",
              "--seed", "0", "--threads", "1", "--device", "cpu"]
    vae_out = tmp_path / "vae.json"
    assert main(["tune", *common, "--trials", "2", "--space", str(space),
                 "--out", str(vae_out)]) == 0
    printed = capsys.readouterr().out
    vae = json.loads(vae_out.read_text())
    assert vae["study"] == "plumelink-vae" and vae["storage"] == "in-memory"
    assert f"latent = {vae['best']['params']['latent']}" in printed
    assert f"study record written to {vae_out}" in printed
    mlp_out = tmp_path / "mlp.json"
    assert main(["tune", *common, "--target", "mlp", "--trials", "1",
                 "--vae-params", str(vae_out), "--out", str(mlp_out)]) == 0
    mlp = json.loads(mlp_out.read_text())
    assert mlp["vae_params"] == vae["best"]["params"]
    assert in_space(mlp["best"]["params"], "mlp")  # the paper's MLP space, not narrowed


def test_bad_inputs_are_clear_errors(maps, tmp_path, capsys) -> None:
    assert main(["tune", "--train", str(tmp_path / "none.h5"), "--val", str(maps["val"]),
                 "--trials", "1"]) == 2
    assert "training map" in capsys.readouterr().err
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"depth": {"kind": "int", "low": 1, "high": 2}}))
    assert main(["tune", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--space", str(space)]) == 2
    assert "no hyperparameter 'depth'" in capsys.readouterr().err
    space.write_text("[1, 2]")
    assert main(["tune", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--space", str(space)]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_tune_options_parse() -> None:
    args = build_parser().parse_args(
        ["tune", "--train", "t.h5", "--val", "v.h5", "--storage", "sqlite:///s.db",
         "--study", "s", "--trials", "5", "--timeout", "60", "--target", "mlp"])
    assert (args.storage, args.study, args.trials, args.timeout, args.target) == (
        "sqlite:///s.db", "s", 5, 60.0, "mlp")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--train", "t", "--val", "v", "--trials", "0"])
