"""Opt-in driver benchmark (pytest -m benchmark): transports and the simulated chain."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_drivers as bench

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("name", ["dg645_tcp", "dg645_url", "zaber_tcp", "zaber_pty",
                                  "pi_url", "pi_pty"])
def test_transports_sustain_a_thousand_commands_per_s(name: str) -> None:
    rate = getattr(bench, f"bench_{name}")(0.5)
    print(f"{name}: {rate:,.0f} calls/s")
    assert rate >= 1000


def test_avaspec_fake_reads_faster_than_a_1_khz_laser() -> None:
    frames_s, calls_s = bench.bench_avaspec(1000)
    print(f"avaspec: {frames_s:,.0f} frames/s, {calls_s:,.0f} library calls/s")
    assert frames_s >= 2000


def test_chain_keeps_most_of_the_physics_rate() -> None:
    """The whole chain (DDG, bus, both real spectrometer drivers, pairing) costs at most 40 %
    over the physics alone, measured in the same run (a ratio, robust to machine load)."""
    result = bench.bench_chain(bursts=3, shots=500, speedup=100.0)
    print(f"chain {result['chain_pairs_per_s']:,.0f} pairs/s, physics alone "
          f"{result['physics_pairs_per_s']:,.0f} pairs/s, ratio {result['ratio']:.2f}")
    assert result["ratio"] >= 0.6
