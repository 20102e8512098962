"""The Zaber stage driver against the wire-level emulator through real pyserial transports
(pty, TCP socket), byte-exact scripts for the tricky exchanges, and property tests that bad
replies give typed errors and never hang."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plumelink.drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from plumelink.drivers.protocols import Stage
from plumelink.drivers.sim.zaber_emulator import (
    AxisConfig,
    Fault,
    ScriptedPeer,
    ZaberEmulator,
    ZaberPtyServer,
    ZaberTcpServer,
    register_peer,
    unregister_peer,
)
from plumelink.drivers.zaber import (
    FLAGS,
    REJECTION_REASONS,
    SPEED_FACTOR,
    CommandRejected,
    DeviceFault,
    NotReferenced,
    ZaberStage,
    lrc,
    parse_message,
)

TIMEOUT_S = 0.3
FAST = 16_384_000  # maxspeed for 10^7 microsteps/s = 1 m/s at 0.1 µm per microstep


def two_devices(*, referenced: bool = False, maxspeed: int = FAST, position: int = 200_000,
                **kwargs: object) -> ZaberEmulator:
    def config() -> AxisConfig:
        return AxisConfig(maxspeed=maxspeed, position=position, referenced=referenced)

    return ZaberEmulator({1: [config()], 2: [config()]}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[ZaberPtyServer]:
    with ZaberPtyServer(two_devices()) as srv:
        yield srv


@pytest.fixture
def stage(server: ZaberPtyServer) -> Iterator[ZaberStage]:
    with ZaberStage(server.url, timeout_s=TIMEOUT_S) as driver:
        server.emulator.clear_transcript()
        yield driver


@pytest.fixture
def homed_stage(stage: ZaberStage, server: ZaberPtyServer) -> ZaberStage:
    stage.home(timeout_s=2.0)
    server.emulator.clear_transcript()
    return stage


def sent(emulator: ZaberEmulator) -> list[str]:
    """Commands received, without device/axis/id, e.g. ["get pos", "move abs 10"]."""
    return [" ".join(line.decode().split()[3:]) for line in emulator.commands]


# ---------------------------------------------------------------------- basic behaviour
def test_satisfies_stage_protocol(stage: ZaberStage) -> None:
    assert isinstance(stage, Stage)


def test_connect_reads_limits_in_micrometres() -> None:
    with ZaberPtyServer(two_devices()) as server, ZaberStage(
            server.url, microstep_um={"x": 0.1, "y": 0.05}, timeout_s=TIMEOUT_S) as driver:
        assert server.emulator.commands == [b"/1 1 00 get limit.min", b"/1 1 01 get limit.max",
                                            b"/2 1 02 get limit.min", b"/2 1 03 get limit.max"]
        assert driver.limits() == ((0.0, 100_000.0), (0.0, 50_000.0))


def test_home_then_move_reaches_the_target(stage: ZaberStage, server: ZaberPtyServer) -> None:
    stage.home(timeout_s=2.0)
    assert stage.position() == (0.0, 0.0)
    assert stage.warnings() == set()
    stage.move_absolute(12_345.6, 50_000.0)
    stage.wait_until_idle(2.0)
    assert stage.position() == pytest.approx((12_345.6, 50_000.0))
    assert server.emulator.position(1, 1) == 123_456
    assert "move abs 123456" in sent(server.emulator)
    assert "move abs 500000" in sent(server.emulator)


def test_move_returns_at_once_and_wait_polls_until_idle(server: ZaberPtyServer,
                                                        homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(100_000.0)  # µm/s: 10 mm take 0.1 s
    started = time.monotonic()
    homed_stage.move_absolute(x_um=10_000.0)
    assert server.emulator.busy(1, 1)
    homed_stage.wait_until_idle(2.0)
    assert time.monotonic() - started >= 0.095
    assert not server.emulator.busy(1, 1)
    assert homed_stage.position() == (10_000.0, 0.0)
    polls = [c for c in sent(server.emulator) if c == ""]
    assert 2 <= len(polls) <= 30  # polled at a modest interval, not spun


def test_wait_until_idle_times_out(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(1_000.0)
    homed_stage.move_absolute(x_um=50_000.0)  # 50 s
    with pytest.raises(InstrumentTimeout, match="axis x still BUSY"):
        homed_stage.wait_until_idle(0.1)
    homed_stage.stop()


def test_move_relative(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    homed_stage.move_absolute(1_000.0, 2_000.0)
    homed_stage.wait_until_idle(2.0)
    homed_stage.move_relative(dx_um=-250.0, dy_um=30.0)
    homed_stage.wait_until_idle(2.0)
    assert homed_stage.position() == pytest.approx((750.0, 2_030.0))
    assert "move rel -2500" in sent(server.emulator)


def test_set_speed_converts_to_device_units(server: ZaberPtyServer, stage: ZaberStage) -> None:
    stage.set_speed(2_500.0)
    assert server.emulator.speed(1, 1) == server.emulator.speed(2, 1) == round(
        2_500.0 / 0.1 * SPEED_FACTOR)
    assert stage.speed() == pytest.approx(2_500.0, rel=1e-4)
    server.emulator.clear_transcript()
    for bad in (0.0, -5.0, math.nan, math.inf, "fast"):
        with pytest.raises(SettingOutOfRange):
            stage.set_speed(bad)  # type: ignore[arg-type]
    assert server.emulator.commands == []


def test_two_axis_controller_via_axis_map() -> None:
    em = ZaberEmulator.single_controller(config=AxisConfig(referenced=True, maxspeed=FAST))
    with ZaberPtyServer(em) as server, ZaberStage(
            server.url, axes={"x": (1, 1), "y": (1, 2)}, timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(100.0, 200.0)
        driver.wait_until_idle(2.0)
        assert (em.position(1, 1), em.position(1, 2)) == (1_000, 2_000)
        assert driver.position() == (100.0, 200.0)


def test_socket_url_transport() -> None:
    with ZaberTcpServer(two_devices(referenced=True)) as server, ZaberStage(
            server.url, timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(500.0, 600.0)
        driver.wait_until_idle(2.0)
        assert driver.position() == (500.0, 600.0)


def test_checksummed_link() -> None:
    em = two_devices(referenced=True, reply_checksums=True)
    with ZaberPtyServer(em) as server, ZaberStage(server.url, checksum=True,
                                                  timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(10.0, 20.0)
        driver.wait_until_idle(2.0)
        assert driver.position() == (10.0, 20.0)
        first = em.commands[0].decode()
        assert first == f"/1 1 00 get limit.min:{lrc('1 1 00 get limit.min')}"


def test_close_is_idempotent_and_later_calls_fail(server: ZaberPtyServer) -> None:
    driver = ZaberStage(server.url, timeout_s=TIMEOUT_S)
    with driver:
        pass
    driver.close()
    with pytest.raises(InstrumentError, match="closed"):
        driver.position()


def test_unreachable_port_is_an_instrument_error() -> None:
    with pytest.raises(InstrumentError, match="cannot open"):
        ZaberStage("/dev/this-port-does-not-exist", timeout_s=TIMEOUT_S)


# ---------------------------------------------------------------------- refusals
def test_out_of_range_targets_are_refused_before_anything_is_sent(
        server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
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


def test_relative_move_out_of_range_reads_position_only(server: ZaberPtyServer,
                                                        homed_stage: ZaberStage) -> None:
    with pytest.raises(SettingOutOfRange, match="x axis target"):
        homed_stage.move_relative(dx_um=-1.0)
    assert sent(server.emulator) == ["get pos"]


def test_move_before_homing_is_refused_with_a_clear_error(server: ZaberPtyServer,
                                                          stage: ZaberStage) -> None:
    with pytest.raises(NotReferenced, match="call home") as refused:
        stage.move_absolute(10.0, 10.0)
    assert "reference" in refused.value.meaning
    assert sent(server.emulator) == ["warnings"]  # asked, and no move went out


def test_reference_check_runs_once_per_homing(server: ZaberPtyServer,
                                              homed_stage: ZaberStage) -> None:
    for target in (10.0, 20.0):
        homed_stage.move_absolute(target, target)
        homed_stage.wait_until_idle(2.0)
    assert sent(server.emulator).count("warnings") == 2  # once per axis, not per move


# ---------------------------------------------------------------------- faults and flags
def test_stop_interrupts_a_move(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    homed_stage.set_speed(10_000.0)
    homed_stage.move_absolute(x_um=50_000.0)  # 5 s
    time.sleep(0.05)
    homed_stage.stop()
    homed_stage.wait_until_idle(1.0)
    x, _ = homed_stage.position()
    assert 0.0 < x < 50_000.0
    assert "NI" in homed_stage.warnings()


def test_stop_from_another_thread_ends_a_wait(server: ZaberPtyServer,
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


def test_stall_during_a_move_raises_device_fault(server: ZaberPtyServer,
                                                 homed_stage: ZaberStage) -> None:
    server.emulator.inject_stall(1, 1, fraction=0.5)
    homed_stage.move_absolute(x_um=8_000.0)
    with pytest.raises(DeviceFault) as fault:
        homed_stage.wait_until_idle(2.0)
    assert fault.value.axis == "x" and "FS" in fault.value.flags
    assert FLAGS["FS"] in fault.value.meaning
    assert homed_stage.position()[0] == pytest.approx(4_000.0)
    with pytest.raises(DeviceFault):  # a new move is refused until the fault is cleared
        homed_stage.move_absolute(x_um=8_000.0)
    homed_stage.clear_warnings()
    homed_stage.move_absolute(x_um=8_000.0)
    homed_stage.wait_until_idle(2.0)
    assert homed_stage.position()[0] == 8_000.0


def test_fault_flag_on_a_status_poll(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    server.emulator.set_flags(2, 1, "FQ", "WT")
    with pytest.raises(DeviceFault, match="axis y fault FQ") as fault:
        homed_stage.wait_until_idle(1.0)
    assert fault.value.flags == {"FQ", "WT"}
    assert "encoder" in fault.value.meaning


def test_warnings_and_clear(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    server.emulator.set_flags(1, 1, "WT")
    server.emulator.set_flags(2, 1, "NC")
    assert homed_stage.warnings() == {"WT", "NC"}
    assert homed_stage.axis_warnings() == {"x": {"WT"}, "y": {"NC"}}
    homed_stage.clear_warnings()
    assert homed_stage.warnings() == set()


@pytest.mark.parametrize("reason", sorted(set(REJECTION_REASONS) - {"AGAIN"}))
def test_rejections_map_to_their_meaning(server: ZaberPtyServer, stage: ZaberStage,
                                         reason: str) -> None:
    server.emulator.inject_fault(Fault.REJECT, reason)
    with pytest.raises(CommandRejected) as rejected:
        stage.position()
    assert rejected.value.reason == reason
    assert rejected.value.meaning == REJECTION_REASONS[reason]
    assert reason in str(rejected.value) and "get pos" in str(rejected.value)


def test_again_is_retried_then_given_up(server: ZaberPtyServer, stage: ZaberStage) -> None:
    server.emulator.inject_fault(Fault.REJECT, "AGAIN", times=2)
    assert stage.position() == (20_000.0, 20_000.0)
    assert server.emulator.commands[:3] == [b"/1 1 04 get pos", b"/1 1 05 get pos",
                                            b"/1 1 06 get pos"]
    server.emulator.inject_fault(Fault.REJECT, "AGAIN", times=4)
    with pytest.raises(CommandRejected) as rejected:
        stage.position()
    assert rejected.value.reason == "AGAIN"


def test_real_rejection_from_the_device(server: ZaberPtyServer, homed_stage: ZaberStage) -> None:
    with pytest.raises(CommandRejected) as rejected:  # trigger 7 does not exist (six per device)
        homed_stage.configure_distance_trigger("x", 10.0, trigger=7)
    assert rejected.value.reason == "BADDATA"


@pytest.mark.parametrize(
    ("fault", "payload", "error", "raw"),
    [
        (Fault.GARBAGE, b"\xfe\x80@garbage?\r\n", ProtocolError, "\\xfe\\x80@garbage?"),
        (Fault.GARBAGE, b"@01 1 04 OK IDLE -- 5\n", ProtocolError, "@01 1 04 OK IDLE -- 5\n"),
        (Fault.GARBAGE, b"@01 1 04 OK IDL", ProtocolError, "@01 1 04 OK IDL"),
        (Fault.TRUNCATED, None, ProtocolError, "@01 1 04 OK I"),
        (Fault.NO_REPLY, None, InstrumentTimeout, None),
        (Fault.WRONG_ID, None, InstrumentTimeout, None),
    ],
)
def test_bad_replies_raise_typed_errors(server: ZaberPtyServer, stage: ZaberStage, fault: Fault,
                                        payload: bytes | None, error: type[Exception],
                                        raw: str | None) -> None:
    server.emulator.inject_fault(fault, payload)
    started = time.monotonic()
    with pytest.raises(error) as raised:
        stage.position()
    assert time.monotonic() - started < TIMEOUT_S + 0.5
    if raw is not None:
        assert raised.value.reply.startswith(raw)  # type: ignore[attr-defined]
    time.sleep(0.05)
    assert stage.position() == (20_000.0, 20_000.0)  # the link recovers


def test_disconnect_is_an_instrument_error_not_a_hang(server: ZaberPtyServer,
                                                      stage: ZaberStage) -> None:
    server.emulator.inject_fault(Fault.DISCONNECT)
    started = time.monotonic()
    with pytest.raises(InstrumentError) as raised:
        stage.position()
    assert not isinstance(raised.value, InstrumentTimeout | ProtocolError)
    assert "link lost" in str(raised.value)
    assert time.monotonic() - started < TIMEOUT_S + 0.5


def test_async_alerts_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    em = two_devices(referenced=True)
    em.handle(b"/1 0 set comm.alert 1")
    em.handle(b"/2 0 set comm.alert 1")
    with ZaberPtyServer(em) as server, ZaberStage(server.url, timeout_s=TIMEOUT_S) as driver:
        caplog.set_level(logging.INFO, logger="plumelink.drivers.zaber")
        driver.move_absolute(100.0, 100.0)
        time.sleep(0.05)  # the alerts arrive unprompted meanwhile
        driver.wait_until_idle(2.0)
        assert driver.position() == (100.0, 100.0)
    assert any("alert '!01 1 IDLE --" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- distance trigger
def test_distance_trigger_fires_at_the_right_positions(server: ZaberPtyServer,
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


def test_distance_trigger_with_count_on_a_controller_axis() -> None:
    config = AxisConfig(referenced=True, maxspeed=FAST, position=0)
    em = ZaberEmulator.single_controller(config=config)
    with ZaberPtyServer(em) as server, ZaberStage(
            server.url, axes={"x": (1, 1), "y": (1, 2)}, timeout_s=TIMEOUT_S) as driver:
        driver.configure_distance_trigger("y", 25.0, count=3)
        assert em.commands[-1] == b"/1 0 07 trigger 1 enable 3"
        assert em.commands[-3] == b"/1 0 05 trigger 1 when 2 dist 250"
        driver.move_absolute(y_um=1_000.0)
        driver.wait_until_idle(2.0)
        assert [(e.axis, e.position) for e in em.trigger_events] == [(2, 250), (2, 500),
                                                                      (2, 750)]


def test_distance_trigger_arguments_are_checked(server: ZaberPtyServer,
                                                homed_stage: ZaberStage) -> None:
    for kwargs in ({"distance_um": 0.0}, {"distance_um": 0.04}, {"distance_um": math.nan},
                   {"distance_um": 10.0, "output": 0}, {"distance_um": 10.0, "count": 0}):
        with pytest.raises(SettingOutOfRange):
            homed_stage.configure_distance_trigger("x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown axis"):
        homed_stage.configure_distance_trigger("z", 10.0)
    assert server.emulator.commands == []


# ---------------------------------------------------------------------- byte-exact scripts
CONNECT = [
    (b"/1 1 00 get limit.min", b"@01 1 00 OK IDLE -- 0\r\n"),
    (b"/1 1 01 get limit.max", b"@01 1 01 OK IDLE -- 1000000\r\n"),
    (b"/2 1 02 get limit.min", b"@02 1 02 OK IDLE -- 0\r\n"),
    (b"/2 1 03 get limit.max", b"@02 1 03 OK IDLE -- 1000000\r\n"),
]


def run_script(script: list[tuple[bytes, bytes]], action: Callable[[ZaberStage], object],
               **kwargs: object) -> object:
    """Run ``action`` on a stage connected (through a pty) to a scripted peer; check that
    exactly the scripted bytes were sent and the whole script was used."""
    peer = ScriptedPeer(CONNECT + script)
    with ZaberPtyServer(peer) as server, ZaberStage(server.url, timeout_s=TIMEOUT_S,
                                                    **kwargs) as driver:  # type: ignore[arg-type]
        try:
            return action(driver)
        finally:
            time.sleep(0.02)  # let the pty deliver any last bytes
            assert peer.errors == []
            assert peer.remaining == []
            assert bytes(peer.received) == b"".join(s + b"\r\n" for s, _ in CONNECT + script)


def test_script_position() -> None:
    result = run_script([(b"/1 1 04 get pos", b"@01 1 04 OK IDLE -- 1500\r\n"),
                         (b"/2 1 05 get pos", b"@02 1 05 OK BUSY -- -20\r\n")],
                        ZaberStage.position)
    assert result == (150.0, -2.0)


def test_script_again_retry() -> None:
    result = run_script([(b"/1 1 04 get pos", b"@01 1 04 RJ IDLE -- AGAIN\r\n"),
                         (b"/1 1 05 get pos", b"@01 1 05 RJ IDLE -- AGAIN\r\n"),
                         (b"/1 1 06 get pos", b"@01 1 06 OK IDLE -- 7\r\n"),
                         (b"/2 1 07 get pos", b"@02 1 07 OK IDLE -- 8\r\n")],
                        ZaberStage.position)
    assert result == pytest.approx((0.7, 0.8))


def test_script_alerts_info_and_stale_replies_are_skipped() -> None:
    noisy = (b"!01 1 IDLE --\r\n"  # an alert
             b"#01 1 leftover info\r\n"  # an info line from an earlier command
             b"@01 1 03 OK IDLE -- 999\r\n"  # a stale reply with an older id
             b"@01 1 04 OK IDLE -- 11\r\n"
             b"#01 1 trailing info\r\n")
    result = run_script([(b"/1 1 04 get pos", noisy),
                         (b"/2 1 05 get pos", b"@02 1 05 OK IDLE -- 12\r\n")],
                        ZaberStage.position)
    assert result == pytest.approx((1.1, 1.2))


def test_script_late_reply_after_a_timeout_is_matched_by_id() -> None:
    def action(driver: ZaberStage) -> object:
        with pytest.raises(InstrumentTimeout):
            driver.position()
        return driver.position()

    result = run_script([
        (b"/1 1 04 get pos", b""),  # no answer in time
        (b"/1 1 05 get pos", b"@01 1 04 OK IDLE -- 1\r\n@01 1 05 OK IDLE -- 2\r\n"),
        (b"/2 1 06 get pos", b"@02 1 06 OK IDLE -- 3\r\n"),
    ], action)
    assert result == pytest.approx((0.2, 0.3))


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (b"@02 1 04 OK IDLE -- 1\r\n", ProtocolError, "wrong address"),
        (b"@01 1 OK IDLE -- 1\r\n", ProtocolError, "no message id"),
        (b"@01 1 RJ IDLE -- BADMESSAGEID\r\n", CommandRejected, "BADMESSAGEID"),
        (b"@01 1 04 OK IDLE -- 1\n", ProtocolError, "CR LF"),
        (b"@01 1 04 OK IDLE -- 1:00\r\n", ProtocolError, "checksum"),
        (b"@01 1 04 OK IDLE -- one\r\n", ProtocolError, "not an integer"),
        (b"@01 1 04 OK IDLE --\r\n", ProtocolError, "malformed reply"),
        (b"@01 1 04 OK IDLE -- 5\\\r\n", ProtocolError, "multi-packet"),
        (b"@01 1 04 OK SLOW -- 5\r\n", ProtocolError, "malformed reply"),
    ],
)
def test_script_malformed_replies(reply: bytes, error: type[Exception], match: str) -> None:
    def action(driver: ZaberStage) -> None:
        with pytest.raises(error, match=match):
            driver.position()

    run_script([(b"/1 1 04 get pos", reply)], action)


def test_script_checksummed_exchange() -> None:
    def line(body: str) -> bytes:
        return f"{body}:{lrc(body[1:])}".encode()

    peer = ScriptedPeer([(line(f"/{d} 1 {i:02d} get limit.{m}"),
                          line(f"@0{d} 1 {i:02d} OK IDLE -- {v}") + b"\r\n")
                         for i, (d, m, v) in enumerate([(1, "min", 0), (1, "max", 10),
                                                        (2, "min", 0), (2, "max", 20)])])
    with ZaberPtyServer(peer) as server, ZaberStage(server.url, checksum=True,
                                                    timeout_s=TIMEOUT_S):
        pass  # connecting parsed four checksummed replies
    assert peer.errors == []
    assert peer.remaining == []


def test_parse_message_kinds() -> None:
    reply = parse_message(b"@01 2 07 RJ BUSY WR BADDATA\r\n")
    assert (reply.device, reply.axis, reply.message_id, reply.ok, reply.busy, reply.flag,
            reply.data) == (1, 2, 7, False, True, "WR", "BADDATA")  # type: ignore[union-attr]
    assert type(parse_message(b"!01 1 IDLE FS\r\n")).__name__ == "Alert"
    assert type(parse_message(b"#01 0 some words\r\n")).__name__ == "Info"


# ---------------------------------------------------------------------- properties
class _FuzzPeer:
    """Answers the connect handshake properly, then device 1 with a fuzzed reply built from
    the received message id, device 2 properly."""

    def __init__(self, make: Callable[[str], bytes]) -> None:
        self.make = make

    def handle(self, line: bytes) -> list[bytes]:
        device, axis, msg_id, *words = line.decode().lstrip("/").split()
        if words[:1] == ["get"] and words[1].startswith("limit."):
            value = 0 if words[1] == "limit.min" else 1_000_000
            return [f"@0{device} {axis} {msg_id} OK IDLE -- {value}\r\n".encode()]
        if device == "2":
            return [f"@02 {axis} {msg_id} OK IDLE -- 0\r\n".encode()]
        return [self.make(msg_id)]

    def note_received(self, data: bytes) -> None: ...

    def update(self) -> None: ...

    def take_unsolicited(self) -> list[bytes]:
        return []

    def wait_hint_s(self) -> float | None:
        return None


def _position_with(make: Callable[[str], bytes]) -> tuple[float, float] | InstrumentError:
    url = register_peer("fuzz", _FuzzPeer(make))
    try:
        with ZaberStage(url, timeout_s=0.05) as driver:
            started = time.monotonic()
            try:
                result: tuple[float, float] | InstrumentError = driver.position()
            except InstrumentError as exc:  # every failure is one of ours, typed
                result = exc
            assert time.monotonic() - started < 1.0  # never hangs
            return result
    finally:
        unregister_peer("fuzz")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=60))
@example(b"@01 1 04 OK IDLE -- 1\r\n")
@example(b"\r\n")
@example(b"!01 1 IDLE --\r\n")
def test_arbitrary_replies_give_typed_errors_and_never_hang(payload: bytes) -> None:
    _position_with(lambda _msg_id: payload)


VALID = "@01 1 {id} OK IDLE -- 123456"


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID.format(id="04")) - 1))
def test_truncated_replies_are_protocol_errors(cut: int) -> None:
    result = _position_with(lambda msg_id: VALID.format(id=msg_id)[:cut].encode() + b"\r\n")
    data_start = len(VALID.format(id="04")) - len("123456")
    if cut <= data_start:
        assert isinstance(result, ProtocolError)
        assert result.reply == VALID.format(id="04")[:cut] + "\r\n"
    else:  # the cut left a shorter number: a valid, smaller reading
        assert result == pytest.approx((int("123456"[: cut - data_start]) * 0.1, 0.0))
