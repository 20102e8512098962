"""Opt-in GUI benchmark (pytest -m benchmark): transferred-map latency for 500-spot lines,
against the reference design measured in the same run, and the frame rate while a 1 kHz
simulated scan runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_gui as bench

pytestmark = pytest.mark.benchmark


def test_transfer_latency_and_fps(qapp, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PLUMELINK_GUI_SETTINGS", str(tmp_path / "gui.ini"))
    r = bench.bench(tmp_path, n_lines=8, fps_lines=10)
    lat, ref, fps, cpu = r["latency"], r["latency_reference"], r["fps"], r["compute"]
    el = r["latency_with_element_maps"]
    print(f"transferred map: 500-spot line -> repaint median {lat['latency_ms_median']:.0f} ms "
          f"(p90 {lat['latency_ms_p90']:.0f}; reference design {ref['latency_ms_median']:.0f}"
          f" ms; target 100 ms); compute alone: first step {cpu['first_step_ms_median']:.0f} "
          f"ms, whole transfer {cpu['whole_ms_median']:.0f} ms (load average "
          f"{cpu['load_average_1min']:.1f}); scan {fps['scan_shots_per_s']:.0f} shots/s, GUI "
          f"{fps['timer_fps']:.1f} frames/s, longest event-loop gap "
          f"{fps['max_event_loop_gap_ms']:.0f} ms; with {el['element_lines']} element maps "
          f"{el['latency_ms_median']:.0f} ms")
    assert lat["lines"] == 8 and ref["lines"] == 8
    assert lat["latency_ms_median"] < ref["latency_ms_median"]
    assert lat["latency_ms_median"] <= 100  # the target, 500-spot lines on 2 cores
    assert el["lines"] == 8 and el["latency_ms_median"] <= 100  # element maps fit the budget
    assert fps["timer_fps"] >= 10
