"""Which model transfers: the package's best on validation, used by transfer unless named."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from plumelink.app import transfer_command
from plumelink.models.choice import recommended_model, system_validation_rse
from plumelink.models.evaluate import PackageTransfer, TransferModels
from plumelink.models.package import load_package
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs
from plumelink.pipeline.transfer import SETTINGS_KEY

ALL = ("vae_mlp", "one_step_mlp", "pls", "knn", "pds", "mean")


def _manifest(scores: dict, system: str = "secondary", **extra) -> dict:
    return {"secondary": {system: {}, **extra.pop("others", {})},
            "metrics": {"validation_rse": scores, "options": {"system": system}, **extra}}


def test_the_lowest_validation_rse_is_recommended_never_the_mean() -> None:
    m = _manifest({"vae_mlp": 0.30, "one_step_mlp": 0.25, "pls": 0.28, "mean": 0.01})
    choice = recommended_model(m, "secondary", ALL)
    assert choice.model == "one_step_mlp"
    assert "mean" not in choice.validation_rse
    assert choice.reason.startswith("lowest validation RSE of 'secondary' (one_step_mlp 0.25")
    # a model the package lacks for this system cannot be chosen
    assert recommended_model(m, "secondary", ("vae_mlp", "pls")).model == "pls"


def test_ties_go_to_the_paper_model_and_nan_scores_are_ignored() -> None:
    m = _manifest({"vae_mlp": 0.2, "pls": 0.2, "knn": float("nan")})
    assert recommended_model(m, "secondary", ALL).model == "vae_mlp"
    assert "knn" not in system_validation_rse(m, "secondary")


def test_a_joined_system_is_judged_on_its_own_scores() -> None:
    m = _manifest({"vae_mlp": 0.3, "pls": 0.1}, others={"ccd": {}},
                  ccd={"validation_rse": {"vae_mlp": 0.4, "mean": 1.2}})
    assert recommended_model(m, "ccd", ALL).model == "vae_mlp"
    assert recommended_model(m, "secondary", ALL).model == "pls"
    # a system with no record of its own: the paper's model, said to have no scores
    none = recommended_model(m, "other", ALL)
    assert none.model == "vae_mlp" and none.validation_rse == {}


def test_transfer_writes_the_recommended_model_unless_one_is_named(tiny_model) -> None:
    maps, folder = tiny_model
    package = load_package(folder)
    pairs = preprocess_pairs(load_pairs(maps["test"]))
    raw = load_pairs(maps["test"]).secondary[:40].astype(np.float32)
    scores = package.manifest["metrics"]["validation_rse"]
    best = min((n for n in scores if n != "mean"), key=scores.get)
    default = PackageTransfer(package)
    assert default.model_name == best == default.choice.model
    assert default.identity()["model"] == best
    reference = TransferModels.from_package(package)
    for name in ("vae_mlp", "pls", best):
        named = PackageTransfer(package, model=name)
        primary, confidence = named(raw)
        want = reference.predict(name, pairs.secondary[:40])
        scale = np.abs(want).max()
        assert np.abs(primary - want).max() < 1e-4 * scale, name
        assert ((confidence > 0) & (confidence <= 1)).all()
    # the confidence is the latent space's whichever model writes the spectra
    np.testing.assert_allclose(PackageTransfer(package, model="pls")(raw)[1],
                               PackageTransfer(package, model="vae_mlp")(raw)[1], rtol=1e-6)
    with pytest.raises(ValueError, match=r"no model 'svm'.*it has"):
        PackageTransfer(package, model="svm")
    with pytest.raises(ValueError, match="mean spectrum transfers nothing"):
        PackageTransfer(package, model="mean")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plumelink")
    transfer_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_transfer_says_and_records_which_model_wrote_the_map(tiny_model, tmp_path,
                                                                 capsys) -> None:
    maps, model = tiny_model
    base = ["transfer", "--model", str(model), "--input", str(maps["test"]), "-q"]
    assert _run([*base, "--out", str(tmp_path / "a.h5")]) == 0
    said = capsys.readouterr().out
    best = PackageTransfer(load_package(model)).model_name
    assert f"spectra by {best}" in said and "lowest validation RSE" in said
    assert _run([*base, "--out", str(tmp_path / "b.h5"), "--use", "vae_mlp"]) == 0
    assert "spectra by vae_mlp" in capsys.readouterr().out
    for name, want in (("a.h5", best), ("b.h5", "vae_mlp")):
        with MapReader(tmp_path / name) as reader:
            assert reader.settings[SETTINGS_KEY]["model"] == want
