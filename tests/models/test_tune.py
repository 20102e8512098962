"""Hyperparameter search on the tiny simulated maps: study, pruning, shared storage, result."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import optuna
import pytest

from plumelink.models import tune as tune_module
from plumelink.models.tune import (
    SEARCH_SPACES,
    in_space,
    load_tuning_data,
    open_storage,
    paper_params,
    search_space,
    tune,
)

# narrow widths so that a trial takes a fraction of a second; the rest of the space is the
# paper's (learning rate, batch size, KL ceiling and cycles, weight decay)
SMALL_VAE = {
    "hidden_1": {"kind": "categorical", "choices": [32, 64]},
    "hidden_2": {"kind": "categorical", "choices": [16, 32]},
    "latent": {"kind": "categorical", "choices": [4, 8]},
}
SMALL_MLP = {
    "hidden_1": {"kind": "categorical", "choices": [16, 32]},
    "hidden_2": {"kind": "categorical", "choices": [16, 32]},
}
EPOCHS = 3
TRIALS = 9


@pytest.fixture(scope="module")
def vae_study(maps, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("study")
    pruners: list = []
    best = tune(maps["train"], maps["val"], storage=folder / "journal.log", study_name="vae",
                n_trials=TRIALS, target="vae", seed=0, epochs=EPOCHS, space=SMALL_VAE,
                out=folder / "best.json", threads=1,
                callbacks=[lambda study, trial: pruners.append(study.pruner)])
    return {"best": best, "folder": folder, "pruners": pruners,
            "record": json.loads((folder / "best.json").read_text())}


def test_the_study_in_the_journal_holds_every_trial_with_per_epoch_reports(vae_study) -> None:
    study = optuna.load_study(study_name="vae",
                              storage=open_storage(vae_study["folder"] / "journal.log"))
    trials = study.get_trials()
    assert len(trials) == TRIALS
    assert all(isinstance(p, optuna.pruners.HyperbandPruner) for p in vae_study["pruners"])
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in trials)
    for t in trials:
        run = t.user_attrs["epochs_run"]
        # one report per epoch trained, steps 1..run: training stopped when pruned
        assert sorted(t.intermediate_values) == list(range(1, run + 1))
        assert all(math.isfinite(v) and v > 0 for v in t.intermediate_values.values())
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert run == EPOCHS
            assert t.value == pytest.approx(min(t.intermediate_values.values()))


def test_hyperband_prunes_and_pruned_trials_stop_training_early(vae_study) -> None:
    trials = vae_study["record"]["trials"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned, "Hyperband pruned no trial of the study"
    assert any(t["epochs_run"] < EPOCHS for t in pruned)
    assert vae_study["record"]["n_trials"]["pruned"] == len(pruned)
    assert vae_study["record"]["pruner"]["max_resource"] == EPOCHS


def test_best_params_json_is_the_best_complete_trial_inside_the_space(vae_study) -> None:
    record, best = vae_study["record"], vae_study["best"]
    space = record["search_space"]
    assert set(space) == set(SEARCH_SPACES["vae"])
    assert space["latent"]["choices"] == [4, 8]  # the override
    assert space["learning_rate"] == SEARCH_SPACES["vae"]["learning_rate"]  # the paper's
    assert record["best"]["params"] == best
    assert in_space(best, "vae", space)
    complete = [t["value"] for t in record["trials"] if t["state"] == "COMPLETE"]
    assert record["best"]["value"] == min(complete)
    assert record["target"] == "vae" and "journal file" in record["storage"]
    assert all(t["worker"] for t in record["trials"])


def test_a_worker_with_other_settings_cannot_join_the_study(maps, vae_study) -> None:
    journal = vae_study["folder"] / "journal.log"
    with pytest.raises(ValueError, match=r"other settings.*epochs"):
        tune(maps["train"], maps["val"], storage=journal, study_name="vae", n_trials=1,
             target="vae", epochs=EPOCHS + 1, space=SMALL_VAE)
    with pytest.raises(ValueError, match=r"other settings.*search_space"):
        tune(maps["train"], maps["val"], storage=journal, study_name="vae", n_trials=1,
             target="vae", epochs=EPOCHS)
    study = optuna.load_study(study_name="vae", storage=open_storage(journal))
    assert len(study.trials) == TRIALS  # nothing was added


def test_two_worker_processes_share_one_journal_study(maps, tmp_path) -> None:
    journal = tmp_path / "shared.log"
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SMALL_VAE))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "plumelink.app.cli", "tune", "--train", str(maps["train"]),
             "--val", str(maps["val"]), "--storage", str(journal), "--study", "shared",
             "--trials", "2", "--epochs", "1", "--space", str(space), "--seed", str(i),
             "--threads", "1", "--device", "cpu", "--out", str(tmp_path / f"w{i}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        assert "best trial #" in out
    study = optuna.load_study(study_name="shared", storage=open_storage(journal))
    trials = study.get_trials()
    assert len(trials) == 4
    by_worker: dict[str, int] = {}
    for t in trials:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(by_worker.values()) == [2, 2]
    assert len({t.number for t in trials}) == 4
    last = max((json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)),
               key=lambda r: len(r["trials"]))
    assert len(last["trials"]) == 4


def test_mlp_target_scores_the_composed_model_in_a_sqlite_study(maps, tmp_path) -> None:
    out = tmp_path / "mlp.json"
    best = tune(maps["train"], maps["val"], storage=f"sqlite:///{tmp_path / 'study.db'}",
                study_name="mlp", n_trials=2, target="mlp", seed=1, epochs=2,
                space=SMALL_MLP, vae_params={"hidden_1": 256, "hidden_2": 128, "latent": 8},
                out=out, threads=1)
    record = json.loads(out.read_text())
    assert in_space(best, "mlp", record["search_space"])
    assert record["vae_params"] == {**paper_params("vae"), "hidden_1": 256, "hidden_2": 128,
                                    "latent": 8}
    assert "RSE" in record["objective"]
    for t in record["trials"]:
        # RSEs of a transfer: positive, and the first epochs of a small MLP are not perfect
        assert all(0 < v < 10 for v in t["intermediate"].values())
    assert record["storage"].startswith("sqlite:///")
    # the study can be joined again from the same URL
    again = optuna.load_study(study_name="mlp",
                              storage=open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    assert len(again.trials) == 2


def test_large_maps_are_tuned_on_a_subsample(maps, monkeypatch) -> None:
    whole = load_tuning_data(maps["train"], maps["val"])
    monkeypatch.setattr(tune_module, "MAX_IN_MEMORY_SPOTS", 10)  # every map is "large" now
    part = load_tuning_data(maps["train"], maps["val"], max_pairs=50, seed=3)
    assert len(part.p_tr) == len(part.s_tr) == 50 and len(part.s_va) == 50
    assert len(whole.p_tr) > 50
    # scalers fitted on every training pair, streamed: the same scaling as in memory
    assert (part.p_val_scaler.inverse_transform(part.p_va[:5])
            == pytest.approx(part.truth[:5], rel=1e-4, abs=1e-2))
    # each subsampled pair is a training pair, scaled as the whole map's pairs are
    for row in part.s_tr[:5]:
        assert np.abs(whole.s_tr - row).max(axis=1).min() < 1e-3


def test_search_space_overrides_are_checked() -> None:
    with pytest.raises(ValueError, match="no hyperparameter 'depth'"):
        search_space("vae", {"depth": {"kind": "int", "low": 1, "high": 3}})
    with pytest.raises(ValueError, match="bad search space entry 'learning_rate'"):
        search_space("vae", {"learning_rate": {"kind": "float", "low": 0.0, "high": 1e-3,
                                               "log": True}})
    with pytest.raises(ValueError, match="tuning target"):
        search_space("pls")
    assert in_space(paper_params("vae"), "vae") and in_space(paper_params("mlp"), "mlp")
    assert not in_space({**paper_params("vae"), "latent": 3}, "vae")
    assert not in_space({**paper_params("mlp"), "learning_rate": 1.0}, "mlp")
    assert not in_space({"learning_rate": 1e-4}, "mlp")


def test_tune_needs_a_stopping_rule(maps) -> None:
    with pytest.raises(ValueError, match="never ends"):
        tune(maps["train"], maps["val"], n_trials=None, timeout_s=None)


@pytest.mark.slow
def test_paper_search_space_runs(maps, tmp_path) -> None:
    best = tune(maps["train"], maps["val"], n_trials=3, target="vae", seed=0, epochs=2,
                out=tmp_path / "best.json")
    assert in_space(best, "vae")
