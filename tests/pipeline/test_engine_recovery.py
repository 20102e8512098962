"""Device faults on the simulated bench: a spectrometer that stops answering or drops off the
bus is reconnected and its line shot again, within the profile's [recovery] bounds, each step
logged in the map; one that never comes back ends the scan after those bounds with its map
closed, its status saying why and every line written before intact."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scan_files import step_scan_text

from plumelink.drivers.bench import BenchProfile, open_bench
from plumelink.drivers.errors import InstrumentError
from plumelink.drivers.sim.bench_bus import ShotFault
from plumelink.pipeline.acquisition.recovery import DeviceLost
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import read_device_events
from plumelink.pipeline.scan import parse_scan

NY, NX = 4, 5


def _profile(sim_profile: Path, **recovery: object) -> Path:
    """The simulated profile with its [recovery] table replaced by ``recovery``."""
    text = sim_profile.read_text()
    text = re.sub(r"(?ms)^\[recovery\].*?(?=^\[|\Z)", "", text)
    text += "\n[recovery]\n" + "".join(f"{k} = {v!r}\n" for k, v in recovery.items())
    path = sim_profile.with_name("recovery.toml")
    path.write_text(text)
    assert BenchProfile.load(path).recovery.line_retries == recovery["line_retries"]
    return path


def _scan(bench: Path, out: Path):
    return parse_scan(step_scan_text(bench, out, ny=NY, nx=NX), source="test.toml")


def _pairs_true(out: Path, bus) -> int:
    """Every spot valid on both systems: both frames from one shot of the bus. Returns the
    number of such spots."""
    n = 0
    with MapReader(out) as m:
        for iy in np.flatnonzero(m.lines_done):
            line = m.read_line(int(iy))
            for ix in range(line.nx):
                if line.primary.valid[ix] and line.secondary.valid[ix]:
                    a = bus.shot_for("primary", line.primary.timestamp_s[ix])
                    b = bus.shot_for("secondary", line.secondary.timestamp_s[ix])
                    assert a is not None and a == b, (iy, ix, a, b)
                    n += 1
    return n


@pytest.mark.parametrize("fault", ["unresponsive", "unplugged"])
def test_a_spectrometer_that_comes_back_costs_a_retry_and_the_map_is_complete(
        sim_profile: Path, tmp_path: Path, fault: str) -> None:
    bench_path = _profile(sim_profile, line_retries=2, reconnects=3, wait_s=0.01)
    out = tmp_path / "map.h5"
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        # spot 2 of line 1: the unit fails its next 4 library calls, then answers again
        sim.inject({sim.next_shot_number + NX + 2: getattr(ShotFault, fault)("primary", 4)})
        result = acquire(_scan(bench_path, out), bench=bench)
        fake = bench.emulators["spectrometers.primary"]
        assert fake.unanswered_calls == 4
        assert bench.emulators["delay_generator"].outputs_inhibited
        assert _pairs_true(out, sim.bus) == NY * NX  # the re-shot line is whole again
    assert result.status == "complete", result.reason
    assert (result.device_faults, result.retries) == (1, 1)
    with MapReader(out) as m:
        assert m.status == "complete" and m.lines_done.all()
    events = read_device_events(out)
    assert [e["event"] for e in events if e["event"] != "reconnect_failed"] == [
        "fault", "reconnect", "retry"]
    assert {e["device"] for e in events} == {"primary"} and {e["line"] for e in events} == {1}
    failed = sum(e["event"] == "reconnect_failed" for e in events)
    assert result.reconnects == 1 and failed <= 2  # the unit was back within 3 attempts
    assert "InstrumentError" in events[0]["message"] or "Timeout" in events[0]["message"]


def test_a_dead_spectrometer_ends_the_scan_after_the_bounds_with_lines_intact(
        sim_profile: Path, tmp_path: Path) -> None:
    bench_path = _profile(sim_profile, line_retries=2, reconnects=2, wait_s=0.01)
    out = tmp_path / "map.h5"
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + 2 * NX + 1: ShotFault.unplugged("secondary")})
        with pytest.raises(DeviceLost) as info:
            acquire(_scan(bench_path, out), bench=bench)
        assert bench.emulators["delay_generator"].outputs_inhibited
        before = _pairs_true(out, sim.bus)
    assert isinstance(info.value, InstrumentError)
    text = str(info.value)
    assert "secondary spectrometer (AvaSpec 2203456U2) stopped answering" in text, text
    assert "2 reconnect attempts failed" in text
    events = read_device_events(out)
    kinds = [e["event"] for e in events]
    # one fault per try of line 2: each try reconnects (2 attempts) and, once reconnected
    # (never: the unit is dead), would retry; the first fault's reconnects already fail
    assert kinds == ["fault", "reconnect_failed", "reconnect_failed", "gave_up"], kinds
    assert all(e["device"] == "secondary" and e["line"] == 2 for e in events)
    with MapReader(out) as m:
        assert m.status == "interrupted"
        assert "DeviceLost" in m.status_reason and "secondary spectrometer" in m.status_reason
        assert list(m.lines_done) == [True, True, False, False]
    assert before == 2 * NX  # the two lines written before are whole and truly paired


def test_line_retries_bound_a_device_that_fails_each_try(sim_profile: Path,
                                                        tmp_path: Path) -> None:
    """A unit that reconnects every time but fails again on each new try of the line: the
    line is tried 1 + line_retries times, then the scan ends."""
    bench_path = _profile(sim_profile, line_retries=2, reconnects=1, wait_s=0.0)
    out = tmp_path / "map.h5"
    with open_bench(bench_path) as bench:
        fake = bench.emulators["spectrometers.primary"]
        bus_hook = fake.on_call
        measures = [0]

        def fail_three_arms_of_line_1(name: str) -> None:
            if bus_hook is not None:
                bus_hook(name)
            if name == "AVS_Measure":
                measures[0] += 1  # line 0 arms NX times; line 1's first arm is NX + 1
                if NX < measures[0] <= NX + 3:
                    fake.stop_answering(1)  # this very call times out

        fake.on_call = fail_three_arms_of_line_1
        with pytest.raises(DeviceLost, match=r"raster line 1 failed 3 times \(2 retries"):
            acquire(_scan(bench_path, out), bench=bench)
    events = read_device_events(out)
    assert [e["event"] for e in events] == [
        "fault", "reconnect", "retry", "fault", "reconnect", "retry", "fault", "gave_up"]
    assert [e["attempt"] for e in events if e["event"] == "fault"] == [1, 2, 3]
    with MapReader(out) as m:
        assert list(m.lines_done) == [True, False, False, False]


def test_recovery_table_is_validated(sim_profile: Path) -> None:
    text = sim_profile.read_text().replace("line_retries = 3", "line_retries = -1")
    bad = sim_profile.with_name("bad.toml")
    bad.write_text(text)
    with pytest.raises(ValueError, match=r"\[recovery\] line_retries must be in 0\.\.100"):
        BenchProfile.load(bad)
    assert BenchProfile.load("simulated").recovery.wait_s == pytest.approx(0.05)


@pytest.mark.parametrize("fault", ["timeout", "disconnect"])
def test_a_stage_that_loses_a_reply_or_its_link_is_reconnected_and_its_line_shot_again(
        sim_profile: Path, tmp_path: Path, fault: str) -> None:
    """The stage (zaber-motion on the emulator's TCP port) loses one reply, or its server
    drops the connection: the driver's `reconnect` opens a new connection, the line is shot
    again from its start, every spot where the map says, and the device log records it."""
    bench_path = _profile(sim_profile, line_retries=1, reconnects=2, wait_s=0.01)
    out = tmp_path / "map.h5"
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        driver = bench.stage
        opened = driver._connection
        sim.inject({sim.next_shot_number + NX + 2: getattr(ShotFault, fault)("stage")})
        result = acquire(_scan(bench_path, out), bench=bench)
        assert driver._connection is not opened  # a new connection, not the old one
        assert _pairs_true(out, sim.bus) == NY * NX
        log = {r.number: r for r in sim.shot_log}
        with MapReader(out) as m:  # every spot's shot was fired where the map says it is
            for iy in range(NY):
                line = m.read_line(iy)
                for ix in range(NX):
                    shot = log[sim.bus.shot_for("primary", line.primary.timestamp_s[ix])]
                    assert (shot.x_um, shot.y_um) == pytest.approx(
                        (line.x_um[ix], line.y_um[ix]), abs=0.2)
                    assert (line.x_measured_um[ix], line.y_measured_um[ix]) == pytest.approx(
                        (line.x_um[ix], line.y_um[ix]), abs=0.2)
    assert result.status == "complete" and (result.retries, result.reconnects) == (1, 1)
    events = read_device_events(out)
    assert [(e["device"], e["event"], e["line"]) for e in events] == [
        ("stage", "fault", 1), ("stage", "reconnect", 1), ("stage", "retry", 1)]
    assert "InstrumentTimeout" in events[0]["message"] or "link lost" in events[0]["message"]


def test_a_fly_pass_whose_spectrometer_dropped_is_flown_again(sim_profile: Path,
                                                              tmp_path: Path) -> None:
    from test_engine import fly_scan_text

    bench_path = _profile(sim_profile, line_retries=1, reconnects=2, wait_s=0.01)
    out = tmp_path / "fly.h5"
    scan = parse_scan(fly_scan_text(bench_path, out, ny=3, nx=12), source="fly.toml")
    with open_bench(bench_path) as bench:
        sim = bench.simulation
        sim.inject({sim.next_shot_number + 12 + 5: ShotFault.unplugged("secondary", 3)})
        result = acquire(scan, bench=bench)
        assert _pairs_true(out, sim.bus) == 3 * 12
    assert result.status == "complete" and result.retries == 1, result
    assert [e["event"] for e in read_device_events(out)
            if e["event"] != "reconnect_failed"] == ["fault", "reconnect", "retry"]
