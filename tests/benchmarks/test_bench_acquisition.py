"""Opt-in acquisition benchmark (pytest -m benchmark): a fly-scan map through the whole
simulated bench against generation + write in the same run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_acquisition as bench
import bench_foundation

from plumelink.pipeline.map_filters import DEFAULT_COMPRESSION

pytestmark = pytest.mark.benchmark


def test_fly_scan_at_1khz_sustains_80_percent_of_generation_and_write(tmp_path: Path) -> None:
    lines, nx = 60, 200
    # the reference brackets the engine run, as in the script (a shared machine's speed drifts)
    before = bench_foundation.bench_generation_and_write(lines, nx, tmp_path, DEFAULT_COMPRESSION)
    engine = bench.bench_engine(lines, nx, 200.0, tmp_path)
    (tmp_path / "gen.h5").unlink()
    after = bench_foundation.bench_generation_and_write(lines, nx, tmp_path, DEFAULT_COMPRESSION)
    reference = 2.0 / (1.0 / before + 1.0 / after)
    overhead_us = 1e6 * (engine["elapsed_s"] - lines * nx / reference) / (lines * nx)
    ratio = engine["pairs_per_s"] / reference
    print(f"engine {engine['pairs_per_s']:,.0f} pairs/s, generation + write {reference:,.0f} "
          f"pairs/s, ratio {ratio:.2f}, overhead {overhead_us:.0f} µs/spot")
    assert engine["status"] == "complete"
    assert engine["invalid_primary"] == engine["invalid_secondary"] == 0
    assert ratio >= 0.8
