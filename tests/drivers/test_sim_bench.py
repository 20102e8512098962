"""The simulated bench wired through one clock and trigger bus: real drivers over their real
transports (pyvisa-py TCP for the DG645, pyserial URL for the Zaber stage, the fake libavs for
both AvaSpecs) against the emulators, the physics behind every shot, the ground-truth shot log
and per-shot faults. Every wait has a short timeout, so a broken wiring fails, never hangs."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np
import pytest

from plumelink.drivers.avantes import frame_gaps
from plumelink.drivers.bench import Bench, BenchProfile, ProfileError, open_bench
from plumelink.drivers.errors import InstrumentError, InstrumentTimeout, ProtocolError
from plumelink.drivers.protocols import Frames
from plumelink.drivers.sim.bench_bus import FaultKind, FaultPlan, ShotFault, SimClock
from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.drivers.sim.spectrograph import InstrumentProfile

PERIOD_S = 0.02
OFFSETS = {"primary": 1234.5, "secondary": 5678.25}  # sim_clock_offset_s of simulated.toml


def _profile_data(**simulation: Any) -> dict[str, Any]:
    path = resources.files("plumelink.resources").joinpath("benches", "simulated.toml")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    # fast clock, one physics batch per burst, short real timeouts
    data["simulation"].update({"speedup": 200.0, "seed": 3, "batch_size": 10_000,
                               "max_latency_s": 30.0, **simulation})
    data["delay_generator"]["timeout_s"] = 0.5
    data["stage"]["timeout_s"] = 0.5
    for table in data["spectrometers"].values():
        table["timeout_s"] = 0.5
    return data


def _profile(**simulation: Any) -> BenchProfile:
    return BenchProfile.from_dict(_profile_data(**simulation), source="test-sim.toml")


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    with open_bench(_profile()) as opened:
        opened.stage.set_speed(1e6)
        opened.stage.home()
        opened.stage.move_absolute(1000.0, 2000.0)
        opened.stage.wait_until_idle(2.0)
        yield opened


def _fire(bench: Bench, n: int, *, period_s: float = PERIOD_S, enable: bool = True) -> None:
    for spectrometer in bench.spectrometers.values():
        spectrometer.configure(1e-3)
        spectrometer.arm(n)
    ddg = bench.delay_generator
    ddg.configure_burst(n, period_s)
    if enable:
        ddg.enable_outputs()
    ddg.fire()
    status = ddg.wait_end_of_burst(2.0)
    assert status.end_of_burst and not status.triggers_ignored


def _read(bench: Bench, role: str, timeout_s: float = 2.0) -> Frames:
    spectrometer = bench.spectrometers[role]
    spectrometer.wait_frames(timeout_s)
    return spectrometer.read_frames()


def _shots(bench: Bench, role: str, frames: Frames) -> list[int | None]:
    bus = bench.simulation.bus
    return [bus.shot_for(role, t) for t in frames.timestamps_s]


# ------------------------------------------------------------------------- the chain
def _armed_at_the_start(bench: Bench, n: int) -> int:
    """The stage at (1000, 2000) µm, both spectrometers armed for n frames; the number of
    the next shot."""
    stage = bench.stage
    stage.set_speed(1e6)
    stage.move_absolute(1000.0, 2000.0)
    stage.wait_until_idle(2.0)
    for spectrometer in bench.spectrometers.values():
        spectrometer.arm(n)
    return bench.simulation.next_shot_number


def test_burst_gives_paired_frames_with_the_physics_spectra(bench: Bench) -> None:
    sim = bench.simulation
    first = sim.next_shot_number
    _fire(bench, 50)
    frames = {role: _read(bench, role) for role in ("primary", "secondary")}
    log = [r for r in sim.shot_log if r.number >= first]
    assert [r.number for r in log] == list(range(first, first + 50))
    assert all(r.laser_fired and r.resolved for r in log)
    assert {(r.x_um, r.y_um) for r in log} == {(1000.0, 2000.0)}
    times = np.array([r.time_s for r in log])
    assert np.allclose(np.diff(times), PERIOD_S, rtol=0, atol=1e-9)
    # the same seed, fired at the same spots in the same physics batches (every shot of this
    # module's bench so far, as the bus resolved them: a loaded machine may split a burst),
    # gives the very same spectra
    physics = BenchPhysics(seed=3)
    fired = [r for r in sim.shot_log if r.physics_batch is not None]
    for batch in sorted({r.physics_batch for r in fired}):
        shots = [r for r in fired if r.physics_batch == batch]
        block = physics.shoot(np.array([r.x_um for r in shots]), np.array([r.y_um for r in shots]))
        if batch == log[0].physics_batch:
            reference = {role: [] for role in frames}
            minerals = []
        if batch >= log[0].physics_batch:
            for role in frames:
                reference[role].append(block.spectra[role])
            minerals.extend(block.truth.mineral.tolist())
    for role, got in frames.items():
        assert len(got) == 50
        np.testing.assert_array_equal(got.counts, np.concatenate(reference[role])[:50])
        axis = bench.spectrometers[role].wavelength_nm()
        np.testing.assert_array_equal(axis, InstrumentProfile.load(role).wavelength_nm())
        # device clocks: spacing = burst period, labelled from the unit's own offset
        assert np.allclose(np.diff(got.timestamps_s), PERIOD_S, atol=1.5e-5)
        assert got.timestamps_s[0] == pytest.approx(times[0] + OFFSETS[role], abs=1e-5)
        assert _shots(bench, role, got) == list(range(first, first + 50))
        assert [r.frames[role] for r in log] == pytest.approx(list(got.timestamps_s))
    # real emission lines: the brightest pixel stands far above the dark level
    mean = frames["primary"].counts.mean(axis=0)
    assert mean.max() > np.median(mean) + 1000
    assert [r.mineral for r in log] == [
        bench.simulation.physics.mineral_names[m] for m in minerals[:50]]


def test_the_physics_thread_resolves_a_finished_burst_without_a_poll(bench: Bench) -> None:
    """The instruments work while the host talks to other devices: once a burst has ended,
    its spectra are computed without any spectrometer call, and a later poll gets them."""
    sim = bench.simulation
    first = sim.next_shot_number
    _fire(bench, 20)
    deadline = time.monotonic() + 5.0
    while sim.bus.pending_shots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.bus.pending_shots == 0
    log = [r for r in sim.shot_log if r.number >= first]
    assert len(log) == 20 and all(r.resolved for r in log)
    for role in ("primary", "secondary"):
        assert _shots(bench, role, _read(bench, role)) == list(range(first, first + 20))


def test_stage_moved_between_bursts_changes_the_sampled_spot(bench: Bench) -> None:
    sim = bench.simulation
    first = sim.next_shot_number
    _fire(bench, 10)
    before = _read(bench, "primary")
    _read(bench, "secondary")
    bench.stage.move_absolute(30_000.0, 2500.0)
    bench.stage.wait_until_idle(2.0)
    _fire(bench, 10)
    after = _read(bench, "primary")
    _read(bench, "secondary")
    log = [r for r in sim.shot_log if r.number >= first]
    assert [(r.x_um, r.y_um) for r in log] == [(1000.0, 2000.0)] * 10 + [(30_000.0, 2500.0)] * 10
    assert not np.array_equal(before.counts, after.counts)
    bench.stage.move_absolute(1000.0, 2000.0)
    bench.stage.wait_until_idle(2.0)


def test_shots_during_a_move_sample_the_moving_stage(bench: Bench) -> None:
    sim = bench.simulation
    stage = bench.stage
    sim.clock.speedup = 20.0  # a 2 s move = 0.1 s real, a 5 s burst = 0.25 s real
    try:
        for spectrometer in bench.spectrometers.values():
            spectrometer.arm(50)
        ddg = bench.delay_generator
        ddg.configure_burst(50, 0.1)
        ddg.enable_outputs()
        first = sim.next_shot_number
        stage.set_speed(500.0)
        stage.move_absolute(2000.0, 2000.0)
        ddg.fire()
        assert ddg.wait_end_of_burst(2.0).end_of_burst
        for role in bench.spectrometers:
            _read(bench, role)
        stage.wait_until_idle(2.0)
    finally:
        sim.clock.speedup = 200.0
    stage.set_speed(1e6)
    x = np.array([r.x_um for r in sim.shot_log if r.number >= first])
    assert x.size == 50 and np.all(np.diff(x) >= 0) and x[-1] == 2000.0
    assert np.unique(x).size > 5  # sampled along the move, not only at its ends
    stage.move_absolute(1000.0, 2000.0)
    stage.wait_until_idle(2.0)


def test_stage_distance_trigger_fires_one_shot_per_rising_edge(bench: Bench) -> None:
    """Wiring of stage-distance fly scans: the stage toggles output 1 every half step, the DDG
    (external rising edge, no burst) fires once per rising edge, i.e. once per step of travel,
    and each shot samples the stage exactly there."""
    sim, stage, ddg = bench.simulation, bench.stage, bench.delay_generator
    n, step = 8, 25.0
    first = _armed_at_the_start(bench, n)
    try:
        stage.set_digital_output("x", 1, 1)  # high before the DDG listens: no shot
        assert stage.configure_distance_trigger("x", step / 2, count=2 * n) == step / 2
        ddg.set_burst_mode(False)
        ddg.enable_outputs()
        ddg.set_trigger_source("EXTERNAL_RISING")
        stage.set_speed(25_000.0)
        stage.move_absolute(1000.0 + (n + 2) * step, 2000.0)  # two more steps: no more shots
        stage.wait_until_idle(2.0)
        frames = {role: _read(bench, role) for role in bench.spectrometers}
    finally:
        ddg.disable_outputs()
        stage.disable_distance_trigger("x")
        stage.set_speed(1e6)
    shots = [r for r in sim.shot_log if r.number >= first]
    x = np.array([r.x_um for r in shots])
    np.testing.assert_allclose(x, 1000.0 + step * np.arange(1, n + 1), atol=0.11)
    assert all(r.laser_fired for r in shots)
    assert bench.emulators["delay_generator"].ignored_triggers == 0
    for role, got in frames.items():
        assert _shots(bench, role, got) == [r.number for r in shots]
    stage.move_absolute(1000.0, 2000.0)
    stage.wait_until_idle(2.0)


def test_a_stage_edge_reaches_the_ddg_without_a_stage_query(bench: Bench) -> None:
    """A wired input does not wait for the host: the DDG, asked once after a burst that the
    stage's distance trigger started, has ended it, though the stage was not asked meanwhile
    (its server hands out the edge when due). The fly scan relies on it: it awaits the
    burst's end before the stage's run-out."""
    sim, stage, ddg = bench.simulation, bench.stage, bench.delay_generator
    emulator = bench.emulators["stage"]
    n, run_up = 6, 50.0
    first = _armed_at_the_start(bench, n)
    try:
        stage.set_digital_output("x", 1, 0)
        stage.configure_distance_trigger("x", run_up, count=1)
        ddg.configure_burst(n, PERIOD_S)
        ddg.enable_outputs()
        ddg.set_trigger_source("SINGLE_SHOT_EXTERNAL_RISING")
        ddg.fire()
        stage.set_speed(25_000.0)
        stage.move_absolute(2000.0, 2000.0)  # 40 ms (simulated) to go; the burst takes 120
        asked = len(emulator.transcript)
        time.sleep(0.2 / sim.clock.speedup)  # past the burst's end (simulated 0.2 s)
        status = ddg.read_burst_status()  # one INSR?, no stage command before it
        assert len(emulator.transcript) == asked
        assert status.end_of_burst
        stage.wait_until_idle(2.0)
        for role in bench.spectrometers:
            _read(bench, role)
    finally:
        ddg.disable_outputs()
        stage.disable_distance_trigger("x")
        stage.set_speed(1e6)
    shots = [r for r in sim.shot_log if r.number >= first]
    assert len(shots) == n
    assert shots[0].x_um == pytest.approx(1000.0 + run_up, abs=0.2)
    stage.move_absolute(1000.0, 2000.0)
    stage.wait_until_idle(2.0)


def test_disabled_outputs_fire_no_laser_and_no_frames(bench: Bench) -> None:
    sim = bench.simulation
    bench.delay_generator.disable_outputs()
    first = sim.next_shot_number
    _fire(bench, 5, enable=False)
    assert bench.spectrometers["primary"].read_frames().counts.shape[0] == 0
    log = [r for r in sim.shot_log if r.number >= first]
    assert len(log) == 5 and not any(r.laser_fired or r.frames for r in log)


# ------------------------------------------------------------------------- faults
def test_missed_triggers_leave_gaps_at_the_right_shots(bench: Bench) -> None:
    sim = bench.simulation
    first = sim.next_shot_number
    sim.inject(FaultPlan({first + 7: ShotFault.missed("primary"),
                          first + 12: ShotFault.missed("spectrometers")}))
    _fire(bench, 20)
    with pytest.raises(InstrumentTimeout):
        bench.spectrometers["primary"].wait_frames(0.3)
    primary = bench.spectrometers["primary"].read_frames()
    with pytest.raises(InstrumentTimeout):
        bench.spectrometers["secondary"].wait_frames(0.3)
    secondary = bench.spectrometers["secondary"].read_frames()
    assert (len(primary), len(secondary)) == (18, 19)
    expected = [n for n in range(first, first + 20) if n not in (first + 7, first + 12)]
    assert _shots(bench, "primary", primary) == expected
    assert first + 7 in _shots(bench, "secondary", secondary)
    gaps = frame_gaps(primary.timestamps_s, PERIOD_S)
    assert list(np.flatnonzero(gaps)) == [7, 11] and gaps.sum() == 2
    log = {r.number: r for r in sim.shot_log}
    assert "primary" not in log[first + 7].frames and "secondary" in log[first + 7].frames
    assert log[first + 12].frames == {}
    assert log[first + 7].faults == (ShotFault.missed("primary"),)


def test_duplicated_and_late_frames(bench: Bench) -> None:
    sim = bench.simulation
    first = sim.next_shot_number
    sim.inject({first + 3: ShotFault.duplicate("secondary"),
                first + 5: ShotFault.late("primary", 0.8)})
    _fire(bench, 10)
    start = time.monotonic()
    secondary = _read(bench, "secondary")
    early = bench.spectrometers["primary"].read_frames()
    assert len(early) == 5  # shots 0..4 came; the late one holds the queue behind it
    primary = _read(bench, "primary")
    assert time.monotonic() - start >= 0.7
    assert _shots(bench, "primary", early) + _shots(bench, "primary", primary) == list(
        range(first, first + 10))
    assert np.allclose(np.diff(primary.timestamps_s), PERIOD_S, atol=1.5e-5)  # labels on time
    # the duplicate: shot 3's frame came twice; the driver drops the copy, so all ten shots'
    # frames are read, the last one included
    assert _shots(bench, "secondary", secondary) == list(range(first, first + 10))
    assert list(frame_gaps(secondary.timestamps_s, PERIOD_S)) == [0] * 10
    assert bench.spectrometers["secondary"].duplicates_dropped == 1
    log = {r.number: r for r in sim.shot_log}
    assert log[first + 3].copies == {"primary": 1, "secondary": 2}
    assert log[first + 5].faults[0].kind is FaultKind.LATE_FRAME


def test_a_corrupt_frame_loses_its_shot_only(bench: Bench) -> None:
    """A spectrometer's garbage is one corrupt frame (AVS code -8 for it), not a dead unit."""
    sim = bench.simulation
    first = sim.next_shot_number
    sim.inject({first + 2: ShotFault.garbage("primary")})
    _fire(bench, 5)
    primary = _read(bench, "primary")
    assert _shots(bench, "primary", primary) == [first, first + 1, first + 3, first + 4]
    assert primary.corrupt == 1
    assert _shots(bench, "secondary", _read(bench, "secondary")) == list(range(first, first + 5))


