"""Opt-in foundation benchmark (pytest -m benchmark): figures as ratios from one run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_foundation as bench

pytestmark = pytest.mark.benchmark


def test_generation_and_write_reach_2000_pairs_per_s(tmp_path: Path) -> None:
    rate = max(bench.bench_generation_and_write(20, 500, tmp_path, "lz4") for _ in range(3))
    print(f"generation + write: {rate:,.0f} pairs/s ({rate / 2000:.2f}x the 2,000 target)")
    assert rate >= 2000


def test_store_overhead_over_plain_h5py_is_at_most_15_percent(tmp_path: Path) -> None:
    runs = [bench.bench_store_vs_plain(20, 500, tmp_path, "lz4") for _ in range(7)]
    overhead = float(np.median([store / plain for store, plain in runs])) - 1
    print(f"store overhead over plain h5py: {100 * overhead:+.1f} %")
    assert overhead <= 0.15
