"""The acquisition engine on the simulated bench, checked against the bench's ground truth:
every valid pair's two frames come from the same shot, every fault is visible in the file,
every file opens, and a map resumed after SIGKILL keeps the lines written before the kill."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scan_files import simulated_bench_profile, step_scan_text

from plumelink.drivers.bench import open_bench
from plumelink.drivers.errors import InstrumentError, ProtocolError
from plumelink.drivers.sim.bench_bus import ShotFault
from plumelink.pipeline.engine import ScanHandle, acquire, iter_lines
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.scan import parse_scan

ROOT = Path(__file__).resolve().parents[2]
NY, NX = 3, 6


def scan_text(bench: Path, out: Path, *, ny: int = NY, nx: int = NX, reshoot: bool = False,
              shots: int = 1) -> str:
    return step_scan_text(bench, out, ny=ny, nx=nx, reshoot=reshoot, shots=shots)


@pytest.fixture
def setup(tmp_path: Path, sim_profile: Path):
    bench = sim_profile
    out = tmp_path / "map.h5"

    def make(**kwargs):
        return parse_scan(scan_text(bench, out, **kwargs), source="test.toml")

    return make, bench, out


def check_pairs(path: Path, bus) -> tuple[int, int]:
    """Zero mis-paired spectra: for every spot valid on both systems, the primary and the
    secondary frame map back to the same shot. Returns (valid pairs, spots)."""
    pairs = 0
    with MapReader(path) as m:
        ny, nx = m.shape
        for iy in np.flatnonzero(m.lines_done):
            line = m.read_line(int(iy))
            for ix in range(nx):
                p, s = line.primary, line.secondary
                if p.valid[ix] and s.valid[ix]:
                    a = bus.shot_for("primary", p.timestamp_s[ix])
                    b = bus.shot_for("secondary", s.timestamp_s[ix])
                    assert a is not None and a == b, f"mis-paired spot ({iy}, {ix}): {a} vs {b}"
                    pairs += 1
                for system in (p, s):
                    if not system.valid[ix]:
                        assert np.isnan(system.timestamp_s[ix])
                        assert system.frame_id[ix] == -1
        return pairs, ny * nx


def test_clean_scan_pairs_every_spot_at_its_position(setup) -> None:
    make, bench_path, out = setup
    scan = make()
    events = []
    with open_bench(bench_path) as bench:
        result = acquire(scan, bench=bench, on_line=events.append)
        ddg = bench.emulators["delay_generator"]
        assert ddg.outputs_inhibited  # the scan left the laser disabled
        log = {r.number: r for r in bench.simulation.shot_log}
        bus = bench.simulation.bus
        assert check_pairs(out, bus) == (NY * NX, NY * NX)
        with MapReader(out) as m:
            assert m.status == "complete"
            assert m.shape == (NY, NX)
            for iy in range(NY):
                line = m.read_line(iy)
                for ix in range(NX):
                    shot = log[bus.shot_for("primary", line.primary.timestamp_s[ix])]
                    # the shot hit the spot the map says, where the stage really was
                    assert shot.x_um == pytest.approx(line.x_um[ix], abs=0.2)
                    assert shot.y_um == pytest.approx(line.y_um[ix], abs=0.2)
                    assert line.x_measured_um[ix] == pytest.approx(shot.x_um, abs=0.2)
                assert (line.primary.emissivity > 0).all()
            settings = m.settings
            assert settings["acquisition"]["mode"] == "step"
            assert settings["simulation"]["seed"] == 0
            assert "[region]" in m.metadata["scan_config"]
    assert result.status == "complete" and result.lines_written == NY
    assert result.invalid_primary == result.invalid_secondary == 0
    assert result.shots == NY * NX
    # a line event per line, with progress, after its line was on disk
    deadline = time.monotonic() + 5
    while len(events) < NY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.line.index for e in events] == list(range(NY))
    assert events[-1].progress.lines_done == NY
    assert events[-1].progress.shots_done == NY * NX


def test_the_scan_starts_with_its_axes_and_procedure(setup) -> None:
    """Before its first line a scan publishes what a view needs: the grid, both wavelength
    axes (those the map file records) and the procedure the plan chose."""
    from plumelink.pipeline.engine import start_acquisition
    from plumelink.pipeline.line_events import LineEvent, ScanStarted

    make, bench_path, out = setup
    with open_bench(bench_path) as bench:
        running = start_acquisition(make(), bench=bench)
        events = list(running.events)
        running.wait()
    assert isinstance(events[0], ScanStarted)
    assert all(isinstance(e, LineEvent) for e in events[1:]) and len(events) == 1 + NY
    first = events[0]
    assert (first.procedure, first.order, first.line_axis) == (
        "step-and-shoot", "snake-horizontal", "y")
    assert first.shape == (NY, NX) and first.map_path == str(out)
    assert (first.lines_total, first.lines_done, first.shots_total) == (NY, 0, NY * NX)
    with MapReader(out) as m:
        for system in ("primary", "secondary"):
            np.testing.assert_array_equal(first.wavelength_nm[system], m.wavelength_nm(system))
        np.testing.assert_array_equal(first.x_um, m.x_um)
        assert m.settings["acquisition"]["procedure"] == "step-and-shoot"


@pytest.mark.parametrize("fault,invalid", [
    (ShotFault.missed("primary"), {"primary"}),
    (ShotFault.missed("secondary"), {"secondary"}),
    (ShotFault.missed("spectrometers"), {"primary", "secondary"}),
    (ShotFault.duplicate("primary"), set()),
    (ShotFault.late("secondary", 0.8), {"secondary"}),
])
def test_per_shot_faults_are_flagged_never_shifted(setup, fault, invalid) -> None:
    make, bench_path, out = setup
    scan = make()
    k = 8  # the 9th spot in shot order: line 1 (a reversed snake line), column 6 - 1 - 2
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + k: fault})
        result = acquire(scan, bench=bench)
        pairs, spots = check_pairs(out, sim.bus)
        with MapReader(out) as m:
            line = m.read_line(1)
            assert m.status == "complete"
            for system in ("primary", "secondary"):
                valid = getattr(line, system).valid
                assert valid[NX - 1 - (k - NX)] == (system not in invalid), system
                assert valid.sum() == NX - (system in invalid)
    assert result.invalid_primary == ("primary" in invalid)
    assert result.invalid_secondary == ("secondary" in invalid)
    assert pairs == spots - bool(invalid)


def test_reshoot_replaces_a_missed_spot(setup) -> None:
    make, bench_path, out = setup
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + 2: ShotFault.missed("secondary")})
        result = acquire(make(reshoot=True), bench=bench)
        assert check_pairs(out, sim.bus) == (NY * NX, NY * NX)
    assert result.invalid_secondary == 0
    assert result.shots == NY * NX + 1


@pytest.mark.parametrize("faults,kept_first", [
    ({2: ShotFault.missed("secondary")}, False),  # the re-shoot gives the pair
    ({2: ShotFault.missed("secondary"), 3: ShotFault.missed("spectrometers")}, True),
], ids=["reshoot-better", "reshoot-worse"])
def test_a_reshot_spot_stores_the_shot_its_spectra_come_from(setup, faults, kept_first) -> None:
    """Every stored spectrum's frame comes from the shot the map's shot_id names, re-shoots
    included; a re-shoot that gives less than the first burst does not replace it."""
    make, bench_path, out = setup
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        sim.inject({n0 + k: f for k, f in faults.items()})
        acquire(make(reshoot=True), bench=bench)
        with MapReader(out) as m:
            checked = 0
            for iy in range(NY):
                line = m.read_line(iy)
                for system in ("primary", "secondary"):
                    s = getattr(line, system)
                    for ix in np.flatnonzero(s.valid):
                        shot = sim.bus.shot_for(system, s.timestamp_s[ix])
                        assert shot - n0 == line.shot_id[ix], (iy, ix, system)
                        checked += 1
            spot = m.read_line(0)  # spot 2 of line 0 (shot 2)
            assert spot.shot_id[2] == (2 if kept_first else 3)
            assert spot.primary.valid[2] and spot.secondary.valid[2] != kept_first
            assert spot.shot_id[3] == 4  # the next spot: the shot after the re-shoot
    assert checked == 2 * NY * NX - kept_first


def test_several_shots_per_spot_average_only_shots_seen_by_both(setup) -> None:
    make, bench_path, out = setup
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        sim.inject({n0 + 1: ShotFault.missed("primary")})  # spot 0, its second shot
        acquire(make(ny=1, nx=2, shots=3), bench=bench)
        log = {r.number: r for r in sim.shot_log}
        with MapReader(out) as m:
            line = m.read_line(0)
        assert line.primary.valid.all() and line.secondary.valid.all()
        # spot 0 keeps the shots 0 and 2; the secondary mean excludes shot 1 as well
        assert sim.bus.shot_for("secondary", line.secondary.timestamp_s[0]) == n0
        assert set(log[n0 + 1].frames) == {"secondary"}


@pytest.mark.parametrize("target,kind,error", [  # a stage timeout is retried: test_engine_recovery
    ("delay_generator", "garbage", ProtocolError),
    ("primary", "disconnect", InstrumentError),
])
def test_device_faults_stop_safely_and_keep_the_file(setup, target, kind, error) -> None:
    make, bench_path, out = setup
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + NX + 2: getattr(ShotFault, kind)(target)})
        with pytest.raises(error):
            acquire(make(), bench=bench)
        assert bench.emulators["delay_generator"].outputs_inhibited
        check_pairs(out, sim.bus)
    with MapReader(out) as m:  # every file opens
        assert m.status == "interrupted"
        assert error.__name__ in m.status_reason
        assert m.lines_done[0] and not m.lines_done[-1]


def test_abort_from_another_thread_marks_interrupted(setup) -> None:
    make, bench_path, out = setup
    handle = ScanHandle()

    def stop_after_first_line(event) -> None:
        handle.abort("stop pressed")

    with open_bench(bench_path) as bench:
        result = acquire(make(ny=6), bench=bench, handle=handle, on_line=stop_after_first_line)
        assert bench.emulators["delay_generator"].outputs_inhibited
    assert result.status == "interrupted" and result.reason == "stop pressed"
    with MapReader(out) as m:
        assert m.status == "interrupted" and m.status_reason == "stop pressed"
        assert 1 <= m.n_lines_done < 6


def test_pause_holds_between_lines_and_resume_continues(setup) -> None:
    make, bench_path, _ = setup
    handle = ScanHandle()
    handle.pause()
    with open_bench(bench_path) as bench:
        events = iter_lines(make(), bench=bench, handle=handle)
        thread = threading.Timer(0.5, handle.resume)
        thread.start()
        started = time.monotonic()
        got = [e.line.index for e in events]
        assert time.monotonic() - started >= 0.5
    assert got == list(range(NY))


def test_scan_without_settings_for_a_system_is_refused(setup) -> None:
    _, bench_path, out = setup
    text = scan_text(bench_path, out).replace("[spectrometers.secondary]\n"
                                              "integration_time_s = 1.05e-3\n", "")
    scan = parse_scan(text, source="half.toml")
    with pytest.raises(ValueError, match=r"half\.toml: .*spectrometers\.secondary"):
        acquire(scan)
    assert not out.exists()


KILL_SCRIPT = """
import os, signal, sys
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.scan import load_scan