# zaber-motion drops a reply line it cannot parse and goes on waiting for the answer [T]
@pytest.mark.parametrize(("target", "error"), [("delay_generator", ProtocolError),
                                               ("stage", InstrumentTimeout)])
def test_garbage_reply_raises_a_typed_error(bench: Bench, target: str,
                                            error: type[Exception]) -> None:
    sim = bench.simulation
    sim.inject({sim.next_shot_number + 2: ShotFault.garbage(target)})
    with pytest.raises(error):
        _fire(bench, 5)
        if target == "delay_generator":
            bench.delay_generator.identify()
        else:
            bench.stage.position()
    for spectrometer in bench.spectrometers.values():
        spectrometer.disarm()
    assert bench.delay_generator.identify().split(",")[1] == "DG645"  # the link recovers
    assert bench.stage.position() == pytest.approx((1000.0, 2000.0))


@pytest.mark.parametrize("target", ["delay_generator", "stage", "secondary"])
def test_timeout_raises_instrument_timeout(bench: Bench, target: str) -> None:
    sim = bench.simulation
    first = sim.next_shot_number
    sim.inject({first + 4: ShotFault.timeout(target)})
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        _fire(bench, 10)
        if target == "delay_generator":
            bench.delay_generator.identify()
        elif target == "stage":
            bench.stage.position()
        else:
            bench.spectrometers["secondary"].wait_frames(0.3)
    assert time.monotonic() - start < 2.0
    if target == "secondary":
        frames = bench.spectrometers["secondary"].read_frames()
        assert _shots(bench, "secondary", frames) == list(range(first, first + 4))
        _fire(bench, 3)  # the next arm delivers again
        assert len(_read(bench, "secondary")) == 3
    for spectrometer in bench.spectrometers.values():
        spectrometer.disarm()
    assert bench.delay_generator.identify().split(",")[1] == "DG645"


