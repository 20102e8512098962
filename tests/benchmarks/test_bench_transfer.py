"""Opt-in transfer benchmark (pytest -m benchmark) run on the `tiny` preset: transfer_map
spectra/s, its references and peak RSS are reported with a sane structure (the figure for
a 250,000-spectrum map comes from the paper preset and is not asserted here)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_transfer

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.simulate import simulate_dataset

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    paths = simulate_dataset("tiny", folder, seed=4)
    model = bench_transfer.quick_model(folder, folder / "model", batches=2, threads=1)
    return {**paths, "model": model, "folder": folder}


def _valid_secondary(path: Path) -> int:
    with MapReader(path) as reader:
        return sum(len(b) for b, _ in reader.iter_blocks("secondary"))


def test_transfer_rate_ratios_and_peak_rss_are_reported(tiny: dict[str, Path],
                                                        tmp_path: Path) -> None:
    r = bench_transfer.run(tiny["test"], tiny["model"], block_spots=50, sample=60, threads=1,
                           workdir=tmp_path)
    n = _valid_secondary(tiny["test"])
    assert r["transfer"]["spectra"] == n  # every valid secondary spectrum was transferred
    assert r["reference"]["sample_spectra"] == min(60, n)
    rates = [r["transfer"]["spectra_per_s"], *(r["reference"][k] for k in (
        "forward_spectra_per_s", "in_memory_spectra_per_s", "read_spectra_per_s"))]
    assert all(math.isfinite(v) and v > 0 for v in rates)
    assert all(0 < v < math.inf for v in r["ratio"].values())
    assert r["ratio"]["transfer_over_forward"] == pytest.approx(
        r["transfer"]["spectra_per_s"] / r["reference"]["forward_spectra_per_s"])
    # the networks alone at their fastest batch, each batch listed
    batches = {b: r["reference"][f"forward_{b}_spectra_per_s"]
               for b in bench_transfer.FORWARD_BATCHES}
    assert r["reference"]["forward_spectra_per_s"] == max(batches.values())
    assert batches[r["reference"]["forward_best_batch"]] == max(batches.values())
    assert r["transfer"]["rss_before_transfer_gb"] <= r["transfer"]["peak_rss_gb"]
    assert r["transfer"]["output_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the output map was a temporary file


def test_sample_is_the_first_valid_spectra_in_storage_order(tiny: dict[str, Path]) -> None:
    with MapReader(tiny["test"]) as reader:
        first = np.concatenate([b for b, _ in reader.iter_blocks("secondary", 16)])[:40]
    np.testing.assert_array_equal(bench_transfer.sample_secondary(tiny["test"], 40, 16), first)


def test_cli_trains_a_quick_model_and_writes_json(tiny: dict[str, Path], tmp_path: Path
                                                  ) -> None:
    out = tmp_path / "transfer.json"
    assert bench_transfer.main([str(tiny["test"]), "--train-folder", str(tiny["folder"]),
                                "--train-batches", "1", "--sample", "20", "--threads", "1",
                                "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["transfer"]["spectra_per_s"] > 0 and r["transfer"]["peak_rss_gb"] > 0
