"""The Zaber stage driver, standing on zaber-motion, against the wire-level emulator over the
links the library opens itself (localhost TCP as on the simulated bench, a pty as a serial
port): µm conversion, limits and reference checks before anything moves, faults, rejections,
bad replies as typed errors that never hang, the distance trigger of fly scans, identity and
the microstep checks (device database, resolution)."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plumelink.drivers.errors import InstrumentError, InstrumentTimeout, SettingOutOfRange
from plumelink.drivers.protocols import DistanceTrigger, Stage, missing_methods
from plumelink.drivers.sim.zaber_emulator import (
    AxisConfig,
    Fault,
    ZaberEmulator,
    ZaberPtyServer,
    ZaberTcpServer,
)
from plumelink.drivers.zaber import (
    REJECTION_REASONS,
    SPEED_FACTOR,
    CommandRejected,
    DeviceFault,
    MicrostepMismatch,
    NotReferenced,
    ZaberStage,
)

TIMEOUT_S = 0.3
FAST = 16_384_000  # maxspeed for 10^7 microsteps/s = 1 m/s at 0.1 µm per microstep


def two_devices(*, referenced: bool = False, maxspeed: int = FAST, position: int = 200_000,
                **kwargs: object) -> ZaberEmulator:
    def config() -> AxisConfig:
        return AxisConfig(maxspeed=maxspeed, position=position, referenced=referenced)

    return ZaberEmulator({1: [config()], 2: [config()]}, **kwargs)  # type: ignore[arg-type]


def url(server: ZaberTcpServer) -> str:
    return f"tcp://{server.host}:{server.port}"


@pytest.fixture
def server(no_leaks: None) -> Iterator[ZaberTcpServer]:
    with ZaberTcpServer(two_devices()) as srv:
        yield srv


@pytest.fixture
def stage(server: ZaberTcpServer) -> Iterator[ZaberStage]:
    with ZaberStage(url(server), device_db="offline", timeout_s=TIMEOUT_S) as driver:
        server.emulator.clear_transcript()
        yield driver


@pytest.fixture
def homed_stage(stage: ZaberStage, server: ZaberTcpServer) -> ZaberStage:
    stage.home(timeout_s=2.0)
    server.emulator.clear_transcript()
    return stage


def sent(emulator: ZaberEmulator) -> list[str]:
    """Commands received, without address, message id and checksum, e.g. ["get pos"]."""
    return [" ".join(line.decode().split(":")[0].split()[3:]) for line in emulator.commands]


# ---------------------------------------------------------------------- basic behaviour
def test_satisfies_the_stage_and_distance_trigger_protocols(stage: ZaberStage) -> None:
    assert isinstance(stage, Stage)
    assert missing_methods(stage, DistanceTrigger) == []


def test_connect_reads_limits_in_micrometres(no_leaks: None) -> None:
    with ZaberTcpServer(two_devices()) as server, ZaberStage(
            url(server), microstep_um={"x": 0.1, "y": 0.05}, device_db="offline",
            timeout_s=TIMEOUT_S) as driver:
        assert sent(server.emulator) == ["get limit.min", "get limit.max"] * 2
        assert driver.limits() == ((0.0, 100_000.0), (0.0, 50_000.0))


def test_home_then_move_reaches_the_target(stage: ZaberStage, server: ZaberTcpServer) -> None:
    stage.home(timeout_s=2.0)
    assert stage.position() == (0.0, 0.0)
    assert stage.warnings() == set()
    stage.move_absolute(12_345.6, 50_000.0)
    stage.wait_until_idle(2.0)
    assert stage.position() == pytest.approx((12_345.6, 50_000.0))
    assert server.emulator.position(1, 1) == 123_456
    assert {"move abs 123456", "move abs 500000"} <= set(sent(server.emulator))


def test_move_returns_at_once_and_wait_polls_until_idle(server: ZaberTcpServer,
                                                        homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(100_000.0)  # µm/s: 10 mm take 0.1 s
    started = time.monotonic()
    homed_stage.move_absolute(x_um=10_000.0)
    assert server.emulator.busy(1, 1)
    homed_stage.wait_until_idle(2.0)
    assert time.monotonic() - started >= 0.095
    assert not server.emulator.busy(1, 1)
    polls = [c for c in sent(server.emulator) if c == "get pos"]  # the poll reads the position
    assert 2 <= len(polls) <= 30  # polled at a modest interval, not spun
    assert homed_stage.position() == (10_000.0, 0.0)


def test_wait_until_idle_times_out(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(1_000.0)
    homed_stage.move_absolute(x_um=50_000.0)  # 50 s
    with pytest.raises(InstrumentTimeout, match="axis x still BUSY"):
        homed_stage.wait_until_idle(0.1)
    homed_stage.stop()


def test_move_relative(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    homed_stage.move_absolute(1_000.0, 2_000.0)
    homed_stage.wait_until_idle(2.0)
    homed_stage.move_relative(dx_um=-250.0, dy_um=30.0)
    homed_stage.wait_until_idle(2.0)
    assert homed_stage.position() == pytest.approx((750.0, 2_030.0))
    assert "move rel -2500" in sent(server.emulator)


def test_set_speed_converts_to_device_units(server: ZaberTcpServer, stage: ZaberStage) -> None:
    stage.set_speed(2_500.0)
    assert server.emulator.speed(1, 1) == server.emulator.speed(2, 1) == round(
        2_500.0 / 0.1 * SPEED_FACTOR)
    assert stage.speed() == pytest.approx(2_500.0, rel=1e-4)
    server.emulator.clear_transcript()
    for bad in (0.0, -5.0, math.nan, math.inf, "fast"):
        with pytest.raises(SettingOutOfRange):
            stage.set_speed(bad)  # type: ignore[arg-type]
    assert server.emulator.commands == []


def test_two_axis_controller_via_axis_map(no_leaks: None) -> None:
    em = ZaberEmulator.single_controller(config=AxisConfig(referenced=True, maxspeed=FAST))
    with ZaberTcpServer(em) as server, ZaberStage(
            url(server), axes={"x": (1, 1), "y": (1, 2)}, device_db="offline",
            timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(100.0, 200.0)
        driver.wait_until_idle(2.0)
        assert (em.position(1, 1), em.position(1, 2)) == (1_000, 2_000)
        assert driver.position() == (100.0, 200.0)


def test_serial_port_through_a_pty(no_leaks: None) -> None:
    """A serial port name goes to `Connection.open_serial_port` (a pty stands in for USB)."""
    with ZaberPtyServer(two_devices(referenced=True)) as server, ZaberStage(
            server.url, device_db="offline", timeout_s=1.0) as driver:
        driver.move_absolute(500.0, 600.0)
        driver.wait_until_idle(2.0)
        assert driver.position() == (500.0, 600.0)


@pytest.mark.parametrize("checksum", [True, False])
def test_checksums_follow_the_option(checksum: bool, no_leaks: None) -> None:
    em = two_devices(referenced=True, reply_checksums=True)
    with ZaberTcpServer(em) as server, ZaberStage(url(server), checksum=checksum,
                                                  device_db="offline",
                                                  timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(10.0, 20.0)
        driver.wait_until_idle(2.0)
        assert driver.position() == (10.0, 20.0)
    with_checksum = [b":" in line for line in em.commands]
    assert with_checksum and all(c == checksum for c in with_checksum)


def test_close_is_idempotent_and_later_calls_fail(server: ZaberTcpServer) -> None:
    driver = ZaberStage(url(server), device_db="offline", timeout_s=TIMEOUT_S)
    with driver:
        pass
    driver.close()
    with pytest.raises(InstrumentError):
        driver.position()


@pytest.mark.parametrize(("resource", "match"), [
    ("/dev/this-port-does-not-exist", "cannot open"),
    ("tcp://127.0.0.1:1", "cannot open"),
    ("zabersim://bench1", "tcp://host:port"),
    ("tcp://nohost", "tcp://host:port"),
])
def test_unreachable_or_unsupported_ports_are_instrument_errors(resource: str,
                                                                match: str) -> None:
    with pytest.raises(InstrumentError, match=match):
        ZaberStage(resource, device_db="offline", timeout_s=TIMEOUT_S)


def test_a_missing_zaber_motion_is_named_with_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zaber_motion", None)  # import fails
    with pytest.raises(InstrumentError, match=r"zaber-motion.*pip install zaber-motion"):
        ZaberStage("/dev/ttyUSB0")


# ---------------------------------------------------------------------- refusals
def test_out_of_range_targets_are_refused_before_anything_is_sent(
        server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    with pytest.raises(SettingOutOfRange) as refused:
        homed_stage.move_absolute(x_um=100_000.1)
    text = str(refused.value)
    assert "x axis target" in text and "100000.1" in text and "0 .. 100000 µm" in text
    for x, y in ((None, -0.1), (math.nan, None), (None, math.inf), ("1", None), (True, None)):
        with pytest.raises(SettingOutOfRange, match="axis target"):
            homed_stage.move_absolute(x, y)  # type: ignore[arg-type]
    with pytest.raises(SettingOutOfRange, match="y axis target"):
        homed_stage.move_absolute(x_um=10.0, y_um=1e9)  # x is not moved either
    assert server.emulator.commands == []


def test_relative_move_out_of_range_reads_position_only(server: ZaberTcpServer,
                                                        homed_stage: ZaberStage) -> None:
    with pytest.raises(SettingOutOfRange, match="x axis target"):
        homed_stage.move_relative(dx_um=-1.0)
    assert sent(server.emulator) == ["get pos"]


def test_move_before_homing_is_refused_with_a_clear_error(server: ZaberTcpServer,
                                                          stage: ZaberStage) -> None:
    with pytest.raises(NotReferenced, match="call home") as refused:
        stage.move_absolute(10.0, 10.0)
    assert "reference" in refused.value.meaning
    assert sent(server.emulator) == ["warnings"]  # asked, and no move went out


def test_reference_check_runs_once_per_homing(server: ZaberTcpServer,
                                              homed_stage: ZaberStage) -> None:
    for target in (10.0, 20.0):
        homed_stage.move_absolute(target, target)
        homed_stage.wait_until_idle(2.0)
    assert sent(server.emulator).count("warnings") == 2  # once per axis, not per move


# ---------------------------------------------------------------------- faults and flags
def test_stop_interrupts_a_move(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(10_000.0)
    homed_stage.move_absolute(x_um=50_000.0)  # 5 s
    time.sleep(0.05)
    homed_stage.stop()
    homed_stage.wait_until_idle(1.0)
    x, _ = homed_stage.position()
    assert 0.0 < x < 50_000.0
    assert sent(server.emulator).count("stop") == 2
    # zaber-motion reads the NI notice of the stop reply away itself ("warnings clear") [T]
    assert "NI" not in homed_stage.warnings()


def test_stop_from_another_thread_ends_a_wait(server: ZaberTcpServer,
                                              homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(10_000.0)
    homed_stage.move_absolute(50_000.0, 50_000.0)
    stopper = threading.Timer(0.1, homed_stage.stop)
    stopper.start()
    started = time.monotonic()
    homed_stage.wait_until_idle(5.0)
    stopper.join()
    assert time.monotonic() - started < 2.0
    assert homed_stage.position()[0] < 50_000.0


def test_stall_during_a_move_raises_device_fault(server: ZaberTcpServer,
                                                 homed_stage: ZaberStage) -> None:
    server.emulator.inject_stall(1, 1, fraction=0.5)
    homed_stage.move_absolute(x_um=8_000.0)
    with pytest.raises(DeviceFault) as raised:
        homed_stage.wait_until_idle(2.0)
    assert raised.value.axis == "x" and "FS" in raised.value.flags
    assert "stalled" in str(raised.value)
    assert homed_stage.position()[0] == pytest.approx(4_000.0)


def test_fault_flag_on_a_status_poll(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    server.emulator.set_flags(2, 1, "FQ", "WT")
    with pytest.raises(DeviceFault) as raised:
        homed_stage.wait_until_idle(1.0)
    assert raised.value.axis == "y" and raised.value.flags == {"FQ", "WT"}
    assert "encoder" in str(raised.value)


def test_warnings_and_clear(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    server.emulator.set_flags(1, 1, "WT")
    server.emulator.set_flags(2, 1, "NC")
    assert homed_stage.warnings() == {"WT", "NC"}
    assert homed_stage.axis_warnings() == {"x": {"WT"}, "y": {"NC"}}
    homed_stage.clear_warnings()
    assert homed_stage.warnings() == set()


@pytest.mark.parametrize("reason", sorted(set(REJECTION_REASONS) - {"AGAIN"}))
def test_rejections_map_to_their_meaning(server: ZaberTcpServer, stage: ZaberStage,
                                         reason: str) -> None:
    server.emulator.inject_fault(Fault.REJECT, reason)
    with pytest.raises(CommandRejected) as rejected:
        stage.position()
    assert rejected.value.reason == reason
    assert rejected.value.meaning == REJECTION_REASONS[reason]
    assert reason in str(rejected.value) and "get pos" in str(rejected.value)


def test_again_is_retried_then_given_up(server: ZaberTcpServer, stage: ZaberStage) -> None:
    server.emulator.inject_fault(Fault.REJECT, "AGAIN", times=2)
    assert stage.position() == (20_000.0, 20_000.0)
    assert sent(server.emulator)[:3] == ["get pos"] * 3
    server.emulator.inject_fault(Fault.REJECT, "AGAIN", times=4)
    with pytest.raises(CommandRejected) as rejected:
        stage.position()
    assert rejected.value.reason == "AGAIN"


def test_real_rejection_from_the_device(server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    with pytest.raises(CommandRejected) as rejected:  # trigger 7 does not exist (six per device)
        homed_stage.configure_distance_trigger("x", 10.0, trigger=7)
    assert rejected.value.reason == "BADDATA"


@pytest.mark.parametrize(("fault", "payload"), [
    (Fault.GARBAGE, None),
    (Fault.GARBAGE, b"@01 1 04 OK IDL\r\n"),
    (Fault.TRUNCATED, None),
    (Fault.NO_REPLY, None),
    (Fault.WRONG_ID, None),
])
def test_bad_replies_time_out_and_the_link_recovers(server: ZaberTcpServer, stage: ZaberStage,
                                                    fault: Fault,
                                                    payload: bytes | None) -> None:
    """zaber-motion drops a line it cannot parse or match to its request and goes on
    waiting: each bad reply is a timeout, never a hang or a wrong answer."""
    server.emulator.inject_fault(fault, payload)
    started = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="no reply within"):
        stage.position()
    assert time.monotonic() - started < TIMEOUT_S + 0.5
    assert stage.position() == (20_000.0, 20_000.0)


def test_disconnect_is_an_instrument_error_not_a_hang(server: ZaberTcpServer,
                                                      stage: ZaberStage) -> None:
    """The request in flight times out (zaber-motion 10.3 does not fail it at the reset [T]);
    every later one is refused at once as a lost link."""
    server.emulator.inject_fault(Fault.DISCONNECT)
    started = time.monotonic()
    with pytest.raises(InstrumentError):
        stage.position()
    assert time.monotonic() - started < TIMEOUT_S + 0.5
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(InstrumentError, match="link lost") as raised:
        stage.position()
    assert not isinstance(raised.value, InstrumentTimeout)
    assert time.monotonic() - started < 0.1


def test_async_alerts_do_not_disturb_the_exchanges(no_leaks: None) -> None:
    em = two_devices(referenced=True)
    em.handle(b"/1 0 set comm.alert 1")
    em.handle(b"/2 0 set comm.alert 1")
    with ZaberTcpServer(em) as server, ZaberStage(url(server), device_db="offline",
                                                  timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(100.0, 100.0)
        time.sleep(0.05)  # the alerts arrive unprompted meanwhile
        driver.wait_until_idle(2.0)
        assert driver.position() == (100.0, 100.0)


# ---------------------------------------------------------------------- distance trigger
def test_distance_trigger_fires_at_the_right_positions(server: ZaberTcpServer,
                                                       homed_stage: ZaberStage) -> None:
    em = server.emulator
    assert homed_stage.configure_distance_trigger("x", 100.04, output=2) == pytest.approx(100.0)
    assert sent(em) == ["trigger 1 disable", "trigger 1 when 1 dist 1000",
                        "trigger 1 action a io set do 2 t", "trigger 1 enable"]
    assert all(line.startswith(b"/1 0 ") for line in em.commands)  # device scope
    homed_stage.set_speed(20_000.0)
    homed_stage.move_absolute(x_um=1_050.0)
    homed_stage.wait_until_idle(2.0)
    events = em.trigger_events
    assert [e.position * 0.1 for e in events] == pytest.approx(
        [100.0 * k for k in range(1, 11)])
    assert [e.level for e in events] == [1, 0] * 5
    assert all(e.output == 2 and e.axis == 1 for e in events)
    times = [e.time for e in events]
    assert times == sorted(times)
    assert times[1] - times[0] == pytest.approx(100.0 / 20_000.0)  # 5 ms per 100 µm
    homed_stage.disable_distance_trigger("x")
    homed_stage.move_absolute(x_um=0.0)
    homed_stage.wait_until_idle(2.0)
    assert len(em.trigger_events) == 10


def test_distance_trigger_with_count_on_a_controller_axis(no_leaks: None) -> None:
    config = AxisConfig(referenced=True, maxspeed=FAST, position=0)
    em = ZaberEmulator.single_controller(config=config)
    with ZaberTcpServer(em) as server, ZaberStage(
            url(server), axes={"x": (1, 1), "y": (1, 2)}, device_db="offline",
            timeout_s=TIMEOUT_S) as driver:
        driver.set_digital_output("y", 1, 1)
        assert em.output(1, 1) == 1
        em.clear_transcript()
        driver.configure_distance_trigger("y", 25.0, count=3)
        assert sent(em)[1:] == ["trigger 1 when 2 dist 250", "trigger 1 action a io set do 1 t",
                                "trigger 1 enable 3"]
        driver.move_absolute(y_um=1_000.0)
        driver.wait_until_idle(2.0)
        assert [(e.axis, e.position, e.level) for e in em.trigger_events] == [
            (2, 250, 0), (2, 500, 1), (2, 750, 0)]


def _armed_at_1000(stage: ZaberStage, count: int) -> None:
    """x found idle at 1,000 µm, output 1 low, a trigger every 50 µm with ``count``."""
    stage.move_absolute(x_um=1_000.0)
    stage.wait_until_idle(2.0)
    stage.set_digital_output("x", 1, 0)
    stage.configure_distance_trigger("x", 50.0, count=count)


def test_a_spent_trigger_and_its_output_are_not_sent_again(server: ZaberTcpServer,
                                                           homed_stage: ZaberStage) -> None:
    """A trigger with a count, armed where the axis was found idle, has fired its count once
    the axis is found idle count x distance away or more: disabled, its output toggled count
    times. Neither the disable nor that output level is sent again; the device agrees."""
    em = server.emulator
    _armed_at_1000(homed_stage, 2)
    homed_stage.move_absolute(x_um=1_200.0)  # 200 µm: both firings
    homed_stage.wait_until_idle(2.0)
    em.clear_transcript()
    homed_stage.disable_distance_trigger("x")
    homed_stage.set_digital_output("x", 1, 0)
    assert sent(em) == []
    assert em.output(1, 1) == 0 and [e.level for e in em.trigger_events] == [1, 0]
    homed_stage.move_absolute(x_um=1_500.0)
    homed_stage.wait_until_idle(2.0)
    assert len(em.trigger_events) == 2  # the device disabled it indeed
    homed_stage.set_digital_output("x", 1, 1)  # another level is sent
    homed_stage.home(timeout_s=2.0)  # after a homing nothing remembered is trusted
    em.clear_transcript()
    homed_stage.set_digital_output("x", 1, 1)
    homed_stage.disable_distance_trigger("x")
    assert sent(em) == ["io set do 1 1", "trigger 1 disable"]


def test_a_trigger_not_yet_spent_is_disabled_and_its_output_set(
        server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    em = server.emulator
    _armed_at_1000(homed_stage, 2)
    homed_stage.move_absolute(x_um=1_070.0)  # 70 µm: one firing of two
    homed_stage.wait_until_idle(2.0)
    em.clear_transcript()
    homed_stage.disable_distance_trigger("x")
    homed_stage.set_digital_output("x", 1, 0)
    assert sent(em) == ["trigger 1 disable", "io set do 1 0"]
    assert em.output(1, 1) == 0


def test_a_trigger_enabled_again_without_a_count_is_never_taken_as_spent(
        server: ZaberTcpServer, homed_stage: ZaberStage) -> None:
    """What was known of an enable with a count is void once the trigger is enabled again
    without one: it fires until disabled, so the disable is sent after any travel."""
    em = server.emulator
    _armed_at_1000(homed_stage, 2)
    homed_stage.configure_distance_trigger("x", 50.0)  # again, no count
    homed_stage.move_absolute(x_um=1_300.0)
    homed_stage.wait_until_idle(2.0)
    assert len(em.trigger_events) == 6  # still armed on the device
    em.clear_transcript()
    homed_stage.disable_distance_trigger("x")
    assert sent(em) == ["trigger 1 disable"]


def test_distance_trigger_arguments_are_checked(server: ZaberTcpServer,
                                                homed_stage: ZaberStage) -> None:
    for kwargs in ({"distance_um": 0.0}, {"distance_um": 0.04}, {"distance_um": math.nan},
                   {"distance_um": 10.0, "output": 0}, {"distance_um": 10.0, "count": 0}):
        with pytest.raises(SettingOutOfRange):
            homed_stage.configure_distance_trigger("x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown axis"):
        homed_stage.configure_distance_trigger("z", 10.0)
    for level in (2, True):
        with pytest.raises(SettingOutOfRange):
            homed_stage.set_digital_output("x", 1, level)
    assert server.emulator.commands == []


# ---------------------------------------------------------------------- identity, microsteps
def test_identity_from_the_device_when_the_database_is_unreachable(
        tmp_path: Path, no_leaks: None) -> None:
    """A database file that does not exist: the library reads the device, then fails the
    look-up; the driver falls back to the profile's microstep size."""
    em = ZaberEmulator({1: [AxisConfig(resolution=128, peripheralid=43211)], 2: [AxisConfig()]})
    with ZaberTcpServer(em) as server, ZaberStage(
            url(server), microstep_um=0.05, device_db=str(tmp_path / "no-device-db.sqlite"),
            timeout_s=TIMEOUT_S) as driver:
        identity = driver.identify()
    assert b"get deviceid" in b" ".join(em.commands)  # the library's identification ran
    assert identity["x"] == {"device": 1, "axis": 1, "device_id": em.device_id,
                             "serial": 12301, "firmware": em.version, "peripheral_id": 43211,
                             "resolution": 128, "microstep_um": 0.05,
                             "microstep_source": "profile"}
    assert identity["y"]["serial"] == 12302 and identity["y"]["resolution"] == 64


