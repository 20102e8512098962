"""`plumelink acquire` run in-process on the simulated bench, checked against the bench's own
ground truth (which shot each frame came from, where the stage was at that shot)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scan_files import simulated_bench_profile, step_scan_text

from plumelink.app.cli import main
from plumelink.drivers import bench as bench_module
from plumelink.pipeline.acquisition import runner as runner_module
from plumelink.pipeline.engine import ScanHandle, acquire
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.scan import load_scan

ROOT = Path(__file__).resolve().parents[2]
NY, NX = 3, 5


def write_scan(tmp_path: Path, *, ny: int = NY, nx: int = NX, step: str = "40.0",
               name: str = "scan.toml") -> Path:
    bench = simulated_bench_profile(tmp_path, speedup=100.0)
    path = tmp_path / name
    path.write_text(step_scan_text(bench, tmp_path / "map.h5", ny=ny, nx=nx,
                                   origin_um=(500.0, 700.0), step=step))
    return path


@pytest.fixture
def benches(monkeypatch) -> list:
    """Every bench the engine opens, kept after it closes: its simulation holds the ground
    truth (shot log, frame time label -> shot)."""
    opened: list = []
    real = bench_module.open_bench

    @contextlib.contextmanager
    def recording(profile) -> Iterator:
        with real(profile) as bench:
            opened.append(bench)
            yield bench

    monkeypatch.setattr(runner_module, "open_bench", recording)
    return opened


def check_against_truth(path: Path, bench, lines) -> int:
    """Every spot valid on both systems: both frames come from the same shot, and that shot hit
    the spot's setpoint. Returns the number of valid pairs in ``lines``."""
    bus = bench.simulation.bus
    shots = {r.number: r for r in bus.shot_log}
    pairs = 0
    with MapReader(path) as m:
        for iy in lines:
            line = m.read_line(int(iy))
            p, s = line.primary, line.secondary
            for ix in np.flatnonzero(p.valid & s.valid):
                a = bus.shot_for("primary", p.timestamp_s[ix])
                b = bus.shot_for("secondary", s.timestamp_s[ix])
                assert a is not None and a == b, f"spot ({iy}, {ix}): shots {a} and {b}"
                assert shots[a].x_um == pytest.approx(line.x_um[ix], abs=0.2)
                assert shots[a].y_um == pytest.approx(line.y_um[ix], abs=0.2)
                pairs += 1
    return pairs


def test_dry_run_prints_the_plan_and_opens_no_device(tmp_path, monkeypatch, capsys) -> None:
    scan = write_scan(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run opened the bench")

    monkeypatch.setattr(runner_module, "open_bench", refuse)
    monkeypatch.setattr(bench_module, "open_bench", refuse)
    assert main(["acquire", str(scan), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{NY} lines x {NX} spots" in out
    assert f"shots     {NY * NX} " in out
    assert "(500, 700)" in out  # the first position
    assert "procedure step-and-shoot: " in out  # which line procedure would run
    assert "no device was opened" in out
    assert not (tmp_path / "map.h5").exists()


def test_run_writes_a_complete_map_that_matches_the_ground_truth(tmp_path, benches,
                                                                 capsys) -> None:
    scan = write_scan(tmp_path)
    out = tmp_path / "elsewhere.h5"
    assert main(["acquire", str(scan), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"map: {out}" in captured.out and "status: complete" in captured.out
    # the progress bar: lines, shots/s, invalid spots per system, ETA
    bar = captured.err
    assert f"{NY}/{NY}" in bar and "line" in bar
    assert "shots/s" in bar and "invalid 0/0" in bar and "ETA" in bar
    assert not (tmp_path / "map.h5").exists()  # --out replaced the scan's output
    with MapReader(out) as m:
        assert m.status == "complete" and m.lines_done.all()
        assert m.shape == (NY, NX)
    assert len(benches) == 1
    assert check_against_truth(out, benches[0], range(NY)) == NY * NX


def test_resume_continues_an_interrupted_map(tmp_path, benches, capsys) -> None:
    ny = 4
    scan = write_scan(tmp_path, ny=ny)
    out = tmp_path / "map.h5"
    handle = ScanHandle()
    first = acquire(load_scan(scan), handle=handle,
                    on_line=lambda event: handle.abort("stop pressed"))
    assert first.status == "interrupted"
    with MapReader(out) as m:
        done_before = m.lines_done.copy()
        assert m.status == "interrupted"
    assert 1 <= done_before.sum() < ny
    assert main(["acquire", str(scan), "--resume", "-q"]) == 0
    assert "status: complete" in capsys.readouterr().out
    with MapReader(out) as m:
        assert m.status == "complete" and m.lines_done.all()
    assert len(benches) == 2
    # each run's lines agree with the ground truth of the bench that shot them
    assert check_against_truth(out, benches[0], np.flatnonzero(done_before)) == (
        done_before.sum() * NX)
    assert check_against_truth(out, benches[1], np.flatnonzero(~done_before)) == (
        (~done_before).sum() * NX)


def test_resume_of_a_complete_map_is_refused(tmp_path, capsys) -> None:
    scan = write_scan(tmp_path, ny=1, nx=2)
    assert main(["acquire", str(scan), "-q"]) == 0
    capsys.readouterr()
    assert main(["acquire", str(scan), "--resume", "-q"]) == 2
    assert "all 1 lines are written" in capsys.readouterr().err


def test_bad_scan_file_is_exit_code_2_naming_the_field(tmp_path, benches, capsys) -> None:
    scan = write_scan(tmp_path, step="-40.0")
    assert main(["acquire", str(scan)]) == 2
    err = capsys.readouterr().err
    assert "plumelink acquire: error:" in err
    assert "region.step_um" in err and str(scan) in err
    assert benches == [] and not (tmp_path / "map.h5").exists()
