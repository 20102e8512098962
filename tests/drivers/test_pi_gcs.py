"""The PI GCS 2.0 stage driver (on pipython's GCS layer) against the wire-level emulator through
real pyserial transports (pty, TCP socket) and the in-process ``pigcssim://`` port, byte-exact
scripts of what pipython sends for the tricky exchanges (multi-line replies, an error after a
silent set, single-byte ``#5``), and a property test that bad replies give typed errors and
never hang."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import serial
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plumelink.drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from plumelink.drivers.pi_gcs import ERRORS, GCSError, PIStage
from plumelink.drivers.protocols import Stage
from plumelink.drivers.sim.pi_gcs_emulator import (
    Fault,
    ManualClock,
    PIAxisConfig,
    PIEmulator,
    PIPtyServer,
    PITcpServer,
    ScriptedPeer,
    register_peer,
    unregister_peer,
)

TIMEOUT_S = 0.3
IDN = b"(c)2024 Physik Instrumente (PI) GmbH & Co. KG, C-884.4DC, 0, 1.0\n"
_names = itertools.count()


def fast_emulator(**kwargs: object) -> PIEmulator:
    def config() -> PIAxisConfig:
        return PIAxisConfig(velocity=50.0, max_velocity=100.0)

    return PIEmulator({"1": config(), "2": config()}, **kwargs)  # type: ignore[arg-type]


def url_for(peer: object) -> str:
    return register_peer(f"t{next(_names)}", peer)  # type: ignore[arg-type]


OK = (b"ERR?", b"0\n")  # pipython reads the error register after every command
STARTUP: list[tuple[bytes, bytes]] = [
    (b"CSV?", b"2.0\n"), OK,  # pipython: GCS 2 or 3?
    (b"*IDN?", IDN), OK,
    OK,  # the driver clears a stale error
    (b"SVO 1 1 2 1", b""), OK,
    (b"TMN? 1 2", b"1=0.000000 \n2=-5.000000\n"), OK,
    (b"TMX? 1 2", b"1=25.000000 \n2=5.000000\n"), OK,
]
LIMITS = STARTUP[7:]


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedPeer, PIStage]]:
    peer = ScriptedPeer(STARTUP)
    url = url_for(peer)
    stage = PIStage(url, timeout_s=TIMEOUT_S, poll_interval_s=0.001)
    yield peer, stage
    stage.close()
    unregister_peer(url.split("://")[1])
    assert not peer.errors


@pytest.fixture
def pty() -> Iterator[tuple[PIEmulator, PIStage]]:
    with PIPtyServer(fast_emulator()) as server:
        stage = PIStage(server.url, timeout_s=TIMEOUT_S, poll_interval_s=0.005)
        yield server.emulator, stage
        stage.close()


# ---------------------------------------------------------------------- byte-exact scripts
def test_startup_bytes_and_limits(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    assert stage.idn == IDN.decode().strip()
    assert not peer.remaining
    peer.extend(LIMITS)
    assert stage.limits() == ((0.0, 25000.0), (-5000.0, 5000.0))
    assert bytes(peer.received).startswith(
        b"CSV?\nERR?\n*IDN?\nERR?\nERR?\nSVO 1 1 2 1\nERR?\nTMN? 1 2\nERR?\n")


def test_multiline_position_reply(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    peer.extend([(b"POS? 1 2", b"1=10.500000 \n2=-0.250000\n"), OK])
    assert stage.position() == pytest.approx((10500.0, -250.0))


@pytest.mark.parametrize("reply", [
    b"1=10.500000\n2=-0.250000\n",  # first line lacks the space: a one-line reply + junk
    b"1=10.500000 \n",  # continuation promised, reply ends with the space
    b"1=10.500000 \n2=abc\n",
    b"1=10.500000 \r\n2=1\n",
])
def test_malformed_multiline_reply_is_protocol_error(
        scripted: tuple[ScriptedPeer, PIStage], reply: bytes) -> None:
    peer, stage = scripted
    peer.extend([(b"POS? 1 2", reply), OK])
    with pytest.raises(ProtocolError) as info:
        stage.position()
    assert info.value.reply


def test_error_after_silent_set(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    peer.extend([(b"MOV 1 1", b""), (b"ERR?", b"5\n")])
    with pytest.raises(GCSError) as info:
        stage.move_absolute(x_um=1000.0)
    assert info.value.code == 5 and info.value.meaning == ERRORS[5]
    assert info.value.command == "MOV"
    assert "move without reference" in str(info.value)


def test_single_byte_moving_poll(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    peer.extend([(b"\x05", b"3\n"), OK,
                 (b"SAI? ALL", b"1 \n2\n"), OK,  # pipython: which bit is which axis
                 (b"*IDN?", IDN), OK,  # and which controller
                 (b"\x05", b"2\n"), OK, (b"\x05", b"0\n"), OK])
    stage.wait_until_idle(1.0)
    assert bytes(peer.received).count(b"\x05ERR?\n") == 3  # polled until no axis moved


def test_stop_sends_byte_24_and_clears_code_10(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    peer.extend([(b"\x18", b""), (b"ERR?", b"10\n")])
    stage.stop()  # pipython's StopAll(noraise=True) takes the 10
    assert bytes(peer.received).endswith(b"\x18ERR?\n")


def test_home_polls_frf_until_every_axis_is_referenced(
        scripted: tuple[ScriptedPeer, PIStage]) -> None:
    """One axis referenced is not enough: home polls FRF? again until both are."""
    peer, stage = scripted
    peer.extend([(b"*IDN?", IDN), OK,  # pipython asks the controller's name first
                 (b"FRF 1 2", b""), OK,
                 (b"FRF? 1 2", b"1=0 \n2=1\n"), OK, (b"FRF? 1 2", b"1=1 \n2=1\n"), OK])
    stage.home()
    assert peer.remaining == []  # the second poll was sent and answered
    assert bytes(peer.received).count(b"FRF? 1 2") == 2


def test_no_reply_is_timeout(scripted: tuple[ScriptedPeer, PIStage]) -> None:
    peer, stage = scripted
    peer.extend([(b"POS? 1 2", b"")])
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        stage.position()
    assert time.monotonic() - start < TIMEOUT_S + 0.5


# ---------------------------------------------------------------------- against the emulator
def test_satisfies_stage_protocol(pty: tuple[PIEmulator, PIStage]) -> None:
    assert isinstance(pty[1], Stage)


def test_wait_until_idle_can_wait_for_some_axes_only(pty: tuple[PIEmulator, PIStage]) -> None:
    """A fly pass moves one axis: waiting for it alone does not wait for the other."""
    _, stage = pty
    stage.home()
    stage.set_speed(20_000.0)
    stage.move_absolute(100.0, 10_000.0)  # x: 5 ms, y: 0.5 s
    stage.wait_until_idle(2.0, axes=("x",))
    moving = stage.moving()
    assert not moving["x"] and moving["y"]
    stage.wait_until_idle(2.0)
    assert stage.position() == pytest.approx((100.0, 10_000.0), abs=1e-3)


def test_home_move_wait_reaches_target_over_pty(pty: tuple[PIEmulator, PIStage]) -> None:
    emulator, stage = pty
    assert stage.position() == (12500.0, 12500.0)
    stage.home()
    assert stage.position() == (0.0, 0.0)
    stage.set_speed(50_000.0)
    stage.move_absolute(1500.0, 2500.5)
    stage.wait_until_idle(2.0)
    assert stage.position() == pytest.approx((1500.0, 2500.5), abs=1e-3)
    stage.move_relative(dx_um=-500.0)
    stage.wait_until_idle(2.0)
    assert stage.position() == pytest.approx((1000.0, 2500.5), abs=1e-3)
    assert emulator.position("1") == pytest.approx(1.0)
    assert b"\x05" in emulator.commands and b"FRF 1 2" in emulator.commands


def test_move_before_home_raises_code_5(pty: tuple[PIEmulator, PIStage]) -> None:
    _, stage = pty
    with pytest.raises(GCSError) as info:
        stage.move_absolute(1000.0, 1000.0)
    assert info.value.code == 5


@pytest.mark.parametrize("target", [(-1.0, None), (None, 25_000.001), (float("nan"), None),
                                    (float("inf"), 0.0)])
def test_out_of_range_refused_before_sending(pty: tuple[PIEmulator, PIStage],
                                             target: tuple[float | None, float | None]) -> None:
    emulator, stage = pty
    emulator.clear_transcript()
    with pytest.raises(SettingOutOfRange):
        stage.move_absolute(*target)
    assert emulator.received_bytes == b""


def test_relative_out_of_range_sends_only_position_query(
        pty: tuple[PIEmulator, PIStage]) -> None:
    emulator, stage = pty
    emulator.clear_transcript()
    with pytest.raises(SettingOutOfRange):
        stage.move_relative(dx_um=20_000.0)
    assert emulator.commands == [b"POS? 1 2", b"ERR?"]  # ERR?: pipython's check


def test_stop_from_moving_then_wait(pty: tuple[PIEmulator, PIStage]) -> None:
    emulator, stage = pty
    stage.home()
    stage.set_speed(1000.0)
    stage.move_absolute(20_000.0, 20_000.0)
    assert stage.moving() == {"x": True, "y": True}
    stage.stop()
    stage.wait_until_idle(1.0)
    x, _ = stage.position()
    assert 0.0 < x < 20_000.0 and emulator.error == 0
    assert stage.ready()


def test_wait_timeout_is_bounded(pty: tuple[PIEmulator, PIStage]) -> None:
    emulator, stage = pty
    stage.home()
    stage.set_speed(1.0)
    stage.move_absolute(20_000.0)
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        stage.wait_until_idle(0.1)
    assert time.monotonic() - start < 0.5
    assert sum(c == b"\x05" for c in emulator.commands) < 60  # slept between polls
    stage.stop()


def test_speed_out_of_range() -> None:
    emulator = fast_emulator()
    url = url_for(emulator)
    with PIStage(url, timeout_s=TIMEOUT_S) as stage:
        with pytest.raises(SettingOutOfRange):
            stage.set_speed(0.0)
        with pytest.raises(GCSError) as info:
            stage.set_speed(1e9)
        assert info.value.code == 8
        stage.set_speed(2000.0)
        assert stage.speed() == pytest.approx(2000.0)


def test_over_tcp_with_manual_clock() -> None:
    clock = ManualClock()
    with PITcpServer(fast_emulator(clock=clock)) as server:
        assert server.url.startswith("socket://")
        with PIStage(server.url, timeout_s=TIMEOUT_S, poll_interval_s=0.001) as stage:
            stage.home(wait=False)
            assert stage.moving() == {"x": True, "y": True}
            clock.advance(1.0)
            stage.home(timeout_s=0.5)
            stage.move_absolute(5000.0, 100.0)
            clock.advance(0.05)
            assert stage.position() == pytest.approx((2500.0, 100.0))
            clock.advance(1.0)
            stage.wait_until_idle(0.5)
            assert stage.position() == (5000.0, 100.0)


# ---------------------------------------------------------------------- emulator codes
@pytest.mark.parametrize(("line", "code"), [
    (b"XYZ 1", 2), (b"MOV 1", 1), (b"MOV 1 abc", 1), (b"POS? 9", 15), (b"MOV 1 5", 5),
    (b"VEL 1 0", 8),
])
def test_emulator_error_codes(line: bytes, code: int) -> None:
    emulator = fast_emulator()
    assert emulator.handle(line) == []
    assert emulator.handle(b"ERR?") == [f"{code}\n".encode()]
    assert emulator.handle(b"ERR?") == [b"0\n"]


def test_emulator_limits_and_stop_codes() -> None:
    clock = ManualClock()
    emulator = fast_emulator(clock=clock)
    emulator.handle(b"SVO 1 1 2 1")
    emulator.handle(b"FRF")
    clock.advance(1.0)
    assert emulator.handle(b"FRF?") == [b"1=1 \n2=1\n"]
    assert emulator.handle(b"MOV 1 26") == [] and emulator.handle(b"ERR?") == [b"7\n"]
    emulator.handle(b"MOV 1 20")
    assert emulator.handle(b"\x05") == [b"1\n"]
    assert emulator.handle(b"\x18") == []
    assert emulator.handle(b"\x05") == [b"0\n"]
    assert emulator.handle(b"ERR?") == [b"10\n"]
    assert emulator.handle(b"\x07") == [b"\xb1\n"]


def test_single_bytes_split_from_lines_in_one_write() -> None:
    emulator = fast_emulator()
    url = url_for(emulator)
    port = serial.serial_for_url(url, timeout=0.1)
    port.write(b"\x05POS? 1\n\x07")
    assert port.read(100) == b"0\n1=12.500000\n\xb1\n"
    port.close()


# ---------------------------------------------------------------------- faults, properties
@pytest.mark.parametrize("fault", [Fault.GARBAGE, Fault.TRUNCATED, Fault.NO_REPLY])
def test_emulator_faults_give_typed_errors(fault: Fault) -> None:
    emulator = fast_emulator()
    with PIStage(url_for(emulator), timeout_s=0.1) as stage:
        emulator.inject_fault(fault, keep=3)
        with pytest.raises((ProtocolError, InstrumentTimeout)):
            stage.position()
        assert stage.position() == (12500.0, 12500.0)  # the link recovers


def test_disconnect_is_instrument_error() -> None:
    emulator = fast_emulator()
    with PIStage(url_for(emulator), timeout_s=0.1) as stage:
        emulator.inject_fault(Fault.DISCONNECT)
        with pytest.raises(InstrumentError):
            stage.position()


_GOOD = b"1=10.500000 \n2=-0.250000\n"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=st.one_of(
    st.binary(max_size=40),
    st.integers(0, len(_GOOD) - 1).map(lambda n: _GOOD[:n]),
    st.integers(1, len(_GOOD) - 1).map(lambda n: _GOOD[:n] + b"\n"),
    st.text(alphabet="12=. \n-eE+x\r", max_size=30).map(str.encode),
))
@example(reply=b"1=10.5 \n2=")
@example(reply=b"1=10.5 \n")
def test_bad_replies_give_typed_errors_and_never_hang(
        scripted: tuple[ScriptedPeer, PIStage], reply: bytes) -> None:
    peer, stage = scripted
    stage.timeout_s = 0.02
    peer.extend([(b"POS? 1 2", reply)])
    start = time.monotonic()
    try:
        x, y = stage.position()
    except (ProtocolError, InstrumentTimeout):
        pass
    else:
        assert reply.endswith(b"\n") and b" \n" in reply
        assert isinstance(x, float) and isinstance(y, float)
    assert time.monotonic() - start < 0.5
    peer.errors.clear()