def on_line(event):
    print(f"line {event.line.index}", flush=True)
    if event.progress.lines_done == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "close":  # killed after the last line, before the file is closed
    MapWriter.close = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
acquire(load_scan(sys.argv[1]), on_line=on_line)
"""


@pytest.mark.parametrize("kill_at", ["2", "close"])
def test_killed_scan_resumes_into_the_same_file(tmp_path: Path, sim_profile: Path,
                                                kill_at: str) -> None:
    bench = sim_profile
    ny = 5
    killed, whole = tmp_path / "killed.h5", tmp_path / "whole.h5"
    for name, out in (("killed", killed), ("whole", whole)):
        (tmp_path / f"{name}.toml").write_text(scan_text(bench, out, ny=ny))
    k = ny if kill_at == "close" else int(kill_at)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "killed.toml"),
                           kill_at], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with MapReader(killed) as m:
        done_at_kill = m.lines_done.copy()
        assert m.status == "running"  # killed: nobody could mark it
    assert done_at_kill[:k].all()
    from plumelink.pipeline.scan import load_scan

    result = acquire(load_scan(tmp_path / "killed.toml"), resume=True)
    assert result.status == "complete"
    assert result.lines_written == ny - int(done_at_kill.sum())
    acquire(load_scan(tmp_path / "whole.toml"))
    with MapReader(killed) as a, MapReader(whole) as b:
        assert a.lines_done.all() and a.status == "complete"
        for iy in np.flatnonzero(done_at_kill):
            la, lb = a.read_line(int(iy)), b.read_line(int(iy))
            # the same shots on the same spots: the lines before the kill equal the
            # uninterrupted map's, spectra included
            np.testing.assert_array_equal(la.primary.spectra, lb.primary.spectra)
            np.testing.assert_array_equal(la.secondary.spectra, lb.secondary.spectra)
            np.testing.assert_array_equal(la.x_measured_um, lb.x_measured_um)
        for iy in range(ny):
            assert a.read_line(iy).primary.valid.all()
        # ids go on where the killed run stopped: unique in the map, as in one whole run
        for field in ("shot_id", "primary.frame_id", "secondary.frame_id"):
            def ids(m: MapReader, field: str = field) -> np.ndarray:
                lines = [m.read_line(iy) for iy in range(ny)]
                if "." in field:
                    system, name = field.split(".")
                    return np.array([getattr(getattr(ln, system), name) for ln in lines])
                return np.array([getattr(ln, field) for ln in lines])
            np.testing.assert_array_equal(ids(a), ids(b), err_msg=field)
            assert np.unique(ids(a)).size == ids(a).size


def test_a_complete_map_is_not_resumed(tmp_path: Path, sim_profile: Path) -> None:
    from plumelink.pipeline.map_layout import MapFileError
    from plumelink.pipeline.scan import load_scan

    (tmp_path / "scan.toml").write_text(scan_text(sim_profile, tmp_path / "map.h5", ny=2))
    acquire(load_scan(tmp_path / "scan.toml"))
    before = (tmp_path / "map.h5").read_bytes()
    with pytest.raises(MapFileError, match="it is complete"):
        acquire(load_scan(tmp_path / "scan.toml"), resume=True)
    assert (tmp_path / "map.h5").read_bytes() == before


def test_a_resume_is_refused_before_any_device_is_opened(tmp_path: Path, sim_profile: Path,
                                                        monkeypatch) -> None:
    """A missing, foreign, complete or mismatched map is refused without opening the bench
    (no stage homed, no DDG touched for a file that cannot be resumed)."""
    import plumelink.pipeline.acquisition.runner as runner
    from plumelink.pipeline.map_layout import MapFileError
    from plumelink.pipeline.scan import load_scan

    opened: list[object] = []
    real = runner.open_bench

    def spy(profile):  # records, then opens the real simulated bench
        opened.append(profile)
        return real(profile)

    monkeypatch.setattr(runner, "open_bench", spy)
    scan = tmp_path / "scan.toml"
    scan.write_text(scan_text(sim_profile, tmp_path / "map.h5", ny=2))
    with pytest.raises(FileNotFoundError, match="no such map file"):
        acquire(load_scan(scan), resume=True)
    (tmp_path / "map.h5").write_text("not a map")
    with pytest.raises(MapFileError, match="not an HDF5 file"):
        acquire(load_scan(scan), resume=True)
    assert opened == []
    (tmp_path / "map.h5").unlink()
    acquire(load_scan(scan))  # a complete map: the one open so far
    assert len(opened) == 1
    with pytest.raises(MapFileError, match="it is complete"):
        acquire(load_scan(scan), resume=True)
    other = tmp_path / "other.toml"  # the same file, another grid
    other.write_text(scan_text(sim_profile, tmp_path / "map.h5", ny=3))
    with pytest.raises((MapFileError, ValueError)):
        acquire(load_scan(other), resume=True)
    assert len(opened) == 1


def test_killed_vertical_scan_resumes_its_columns(tmp_path: Path, sim_profile: Path) -> None:
    import h5py

    bench = sim_profile
    ny, nx = 3, 5
    killed, whole = tmp_path / "killed.h5", tmp_path / "whole.h5"
    for name, out in (("killed", killed), ("whole", whole)):
        (tmp_path / f"{name}.toml").write_text(vertical(scan_text(bench, out, ny=ny, nx=nx)))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "killed.toml"),
                           "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with h5py.File(killed, "r", swmr=True) as f:  # a killed SWMR writer: readable this way
        columns = f["map/columns_done"][()].astype(bool)
    assert columns[:2].all() and not columns.all()
    from plumelink.pipeline.scan import load_scan

    result = acquire(load_scan(tmp_path / "killed.toml"), resume=True)
    assert result.status == "complete" and result.lines_written == nx - columns.sum()
    acquire(load_scan(tmp_path / "whole.toml"))
    with MapReader(killed) as a, MapReader(whole) as b:
        assert a.lines_done.all() and a.status == "complete"
        for iy in range(ny):
            la, lb = a.read_line(iy), b.read_line(iy)
            np.testing.assert_array_equal(la.primary.spectra[columns],
                                          lb.primary.spectra[columns])
            np.testing.assert_array_equal(la.y_measured_um[columns], lb.y_measured_um[columns])
            assert la.primary.valid.all() and la.secondary.valid.all()


def fly_scan_text(bench: Path, out: Path, *, ny: int = 3, nx: int = 20) -> str:
    return textwrap.dedent(f"""\
        sample = "pegmatite test piece"
        operator = "pytest"
        bench = "{bench}"
        output = "{out}"
        [region]
        origin_um = [1000.0, 1000.0]
        size_um = [{25.0 * nx}, {25.0 * ny}]
        step_um = 25.0
        [acquisition]
        mode = "fly"
        [fly]
        trigger = "ddg-clock"
        speed_um_s = 25000.0
        run_up_um = 60.0
        [laser]
        rate_hz = 1000.0
        [stage]
        speed_um_s = 50000.0
        settle_s = 0.0
        [ddg]
        laser_delay_s = 180e-6
        spectrometer_delay_s = 1e-6
        gate_s = 10e-6
        [spectrometers.primary]
        integration_time_s = 0.5e-3
        [spectrometers.secondary]
        integration_time_s = 0.5e-3
        """)


def test_fly_scan_shots_land_on_their_spots(tmp_path: Path, sim_profile: Path) -> None:
    """The stage's distance trigger starts the DDG burst at the first spot; the DDG clock at
    1 kHz and the fly speed put every shot one step further, in both snake directions."""
    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    scan = parse_scan(fly_scan_text(bench_path, out), source="fly.toml")
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + 25: ShotFault.missed("secondary")})
        result = acquire(scan, bench=bench)
        log = {r.number: r for r in sim.shot_log}
        pairs, spots = check_pairs(out, sim.bus)
        with MapReader(out) as m:
            assert m.settings["acquisition"]["mode"] == "fly"
            assert m.settings["acquisition"]["procedure"] == "fly-ddg-clock"
            for iy in range(3):
                line = m.read_line(iy)
                for ix in np.flatnonzero(line.primary.valid):
                    shot = log[sim.bus.shot_for("primary", line.primary.timestamp_s[ix])]
                    assert shot.x_um == pytest.approx(line.x_um[ix], abs=0.5)
                    assert shot.y_um == pytest.approx(line.y_um[ix], abs=0.5)
            # shot 25 of the scan is line 1 (reversed), its 6th shot: column 20 - 1 - 5
            assert not m.read_line(1).secondary.valid[14]
        assert bench.emulators["delay_generator"].outputs_inhibited
        # the scan ends with the stage at its own speed again, not the fly speed
        assert bench.stage.speed() == pytest.approx(50000.0, rel=1e-3)
    assert (pairs, spots) == (59, 60)
    assert result.invalid_secondary == 1 and result.invalid_primary == 0


# shot k of a 3 x 20 fly scan: line k // 20; odd lines run backwards (column 19 - k % 20)
@pytest.mark.parametrize("faults,lost", [
    ({25: ShotFault.duplicate("primary")}, {}),
    ({20: ShotFault.missed("secondary"), 25: ShotFault.duplicate("primary")},
     {"secondary": [(1, 19)]}),
    ({5: ShotFault.duplicate("primary"), 19: ShotFault.duplicate("secondary")}, {}),
    ({25: ShotFault.garbage("primary")}, {"primary": [(1, 14)]}),
    ({1: ShotFault.garbage("secondary"), 59: ShotFault.garbage("primary")},
     {"secondary": [(0, 1)], "primary": [(2, 19)]}),
], ids=["duplicate", "duplicate-and-missed-first", "duplicates-first-pass", "corrupt",
        "corrupt-early-and-last"])
def test_fly_duplicates_and_corrupt_frames_lose_only_their_own_shots(
        tmp_path: Path, sim_profile: Path, faults, lost) -> None:
    """A frame sent twice costs nothing; a corrupt frame costs its own shot on its own system
    (flagged "corrupt frame"), and the scan goes on."""
    out = tmp_path / "fly.h5"
    scan = parse_scan(fly_scan_text(sim_profile, out), source="fly.toml")
    reasons: list[dict[str, list[str]]] = []
    with open_bench(sim_profile) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        sim.inject({n0 + k: fault for k, fault in faults.items()})
        result = acquire(scan, bench=bench, on_line=lambda e: reasons.append(e.reasons))
        pairs, spots = check_pairs(out, sim.bus)
    assert result.status == "complete"
    with MapReader(out) as m:
        for system in ("primary", "secondary"):
            invalid = [(iy, int(ix)) for iy in range(3)
                       for ix in np.flatnonzero(~getattr(m.read_line(iy), system).valid)]
            assert invalid == lost.get(system, []), system
    corrupt = [why for r in reasons for system in r for why in r[system]]
    if any(f.kind.value == "garbage" for f in faults.values()):
        assert corrupt and all(why.endswith("corrupt frame") for why in corrupt)
    assert pairs == spots - sum(len(v) for v in lost.values())


def test_a_device_clock_that_wraps_mid_scan_is_followed(tmp_path: Path,
                                                        sim_profile: Path) -> None:
    """The primary's u32 time label wraps during the scan's second pass: no spot is lost and
    the stored device times go on past the wrap."""
    out = tmp_path / "fly.h5"
    scan = parse_scan(fly_scan_text(sim_profile, out, ny=4), source="fly.toml")
    with open_bench(sim_profile) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number: ShotFault.clock_wrap("primary", after_s=0.03)})
        result = acquire(scan, bench=bench)
        pairs, spots = check_pairs(out, sim.bus)
        wrap_s = (1 << 32) * 1e-5
    assert result.status == "complete" and (pairs, spots) == (80, 80)
    with MapReader(out) as m:
        first, last = m.read_line(0).primary.timestamp_s, m.read_line(3).primary.timestamp_s
    assert np.nanmin(first) < wrap_s < np.nanmin(last)


def test_an_error_setting_up_the_next_pass_keeps_the_pass_just_shot(tmp_path: Path,
                                                                    sim_profile: Path) -> None:
    """The next pass is set up while this pass's frames are read out: a stage error there
    ends the scan (once the [recovery] retries are spent: the stage keeps failing) only after
    this line is paired and written."""
    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    scan = parse_scan(fly_scan_text(bench_path, out), source="fly.toml")
    with open_bench(bench_path) as bench:
        configure = bench.stage.configure_distance_trigger
        calls = []

        def failing_second(*args, **kwargs):  # from the set-up of line 1, during line 0's
            calls.append(args)  # read-out, on
            if len(calls) >= 2:
                raise InstrumentError("trigger rejected", device="stage")
            return configure(*args, **kwargs)

        bench.stage.configure_distance_trigger = failing_second
        with pytest.raises(InstrumentError, match="trigger rejected"):
            acquire(scan, bench=bench)
        assert check_pairs(out, bench.simulation.bus) == (20, 60)  # line 0: 20 pairs
    with MapReader(out) as m:
        assert m.status == "interrupted" and "trigger rejected" in m.status_reason
        assert m.lines_done.tolist() == [True, False, False]
        assert m.read_line(0).primary.valid.all() and m.read_line(0).secondary.valid.all()


@pytest.mark.parametrize(("order", "speed_commands"),
                         [("snake-horizontal", 3), ("plain-horizontal", 7)])
def test_fly_turns_keep_the_fly_speed_unless_that_costs_time(
        tmp_path: Path, sim_profile: Path, order: str, speed_commands: int) -> None:
    """A snake's turn to the next pass (one step) is short: made at the fly speed it costs
    less than two speed commands would, so the speed is set once for all passes (plus the
    stage speed at the start and the end). A plain raster's return runs the whole line (1 mm
    and the run-ups: 22 ms longer at the fly speed than at the stage speed, more than
    REPOSITION_SLACK_S): at the stage speed, set before every return."""
    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    text = fly_scan_text(bench_path, out, nx=40).replace(
        "[region]\n", f'[region]\norder = "{order}"\n')
    scan = parse_scan(text, source="fly.toml")
    with open_bench(bench_path) as bench:
        speeds: list[float] = []
        set_speed = bench.stage.set_speed
        bench.stage.set_speed = lambda v: (speeds.append(v), set_speed(v))[1]
        result = acquire(scan, bench=bench)
        assert bench.stage.speed() == pytest.approx(50000.0, rel=1e-3)
    assert result.status == "complete" and result.invalid_primary == 0
    assert len(speeds) == speed_commands, speeds


def vertical(text: str, order: str = "snake-vertical") -> str:
    return text.replace("[region]\n", f'[region]\norder = "{order}"\n')


@pytest.mark.parametrize("order", ["snake-vertical", "plain-vertical"])
def test_vertical_orders_shoot_columns_into_the_same_map_layout(setup, order) -> None:
    """A vertical raster line is a column at fixed x; the map keeps its (ny, nx) layout, every
    spot holds the shot that hit it, and a fault lands on the spot it was injected at."""
    _, bench_path, out = setup
    ny, nx = 4, 3
    scan = parse_scan(vertical(scan_text(bench_path, out, ny=ny, nx=nx), order), source="v")
    k = 5  # shot order: column 0 (4 shots up), then column 1 (down on a snake)
    iy_fault = ny - 1 - (k - ny) if order == "snake-vertical" else k - ny
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        sim.inject({n0 + k: ShotFault.missed("primary")})
        result = acquire(scan, bench=bench)
        log = {r.number: r for r in sim.shot_log}
        assert check_pairs(out, sim.bus) == (ny * nx - 1, ny * nx)
        with MapReader(out) as m:
            assert m.shape == (ny, nx) and m.status == "complete" and m.lines_done.all()
            assert m.metadata["raster_order"] == order
            shot_id = np.array([m.read_line(iy).shot_id for iy in range(ny)])
            for iy in range(ny):
                line = m.read_line(iy)
                assert line.secondary.valid.all()
                for ix in range(nx):
                    shot = log[sim.bus.shot_for("secondary", line.secondary.timestamp_s[ix])]
                    assert shot.x_um == pytest.approx(line.x_um[ix], abs=0.2)
                    assert shot.y_um == pytest.approx(line.y_um[ix], abs=0.2)
                    assert line.y_measured_um[ix] == pytest.approx(shot.y_um, abs=0.2)
                    assert shot.number - n0 == shot_id[iy, ix]
                assert line.primary.valid.sum() == nx - (iy == iy_fault)
            assert not m.read_line(iy_fault).primary.valid[1]
    # columns are shot one after the other, each up (or down on odd snake columns)
    columns = shot_id.T
    assert (columns[0] == np.arange(ny)).all()
    expected = np.arange(ny, 2 * ny)
    assert (columns[1] == (expected[::-1] if order == "snake-vertical" else expected)).all()
    assert result.lines_total == nx and result.invalid_primary == 1


def test_vertical_map_resumes_from_its_first_unfinished_column(setup) -> None:
    import h5py

    make, bench_path, out = setup
    ny, nx = 3, 4
    scan = parse_scan(vertical(scan_text(bench_path, out, ny=ny, nx=nx)), source="v")
    handle = ScanHandle()
    with open_bench(bench_path) as bench:
        first = acquire(scan, bench=bench, handle=handle,
                        on_line=lambda event: handle.abort("stop pressed"))
        sim = bench.simulation
        assert first.status == "interrupted"
        with h5py.File(out, "r") as f:
            columns = f["map/columns_done"][()].astype(bool)
            assert 1 <= columns.sum() < nx
            assert not f["map/lines_done"][()].any()  # no row is whole yet
        with MapReader(out) as m:
            before = np.array([m.read_line(iy).primary.spectra for iy in range(ny)])
        with pytest.raises(ValueError, match="of columns but the scan plans 3 x 4 of rows"):
            acquire(make(ny=ny, nx=nx), bench=bench, resume=True)  # a horizontal scan
        events, starts = [], []
        second = acquire(scan, bench=bench, resume=True, on_line=events.append,
                         on_start=starts.append)
        assert second.lines_written == nx - columns.sum()
        deadline = time.monotonic() + 5
        while len(events) < second.lines_written and time.monotonic() < deadline:
            time.sleep(0.01)
        # the start of a resumed map says what it already holds and what this run shoots
        assert len(starts) == 1 and starts[0].line_axis == "x"
        assert starts[0].lines_done == columns.sum()
        assert starts[0].shots_total == (nx - columns.sum()) * ny
        # progress counts the whole map's lines but this run's shots (for shots/s and ETA)
        last = events[-1].progress
        assert (last.lines_done, last.lines_total) == (nx, nx)
        assert last.shots_done == last.shots_total == (nx - columns.sum()) * ny
        assert events[-1].line_axis == "x"
        assert check_pairs(out, sim.bus) == (ny * nx, ny * nx)
    with MapReader(out) as m:
        assert m.status == "complete" and m.lines_done.all()
        after = np.array([m.read_line(iy).primary.spectra for iy in range(ny)])
    np.testing.assert_array_equal(after[:, columns], before[:, columns])


def test_vertical_fly_scan_shots_land_on_their_spots(tmp_path: Path, sim_profile: Path) -> None:
    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    scan = parse_scan(vertical(fly_scan_text(bench_path, out, ny=10, nx=2)), source="fly")
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        acquire(scan, bench=bench)
        log = {r.number: r for r in sim.shot_log}
        assert check_pairs(out, sim.bus) == (20, 20)
        with MapReader(out) as m:
            assert m.shape == (10, 2)
            for iy in range(10):
                line = m.read_line(iy)
                for ix in range(2):
                    shot = log[sim.bus.shot_for("primary", line.primary.timestamp_s[ix])]
                    assert shot.x_um == pytest.approx(line.x_um[ix], abs=0.5)
                    assert shot.y_um == pytest.approx(line.y_um[ix], abs=0.5)


def stage_distance(text: str) -> str:
    return text.replace('trigger = "ddg-clock"', 'trigger = "stage-distance"')


@pytest.mark.parametrize("order", ["snake-horizontal", "plain-vertical"])
def test_stage_distance_fly_scan_fires_one_shot_per_step(tmp_path: Path, sim_profile: Path,
                                                         order) -> None:
    """Every rising edge of the stage's distance trigger fires one DDG shot: shots land on the
    spots by distance, a missed frame is flagged on its own spot, nothing shifts."""
    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    ny, nx = (3, 12) if order.endswith("horizontal") else (12, 3)
    text = vertical(stage_distance(fly_scan_text(bench_path, out, ny=ny, nx=nx)), order)
    scan = parse_scan(text, source="fly.toml")
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        n0 = sim.next_shot_number
        sim.inject({n0 + 14: ShotFault.missed("primary")})  # 2nd line, its 3rd shot
        result = acquire(scan, bench=bench)
        ddg = bench.emulators["delay_generator"]
        log = {r.number: r for r in sim.shot_log}
        assert len(log) == 36 and ddg.ignored_triggers == 0  # one shot per spot, no more
        assert check_pairs(out, sim.bus) == (35, 36)
        with MapReader(out) as m:
            for iy in range(ny):
                line = m.read_line(iy)
                for ix in range(nx):
                    shot = log[sim.bus.shot_for("secondary", line.secondary.timestamp_s[ix])]
                    assert shot.x_um == pytest.approx(line.x_um[ix], abs=0.2)
                    assert shot.y_um == pytest.approx(line.y_um[ix], abs=0.2)
                    assert shot.number - n0 == line.shot_id[ix]
            missed = np.argwhere(np.array([m.read_line(iy).primary.valid
                                           for iy in range(ny)]) == 0)
            shot_ids = np.array([m.read_line(iy).shot_id for iy in range(ny)])
        assert [shot_ids[tuple(missed[0])]] == [14] and len(missed) == 1
        assert ddg.outputs_inhibited
    assert result.invalid_primary == 1 and result.invalid_secondary == 0


def test_stage_distance_needs_a_stage_with_a_distance_trigger(tmp_path: Path,
                                                              sim_profile: Path) -> None:
    from plumelink.drivers.bench import Bench

    bench_path = sim_profile
    out = tmp_path / "fly.h5"
    scan = parse_scan(stage_distance(fly_scan_text(bench_path, out)), source="fly.toml")

    class PlainStage:  # a stage driver without distance triggers (the PI one, for instance)
        def __init__(self, stage) -> None:
            self._stage = stage

        def __getattr__(self, name: str):
            if name in ("configure_distance_trigger", "disable_distance_trigger"):
                raise AttributeError(name)
            return getattr(self._stage, name)

    with open_bench(bench_path) as bench:
        fields = {f: getattr(bench, f) for f in Bench.__dataclass_fields__}
        plain = Bench(**{**fields, "stage": PlainStage(bench.stage)})
        with pytest.raises(NotImplementedError, match="PlainStage has no "
                                                      "configure_distance_trigger"):
            acquire(scan, bench=plain)
        assert bench.emulators["delay_generator"].outputs_inhibited


def test_a_failed_line_write_ends_the_scan_interrupted_with_earlier_lines_kept(
        setup, monkeypatch) -> None:
    from plumelink.pipeline.line_sink import LineWriteError
    from plumelink.pipeline.map_writer import MapWriter

    make, bench_path, out = setup
    real = MapWriter.append_line

    def failing(self, line):
        if line.index == 2:
            raise OSError("No space left on device")
        real(self, line)

    monkeypatch.setattr(MapWriter, "append_line", failing)
    with open_bench(bench_path) as bench:
        with pytest.raises(LineWriteError, match="No space left"):
            acquire(make(ny=5), bench=bench)
        assert bench.emulators["delay_generator"].outputs_inhibited
    with MapReader(out) as m:
        assert m.status == "interrupted" and "No space left" in m.status_reason
        assert list(m.lines_done) == [True, True, False, False, False]


@pytest.mark.parametrize("home", [True, False])
def test_abort_during_homing_or_a_long_move_ends_the_scan_at_once(tmp_path: Path, home) -> None:
    # real time: homing, then a first move of 50 mm at 10 mm/s (5 s); the abort after 0.3 s
    # falls in homing (home=True) or in the move (home=False); the abort stops the stage
    from plumelink.pipeline.engine import Runner, ScanAborted

    bench_path = simulated_bench_profile(tmp_path, speedup=1.0)
    out = tmp_path / "far.h5"
    scan = parse_scan(step_scan_text(bench_path, out, ny=1, nx=2,
                                     origin_um=(50000.0, 50000.0)), source="far.toml")
    handle = ScanHandle()
    runner = Runner(scan, handle=handle, home=home)
    with open_bench(bench_path) as bench:
        if not home:
            bench.stage.home()  # referenced beforehand: the scan starts with the long move
        threading.Timer(0.3, handle.abort, args=("stop pressed",)).start()
        started = time.monotonic()
        with pytest.raises(ScanAborted):
            runner.run(bench)
        took = time.monotonic() - started
        assert bench.emulators["delay_generator"].outputs_inhibited
    result = runner.result
    assert result.status == "interrupted" and result.reason == "stop pressed"
    assert took < 2.0, f"the scan took {took:.1f} s to end after the abort"
    with MapReader(out) as m:
        assert m.status == "interrupted" and m.n_lines_done == 0
