"""Opt-in foundation benchmark (pytest -m benchmark): figures as ratios from one run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_foundation as bench

from plumelink.pipeline.map_filters import DEFAULT_COMPRESSION

pytestmark = pytest.mark.benchmark


def test_generation_and_write_reach_2000_pairs_per_s(tmp_path: Path) -> None:
    rate = max(bench.bench_generation_and_write(20, 500, tmp_path,
                                                     DEFAULT_COMPRESSION) for _ in range(3))
    print(f"generation + write: {rate:,.0f} pairs/s ({rate / 2000:.2f}x the 2,000 target)")
    assert rate >= 2000


def test_store_writes_at_least_0_9_of_plain_h5py_with_the_default_filter(tmp_path: Path
                                                                          ) -> None:
    runs = [bench.bench_store_vs_plain(20, 500, tmp_path, DEFAULT_COMPRESSION)
            for _ in range(7)]
    ratio = float(np.median([plain / store for store, plain in runs]))
    print(f"store / plain h5py ({DEFAULT_COMPRESSION}): {ratio:.2f}x")
    assert ratio >= 0.9