@pytest.mark.parametrize(("microstep", "fullstep", "refusal"), [
    (0.1, 6.4, None), ({"x": 0.1, "y": 0.05}, {"x": 6.4, "y": 3.2}, None),
    (0.2, 6.4, "axis x contradicts .* resolution 64 .* set microstep_um = 0.1 "),
    ({"x": 0.1, "y": 0.1}, {"x": 6.4, "y": 3.2},
     "axis y contradicts .* resolution 64 .* set microstep_um = 0.05 "),
])
def test_microstep_is_checked_against_the_resolution(microstep: object, fullstep: object,
                                                     refusal: str | None,
                                                     no_leaks: None) -> None:
    with ZaberTcpServer(two_devices()) as server:
        if refusal is None:
            with ZaberStage(url(server), microstep_um=microstep, fullstep_um=fullstep,
                            device_db="offline", timeout_s=TIMEOUT_S) as driver:
                assert driver.limits()[0] == (0.0, 100_000.0)
            return
        with pytest.raises(MicrostepMismatch, match=refusal):
            ZaberStage(url(server), microstep_um=microstep, fullstep_um=fullstep,
                       device_db="offline", timeout_s=TIMEOUT_S)


def test_resolution_rejected_by_old_firmware_is_a_clear_refusal(no_leaks: None) -> None:
    em = two_devices()
    with ZaberTcpServer(em) as server:
        em.inject_fault(Fault.REJECT, "BADCOMMAND")
        with pytest.raises(MicrostepMismatch, match="does not report its resolution"):
            ZaberStage(url(server), fullstep_um=6.4, device_db="offline", timeout_s=TIMEOUT_S)


