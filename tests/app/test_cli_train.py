"""`plumelink train` run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plumelink.app.cli import build_parser, main
from plumelink.models.package import load_package


def test_train_command_prints_the_table_and_where_the_package_went(maps, tmp_path) -> None:
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "train", "--train", str(maps["train"]),
         "--val", str(maps["val"]), "--out", str(out), "--epochs", "2",
         "--device", "cpu", "--seed", "3", "--max-batches", "4"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "validation", "RSE"]
    table = {line.split()[0]: float(line.split()[1]) for line in lines[1:7]}
    assert set(table) == {"vae_mlp", "one_step_mlp", "pls", "knn", "pds", "mean"}
    assert f"model package written to {out}" in result.stdout
    assert "train vae" in result.stderr and "train baselines" in result.stderr  # progress
    pkg = load_package(out)
    assert len(pkg.manifest["histories"]["vae"]["train_loss"]) == 2
    assert pkg.manifest["metrics"]["validation_rse"]["pls"] == pytest.approx(
        table["pls"], abs=1e-4)
    options = pkg.manifest["metrics"]["options"]
    assert options["seed"] == 3 and options["max_batches"] == 4 and options["device"] == "cpu"
    assert not (out / "checkpoints").exists()


def test_train_no_baselines_in_process(maps, tmp_path, capsys) -> None:
    out = tmp_path / "model"
    code = main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out), "--epochs", "1", "--no-baselines", "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vae_mlp" in printed and "pls" not in printed
    assert not any(p.name.startswith(("baseline-", "one_step")) for p in out.iterdir())


def test_train_into_an_existing_package_is_a_clear_error(maps, tmp_path, capsys) -> None:
    out = tmp_path / "model"
    args = ["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
            "--out", str(out), "--epochs", "1", "--no-baselines", "-q"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "plumelink train: error:" in capsys.readouterr().err


def test_bad_epochs_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--train", "a.h5", "--val", "b.h5", "--out", "m", "--epochs", "0"])
    assert exc.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_train_resume_without_a_checkpoint_says_so(maps, tmp_path, capsys) -> None:
    code = main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(tmp_path / "model"), "--resume", "-q"])
    assert code == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_train_options_parse() -> None:
    args = build_parser().parse_args(["train", "--train", "t.h5", "--val", "v.h5", "--out", "m",
                                      "--stream", "--threads", "2", "--device", "cuda"])
    assert args.stream and args.threads == 2 and args.device == "cuda" and not args.resume
    assert args.input_noise is None  # the options' default
    args = build_parser().parse_args(["train", "--train", "t.h5", "--val", "v.h5", "--out", "m",
                                      "--input-noise", "0"])
    assert args.input_noise == 0.0
    for bad in ("-0.1", "nan", "lots"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--train", "t", "--val", "v", "--out", "m",
                                       "--input-noise", bad])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--train", "t", "--val", "v", "--out", "m",
                                   "--device", "tpu"])


def test_train_paper_uses_the_published_settings(maps, tmp_path) -> None:
    out = tmp_path / "paper"
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out), "--paper", "--epochs", "1", "--no-baselines", "-q"]) == 0
    options = load_package(out).manifest["metrics"]["options"]
    assert options["learning_rate"] == 1e-4 and options["schedule"] == "constant"
    assert options["scaler_mode"] == "per-map" and options["scaler_spread"] == "channel"
    assert not options["fine_tune"] and options["epochs"] == 1 and not options["baselines"]
    assert options["input_noise"] == 0.0 and options["linear_rank"] == 0


def test_join_fine_tune_writes_the_systems_own_decoder(maps, tmp_path, capsys) -> None:
    out = tmp_path / "model"
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out), "--epochs", "1", "--no-baselines", "-q"]) == 0
    vae_before = (out / "vae.safetensors").read_bytes()
    assert main(["join", "--model", str(out), "--system", "second_look", "--train",
                 str(maps["train"]), "--val", str(maps["val"]), "--epochs", "1",
                 "--fine-tune", "-q"]) == 0
    assert "second_look" in capsys.readouterr().out
    assert (out / "decoder-second_look.safetensors").exists()
    assert (out / "vae.safetensors").read_bytes() == vae_before  # the shared VAE untouched
    assert "second_look" in load_package(out).decoders


def test_train_linear_rank_and_input_noise_reach_the_package(maps, tmp_path, capsys) -> None:
    out = tmp_path / "model"
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out), "--epochs", "3", "--linear-rank", "3", "--input-noise",
                 "0.02", "-q"]) == 0
    pkg = load_package(out)
    assert pkg.manifest["metrics"]["options"]["linear_rank"] == 3
    assert pkg.manifest["metrics"]["options"]["input_noise"] == 0.02
    assert pkg.one_step["secondary"].path.rank == 3
    assert pkg.manifest["metrics"]["fine_tuned"], "fine-tuning not kept on the tiny maps"
    assert pkg.decoders["secondary"].path.rank == 3
    # a joined system's fine-tuned decoder gets a path of its own size and rank
    assert main(["join", "--model", str(out), "--system", "second_look", "--train",
                 str(maps["train"]), "--val", str(maps["val"]), "--epochs", "3",
                 "--fine-tune", "-q"]) == 0
    joined = load_package(out)
    assert joined.manifest["metrics"]["second_look"]["trained"].startswith(
        "latent_mlp and its own fine-tuned copy"), "fine-tuning not kept for the joined system"
    assert joined.decoders["second_look"].path.rank == 3
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(out), "--test", str(maps["test"]),
                 "--system", "secondary", "--report", str(report)]) == 0
    assert set(json.loads((report / "metrics.json").read_text())["models"]) >= {
        "vae_mlp", "one_step_mlp", "pls"}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--train", "t", "--val", "v", "--out", "m",
                                   "--linear-rank", "-1"])
    assert "at least 0" in capsys.readouterr().err


def test_train_config_file_sets_the_tables_and_the_flags_override_it(maps, tmp_path,
                                                                     capsys) -> None:
    config = tmp_path / "train.toml"
    config.write_text("seed = 4\n[fit]\nepochs = 1\nbatch_size = 64\n[baselines]\n"
                      "enabled = false\n[augment]\ninput_noise = 0.01\n", encoding="utf-8")
    out = tmp_path / "model"
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(out), "--config", str(config), "--input-noise", "0.03",
                 "--threads", "1", "-q"]) == 0
    options = load_package(out).manifest["metrics"]["options"]
    assert (options["seed"], options["epochs"], options["batch_size"]) == (4, 1, 64)
    assert options["baselines"] is False and options["input_noise"] == 0.03
    capsys.readouterr()
    config.write_text("[fit]\nepochs = 0\nbogus = 1\n", encoding="utf-8")
    assert main(["train", "--train", str(maps["train"]), "--val", str(maps["val"]),
                 "--out", str(tmp_path / "other"), "--config", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "epochs (fit.epochs) must be >= 1, got 0" in err
    assert "fit.bogus is not a known key" in err
