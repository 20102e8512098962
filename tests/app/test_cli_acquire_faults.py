"""`plumelink acquire` when a spectrometer drops off the bus mid-scan: one that comes back
costs a retry (said in the summary), one that stays gone ends the command with one line and
exit status 3, the map closed as interrupted with its finished lines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from scan_files import simulated_bench_profile, step_scan_text

from plumelink.app.cli import main
from plumelink.drivers import bench as bench_module
from plumelink.drivers.sim.bench_bus import ShotFault
from plumelink.pipeline.acquisition import runner as runner_module
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import read_device_events

NY, NX = 3, 4


def _faulty(monkeypatch, fault: ShotFault) -> None:
    """Every bench the engine opens gets ``fault`` on the second line's second shot."""
    real = bench_module.open_bench

    @contextlib.contextmanager
    def opening(profile) -> Iterator:
        with real(profile) as bench:
            sim = bench.simulation
            sim.inject({sim.next_shot_number + NX + 1: fault})
            yield bench

    monkeypatch.setattr(runner_module, "open_bench", opening)


def _scan(tmp_path: Path) -> tuple[Path, Path]:
    bench = simulated_bench_profile(tmp_path, speedup=100.0)
    out = tmp_path / "map.h5"
    scan = tmp_path / "scan.toml"
    scan.write_text(step_scan_text(bench, out, ny=NY, nx=NX))
    return scan, out


@pytest.mark.parametrize("calls", [3, None])
def test_acquire_with_a_spectrometer_that_drops_off(tmp_path: Path, monkeypatch, capsys,
                                                    calls: int | None) -> None:
    _faulty(monkeypatch, ShotFault.unplugged("secondary", calls))
    scan, out = _scan(tmp_path)
    rc = main(["acquire", str(scan), "--out", str(out), "-q"])
    captured = capsys.readouterr()
    events = [e["event"] for e in read_device_events(out)]
    with MapReader(out) as m:
        status, reason, done = m.status, m.status_reason, list(m.lines_done)
    if calls is not None:
        assert rc == 0 and status == "complete", captured.err
        assert "device faults: 1, lines shot again: 1, reconnects: 1" in captured.out
        assert events[0] == "fault" and events[-1] == "retry"
    else:
        assert rc == 3
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in captured.err, captured.err
        assert "secondary spectrometer (AvaSpec 2203456U2) stopped answering" in err[0]
        assert str(out) in err[0]
        assert status == "interrupted" and "DeviceLost" in reason
        assert done == [True, False, False] and events[-1] == "gave_up"
