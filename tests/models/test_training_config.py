"""The training configuration: tables and flat option names, TOML files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from plumelink.models.training.config import FLAT, ConfigError, TrainConfig, load_config


def test_flat_names_and_tables_build_the_same_config() -> None:
    flat = TrainConfig(epochs=3, fine_tune=False, fine_tune_epochs=7, drift_gain=0.1, seed=2)
    tables = TrainConfig(seed=2, fit={"epochs": 3}, fine_tune={"enabled": False, "epochs": 7},
                         augment={"drift_gain": 0.1})
    assert flat == tables
    assert flat.fine_tune.enabled is False and flat.fine_tune.epochs == 7
    assert TrainConfig(**flat.flat()) == flat  # the manifest's record rebuilds the config
    assert set(flat.flat()) == set(FLAT)
    assert "run" not in flat.weights_record()  # threads, device...: not in the fingerprint


def test_replace_validates_again_and_leaves_the_original() -> None:
    base = TrainConfig(epochs=5)
    assert base.replace(batch_size=16).fit.batch_size == 16 and base.fit.batch_size == 128
    with pytest.raises(ConfigError, match=r"batch_size \(fit.batch_size\) must be >= 1"):
        base.replace(batch_size=0)


def test_a_toml_file_loads_and_the_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text('seed = 3\n[networks]\nvae_hidden = [64, 32]\n[fit]\nepochs = 9\n'
                    'schedule = "cosine"\n', encoding="utf-8")
    config = load_config(path, epochs=4)
    assert config.seed == 3 and config.networks.vae_hidden == (64, 32)
    assert config.fit.epochs == 4 and config.fit.schedule == "cosine"
    assert TrainConfig(**config.tables()) == config


@pytest.mark.parametrize(("text", "message"), [
    ("[fit]\nepochs = 0\n", "epochs (fit.epochs) must be >= 1, got 0"),
    ("[fit]\nepoch = 3\n", "fit.epoch is not a known key"),
    ("[trainer]\nepochs = 3\n", "trainer is not a known key"),
    ('[data]\nscaler_mode = "test"\n', "scaler_mode (data.scaler_mode) must be one of"),
    ("[fit]\nepochs = 2.5\n", "must be an integer"),
    ("[fit\n", "not valid TOML"),
])
def test_a_bad_file_names_itself_and_the_option(tmp_path: Path, text: str, message: str
                                                ) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value)