@pytest.fixture
def database_knows_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for a device-database answer (no database file is at hand offline): the
    device is identified as a product whose microstep is 0.047625 µm."""
    from zaber_motion.ascii import AxisSettings, Device

    monkeypatch.setattr(Device, "identify", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(Device, "name", property(lambda self: "X-LSM100A"))
    monkeypatch.setattr(AxisSettings, "convert_from_native_units",
                        lambda self, setting, value, unit: value * 0.047625)


def test_database_microstep_replaces_the_default(server: ZaberTcpServer,
                                                 database_knows_the_stage: None) -> None:
    with ZaberStage(url(server), timeout_s=TIMEOUT_S) as driver:
        assert driver.limits()[0] == pytest.approx((0.0, 47_625.0))
        entry = driver.identify()["x"]
    assert entry["microstep_um"] == 0.047625
    assert entry["microstep_source"] == "device database"
    assert entry["product"] == "X-LSM100A"


def test_database_contradicting_the_profile_refuses_to_open(
        server: ZaberTcpServer, database_knows_the_stage: None) -> None:
    with pytest.raises(MicrostepMismatch, match=r"device database gives 0.047625 µm.*"
                                                r"set microstep_um = 0.047625"):
        ZaberStage(url(server), microstep_um=0.1, timeout_s=TIMEOUT_S)


def test_bench_check_names_a_missing_zaber_motion(monkeypatch: pytest.MonkeyPatch,
                                                  no_leaks: None) -> None:
    from plumelink.drivers.bench_check import check_bench

    monkeypatch.setitem(sys.modules, "zaber_motion", None)
    result = check_bench("simulated")
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.startswith("[stage] zaber at 'sim' cannot be opened")
    assert "pip install zaber-motion" in problem


def test_simulated_bench_stage_is_zaber_motion_on_localhost_tcp(no_leaks: None) -> None:
    """The shipped simulated bench: the driver's connection is zaber-motion's TCP one, to the
    emulator that the bench's clock and trigger bus drive."""
    from plumelink.drivers.bench import open_bench

    with open_bench("simulated") as bench:
        stage = bench.stage
        assert isinstance(stage, ZaberStage)
        assert "ASCII TCP: 127.0.0.1" in str(stage._connection)
        stage.home(timeout_s=5.0)
        stage.move_absolute(1_000.0, 2_000.0)
        stage.wait_until_idle(5.0)
        emulator = bench.emulators["stage"]
        assert (emulator.position(1, 1), emulator.position(2, 1)) == (10_000, 20_000)
        assert bench.settings_snapshot()["stage"]["axes"]["y"]["serial"] == 12302
