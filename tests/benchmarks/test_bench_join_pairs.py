"""Opt-in benchmark (pytest -m benchmark) of `join --pairs N` on the `tiny` preset: the curve
runs end to end and reports every method, PDS and PLS on the test map with a sane structure
(the issue's figures come from the small preset and are not asserted here)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_join_pairs

from plumelink.models.train import TrainOptions, train_transfer
from plumelink.pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.benchmark


def test_curve_reports_every_method_and_baseline(tmp_path: Path) -> None:
    sim = simulate_dataset("tiny", tmp_path / "sec", seed=0)
    simulate_dataset("tiny", tmp_path / "ccd", seed=0, secondary="broadband_ccd")
    model = train_transfer(sim["train"], sim["val"], tmp_path / "model",
                           TrainOptions(epochs=3, baselines=False, hash_inputs=False,
                                        threads=1))
    out = tmp_path / "curve.json"
    assert bench_join_pairs.main(["--model", str(model), "--maps", str(tmp_path / "ccd"),
                                  "--pairs", "30", "all", "--epochs", "3",
                                  "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [row["pairs"] for row in r["rows"]] == ["30", "all"]
    assert r["rows"][1]["n"] == r["train_pairs"]
    for row in r["rows"]:
        assert set(row["methods"]) == set(bench_join_pairs.DEFAULT_METHODS)
        values = [m["test_rse"] for m in row["methods"].values()]
        values += [row["baselines"]["pds"], row["baselines"]["pls"]]
        assert all(math.isfinite(v) and v > 0 for v in values)
    assert r["rows"][0]["methods"]["adapt"]["n_fit_pairs"] == 24  # 30 less 1 in 5
    assert math.isfinite(r["whole_map_join"]["test_rse"])
