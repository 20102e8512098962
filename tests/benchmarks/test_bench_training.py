"""Opt-in training benchmarks (pytest -m benchmark) run on the `tiny` preset: the scripts
work and report what they claim (positive rates, fractions, a peak RSS per stage); the
figures themselves are for the paper preset and are not asserted here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_training
import bench_training_memory

from plumelink.pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    simulate_dataset("tiny", folder, seed=3)
    return folder


def test_vae_training_reports_a_fraction_of_matmul_throughput(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    assert bench_training.main(["--n", "512", "--repeats", "2", "--steps", "2",
                                "--batches", "16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["matmul_gflops"] > 0
    [vae] = r["vae"]
    assert vae["batch_size"] == 16
    assert vae["samples_per_s"] >= vae["samples_per_s_mean"] > 0  # best window >= the mean
    assert vae["fraction_of_matmul"] == pytest.approx(vae["gflops"] / r["matmul_gflops"])
    assert 0 < vae["fraction_of_matmul"] < float("inf")


def test_peak_rss_of_training_is_measured_in_a_child_process_per_stage(tiny: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "paper.json"
    assert bench_training.main(["--only-paper", "--paper", str(tiny), "--paper-batches", "2",
                                "--threads", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["paper"]
    assert r["max_batches"] == 2 and r["baselines"] is False
    names = [s["until"] for s in r["segments"]]
    assert names[0] == "scan and scalers" and names[-1] == "end"
    assert {"vae 1/1", "latent_mlp 1/1"} <= set(names)
    # the kernel's high-water mark bounds every sampled value (sampling can only miss peaks)
    assert 0 < max(s["peak_rss_gb"] for s in r["segments"]) <= r["peak_rss_gb"] * 1.001
    assert r["rss_before_training_gb"] <= r["peak_rss_gb"]
    assert r["data"]["train_pairs"] > 0
    assert "vae_mlp" in r["validation_rse"]
    assert "peak RSS" in bench_training_memory.format_result(r)


def test_missing_preset_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.h5"):
        bench_training_memory.train_peak_rss(tmp_path, batches=1)
