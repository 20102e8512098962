"""Opt-in preprocessing benchmark (pytest -m benchmark): a ratio measured in one run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_preprocess as bench

pytestmark = pytest.mark.benchmark


def test_vectorised_baseline_is_at_least_10x_the_pandas_reference() -> None:
    r = bench.bench(n_spectra=1000, n_reference=150, repeats=3)
    print(f"baseline: {r['vectorised_spectra_per_s']:,.0f} spectra/s vectorised, "
          f"{r['pandas_reference_spectra_per_s']:,.0f} pandas per spectrum: {r['ratio']:.1f}x")
    assert r["max_abs_diff_counts"] <= 4e-3  # float32 rounding: 1 ulp at 65535 counts is 0.004
    assert r["ratio"] >= 10