@pytest.mark.parametrize("target", ["delay_generator", "stage", "primary"])
def test_disconnect_raises_a_typed_error_and_the_bench_still_closes_safely(
    target: str,
) -> None:
    start = time.monotonic()
    with pytest.raises(InstrumentError) as info, open_bench(_profile()) as bench:
        sim = bench.simulation
        ddg_emulator = bench.emulators["delay_generator"]
        sim.inject({sim.next_shot_number + 1: ShotFault.disconnect(target)})
        _fire(bench, 3)
        if target == "delay_generator":
            bench.delay_generator.identify()
        elif target == "stage":
            bench.stage.position()
        else:
            bench.spectrometers["primary"].wait_frames(1.0)
    assert time.monotonic() - start < 10.0
    if target == "primary":
        assert info.value.code == -16
    else:
        assert ddg_emulator.outputs_inhibited or target == "delay_generator"
    log = sim.shot_log
    assert len(log) == 3 and log[1].faults == (ShotFault.disconnect(target),)


# ------------------------------------------------------------------------- settings
def test_simulation_table_is_validated() -> None:
    assert BenchProfile.load("simulated").simulation.speedup == 20.0
    assert BenchProfile.load("simulated").simulated
    assert not BenchProfile.load("example_real").simulated
    for bad, message in [({"speedup": 0}, "speedup must be > 0, got 0"),
                         ({"seed": -1}, "seed must be >= 0, got -1"),
                         ({"seed": 1.5}, "seed must be an integer, got 1.5"),
                         ({"warp": 9}, "unknown keys")]:
        data = _profile_data()
        data["simulation"] = bad
        with pytest.raises(ProfileError, match=rf"\[simulation\] .*{message}"):
            BenchProfile.from_dict(data, source="bad.toml")
    data = _profile_data()
    data["spectrometers"]["primary"]["sim_profile"] = "tertiary"
    with pytest.raises(ProfileError, match="sim_profile 'tertiary'"):
        BenchProfile.from_dict(data)
    data = _profile_data()
    data["spectrometers"]["primary"]["start_pixel"] = 100
    with pytest.raises(ProfileError, match="do not fit"):
        BenchProfile.from_dict(data)


def test_fault_plan_checks_its_data() -> None:
    with pytest.raises(ValueError, match="spectrometers"):
        ShotFault.missed("delay_generator")
    with pytest.raises(ValueError, match="delay_s"):
        ShotFault.late("primary", 0.0)
    with pytest.raises(ValueError, match="shot numbers"):
        FaultPlan({0: ShotFault.missed()})
    plan = FaultPlan({5: [ShotFault.missed("primary"), ShotFault.garbage("stage")]})
    assert len(plan) == 2 and plan.at(5)[1].target == "stage" and plan.at(6) == ()


def test_sim_clock_scales_real_time() -> None:
    now = [100.0]
    clock = SimClock(20.0, source=lambda: now[0])
    assert clock() == 0.0
    now[0] += 0.5
    assert clock() == pytest.approx(10.0)
    clock.speedup = 2.0
    assert clock() == pytest.approx(10.0)
    now[0] += 1.0
    assert clock() == pytest.approx(12.0) and clock.real_s(4.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        SimClock(0.0)
