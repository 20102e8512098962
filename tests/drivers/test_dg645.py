"""The DG645 driver against the wire-level emulator (pyvisa-py TCP socket, pty, pyserial URL)
and against pyvisa-sim for the static paths."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plumelink.drivers.dg645 import (
    CHANNELS,
    DG645,
    BurstConfig,
    OutputLevel,
    Polarity,
    StatusFlag,
    TriggerSource,
    error_meaning,
)
from plumelink.drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from plumelink.drivers.protocols import BurstStatus, DelayGenerator
from plumelink.drivers.sim.dg645_emulator import (
    DG645Emulator,
    DG645PtyServer,
    DG645TcpServer,
    Fault,
    register_emulator,
    unregister_emulator,
)

SIM_YAML = Path(__file__).with_name("dg645_sim.yaml")
SIM_LIBRARY = f"{SIM_YAML}@sim"
TIMEOUT_S = 0.5


@pytest.fixture
def server() -> Iterator[DG645TcpServer]:
    with DG645TcpServer() as srv:
        yield srv


@pytest.fixture
def ddg(server: DG645TcpServer) -> Iterator[DG645]:
    with DG645(server.resource_name, timeout_s=TIMEOUT_S) as driver:
        server.emulator.clear_transcript()
        yield driver


def exchanges(emulator: DG645Emulator, action: Callable[[], object]) -> list:
    """The (line, reply) pairs the emulator saw while ``action`` ran."""
    before = len(emulator.transcript)
    action()
    return emulator.transcript[before:]


# --------------------------------------------------------------------------- connect
def test_connect_sequence_is_byte_exact_and_drains_stale_errors():
    emulator = DG645Emulator()
    emulator.handle(b"ABCD;TSRC 9")  # two stale errors from an earlier session
    register_emulator("connect", emulator)
    try:
        with DG645("ASRLdg645sim://connect::INSTR", timeout_s=TIMEOUT_S) as driver:
            assert driver.identify().startswith("Stanford Research Systems,DG645,")
    finally:
        unregister_emulator("connect")
    assert emulator.received_bytes == b"*IDN?\nLERR?\nLERR?\nLERR?\n*CLS;*OPC?\n*IDN?\n"
    assert [reply for _, reply in emulator.transcript[2:5]] == [b"111\r\n", b"10\r\n", b"0\r\n"]


def test_refuses_an_instrument_that_is_not_a_dg645():
    with DG645TcpServer(DG645Emulator(idn="Stanford Research Systems,SR830,s/n1,ver1")) as srv:
        with pytest.raises(InstrumentError, match="not a DG645") as info:
            DG645(srv.resource_name, timeout_s=TIMEOUT_S)
        assert info.value.command == "*IDN?"
        assert srv.emulator.transcript[-1][0] == b"*IDN?"  # nothing sent after the refusal


def test_unreachable_resource_is_an_instrument_error():
    with DG645TcpServer() as srv:
        port = srv.port
    with pytest.raises(InstrumentError, match=r"refused|cannot open"):
        DG645(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=TIMEOUT_S)


def test_satisfies_the_delay_generator_protocol(ddg):
    assert isinstance(ddg, DelayGenerator)


def test_closed_driver_refuses_commands(server):
    driver = DG645(server.resource_name, timeout_s=TIMEOUT_S)
    driver.close()
    driver.close()
    with pytest.raises(InstrumentError, match="closed"):
        driver.identify()


# --------------------------------------------------------------------------- settings
def test_set_delay_is_byte_exact_and_reads_back(ddg, server):
    emulator = server.emulator
    assert exchanges(emulator, lambda: ddg.set_delay("a", "T0", 1e-6 + 3e-12)) == [
        (b"DLAY 2,0,0.000001000005;LERR?", b"0\r\n"),
    ]
    ddg.set_delay("B", "A", 2.5e-9)
    assert ddg.get_delay("B") == ("A", pytest.approx(2.5e-9, abs=1e-15))
    assert emulator.delay("B") == ("A", pytest.approx(2.5e-9, abs=1e-15))


def test_error_after_set_raises_with_code_meaning(ddg, server):
    ddg.set_delay("A", "B", 0.0)
    with pytest.raises(InstrumentError) as info:
        ddg.set_delay("B", "A", 0.0)  # B -> A -> B would loop
    assert (info.value.code, info.value.meaning) == (13, "illegal link")
    assert info.value.command == "DLAY 3,2,0.000000000000"
    assert server.emulator.transcript[-2:] == [
        (b"DLAY 3,2,0.000000000000;LERR?", b"13\r\n"),
        (b"LERR?", b"0\r\n"),
    ]
    assert ddg.get_delay("B") == ("T0", 0.0)


def test_output_levels_trigger_and_rate_round_trip(ddg, server):
    ddg.set_output_level("cd", amplitude_v=3.3, offset_v=-0.25, polarity="negative")
    assert ddg.get_output_level("CD") == OutputLevel(3.3, -0.25, Polarity.NEGATIVE)
    assert server.emulator.setting("LAMP", 2) == pytest.approx(3.3)
    ddg.set_trigger_rate(50)
    ddg.set_trigger_source(TriggerSource.SINGLE_SHOT)
    assert ddg.get_trigger_rate() == 50.0
    assert ddg.get_trigger_source() is TriggerSource.SINGLE_SHOT
    ddg.configure_burst(7, 0.02, delay_s=1e-3, t0_every_cycle=False)
    assert ddg.get_burst() == BurstConfig(True, 7, 0.02, 1e-3, False)
    ddg.set_burst_mode(False)
    assert not ddg.get_burst().enabled


def test_group_of_sets_is_one_line(ddg, server):
    assert exchanges(server.emulator, lambda: ddg.configure_burst(10, 0.02)) == [
        (b"BURM 1;BURC 10;BURP 0.020000000000;BURD 0.000000000000;BURT 0;LERR?", b"0\r\n"),
    ]


REFUSED: list[tuple[str, Callable[[DG645], object]]] = [
    ("negative delay", lambda d: d.set_delay("A", "T0", -1e-9)),
    ("delay above 2000 s", lambda d: d.set_delay("A", "T0", 2000.1)),
    ("nan delay", lambda d: d.set_delay("A", "T0", math.nan)),
    ("text delay", lambda d: d.set_delay("A", "T0", "1e-6")),
    ("T0 not settable", lambda d: d.set_delay("T0", "A", 1e-6)),
    ("unknown channel", lambda d: d.set_delay("X", "T0", 1e-6)),
    ("self reference", lambda d: d.set_delay("C", "c", 1e-6)),
    ("unknown channel query", lambda d: d.get_delay("AB")),
    ("amplitude low", lambda d: d.set_output_level("AB", amplitude_v=0.4)),
    ("amplitude high", lambda d: d.set_output_level("AB", amplitude_v=5.01)),
    ("offset", lambda d: d.set_output_level("AB", offset_v=-2.1)),
    ("polarity", lambda d: d.set_output_level("AB", polarity="sideways")),
    ("unknown output", lambda d: d.set_output_level("A", amplitude_v=1.0)),
    ("burst count 0", lambda d: d.configure_burst(0, 0.02)),
    ("burst count 2**32", lambda d: d.configure_burst(2**32, 0.02)),
    ("burst count float", lambda d: d.configure_burst(1.5, 0.02)),
    ("burst period short", lambda d: d.configure_burst(5, 99e-9)),
    ("burst period long", lambda d: d.configure_burst(5, 2000.0)),
    ("burst delay", lambda d: d.configure_burst(5, 0.02, delay_s=-1.0)),
    ("rate low", lambda d: d.set_trigger_rate(99e-6)),
    ("rate high", lambda d: d.set_trigger_rate(10.1e6)),
    ("rate bool", lambda d: d.set_trigger_rate(True)),
    ("trigger source", lambda d: d.set_trigger_source(7)),
    ("trigger source name", lambda d: d.set_trigger_source("whenever")),
    ("wait timeout", lambda d: d.wait_end_of_burst(0)),
]


@pytest.mark.parametrize("call", [call for _, call in REFUSED], ids=[n for n, _ in REFUSED])
def test_out_of_range_settings_are_refused_before_sending(ddg, server, call):
    before = server.emulator.received_bytes
    with pytest.raises(SettingOutOfRange) as info:
        call(ddg)
    assert isinstance(info.value, ValueError)
    assert info.value.allowed
    assert server.emulator.received_bytes == before


# --------------------------------------------------------------------------- bad replies
def test_garbage_reply_is_a_protocol_error_and_the_link_recovers(ddg, server):
    server.emulator.inject_fault(Fault.GARBAGE)
    with pytest.raises(ProtocolError) as info:
        ddg.get_delay("A")
    assert "garbage" in info.value.reply
    assert info.value.command == "DLAY?2"
    assert ddg.get_delay("A") == ("T0", 0.0)


def test_truncated_reply_is_a_protocol_error(ddg, server):
    server.emulator.inject_fault(Fault.TRUNCATED, keep=2)
    with pytest.raises(ProtocolError, match="delay reply") as info:
        ddg.get_delay("A")
    assert info.value.reply == "0,"


def test_reply_without_terminator_times_out_and_the_link_recovers(ddg, server):
    server.emulator.inject_fault(Fault.GARBAGE, b"0,+0.0000")  # the link died mid-reply
    with pytest.raises(InstrumentTimeout):
        ddg.get_delay("A")
    assert ddg.get_trigger_source() is TriggerSource.SINGLE_SHOT


def test_missing_reply_is_a_timeout(ddg, server):
    server.emulator.inject_fault(Fault.NO_REPLY)
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout) as info:
        ddg.identify()
    assert time.monotonic() - start < 3 * TIMEOUT_S
    assert info.value.command == "*IDN?"
    assert ddg.identify().startswith("Stanford")


def test_garbled_error_queue_reply_is_a_protocol_error(ddg, server):
    server.emulator.inject_fault(Fault.GARBAGE, b"999\r\n")
    with pytest.raises(ProtocolError, match="error code"):
        ddg.set_trigger_rate(10)


def test_disconnect_is_an_instrument_error(ddg, server):
    server.emulator.inject_fault(Fault.DISCONNECT)
    start = time.monotonic()
    with pytest.raises(InstrumentError, match="link failure"):
        ddg.get_delay("A")
    assert time.monotonic() - start < 4 * TIMEOUT_S


@pytest.fixture(scope="module")
def fuzz() -> Iterator[tuple[DG645, DG645Emulator]]:
    """One in-process link for the property tests (no sockets, short timeout)."""
    emulator = DG645Emulator()
    register_emulator("fuzz", emulator)
    with DG645("ASRLdg645sim://fuzz::INSTR", timeout_s=0.1) as driver:
        yield driver, emulator
    unregister_emulator("fuzz")


TERMINATED = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"") + b"\r\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(TERMINATED, TERMINATED, TERMINATED, st.binary(max_size=30)))
@example(payload=b"\r\n0,+1\r\n")  # two lines for one query
@example(payload=b"0,nan\r\n")
@example(payload=b"")
def test_any_reply_gives_a_value_or_a_typed_error_and_never_hangs(fuzz, payload):
    driver, emulator = fuzz
    emulator.inject_fault(Fault.GARBAGE, payload)
    start = time.monotonic()
    try:
        reference, seconds = driver.get_delay("A")
    except (ProtocolError, InstrumentTimeout):
        pass
    else:
        assert reference in CHANNELS
        assert -2000.000001 <= seconds <= 2000.000001
    assert time.monotonic() - start < 1.0
    assert driver.get_delay("A") == emulator.delay("A")  # the next exchange is in step again


@settings(max_examples=30, deadline=None)
@given(keep=st.integers(0, 16), seconds=st.floats(0, 2000))
def test_truncated_replies_give_a_value_or_a_protocol_error(fuzz, keep, seconds):
    driver, emulator = fuzz
    driver.set_delay("D", "T0", seconds)
    full = emulator.handle(b"DLAY?5")[:-2].decode()
    emulator.inject_fault(Fault.TRUNCATED, keep=keep)
    try:
        reference, readback = driver.get_delay("D")
    except ProtocolError as error:
        assert error.reply == full[:keep]
    else:  # a cut after a digit can still be a number, as on the real wire
        assert (reference, readback) == ("T0", float(full[:keep].split(",")[1]))


IN_RANGE = st.tuples(st.integers(0, 9), st.floats(-1999.999, 1999.999))
OUT_OF_RANGE = st.one_of(
    st.tuples(st.integers(10, 10**6) | st.integers(-(10**6), -1), st.floats(-1, 1)),
    st.tuples(st.integers(0, 9), st.floats(2000.01, 1e30) | st.floats(-1e30, -2000.01)),
)


@settings(max_examples=60, deadline=None)
@given(reply=st.one_of(IN_RANGE.map(lambda r: (r, True)), OUT_OF_RANGE.map(lambda r: (r, False))))
def test_out_of_range_replies_are_protocol_errors(fuzz, reply):
    driver, emulator = fuzz
    (reference, seconds), valid = reply
    emulator.inject_fault(Fault.GARBAGE, f"{reference},{seconds:+.12f}\r\n".encode())
    if valid:
        assert driver.get_delay("H") == (CHANNELS[reference], pytest.approx(seconds, abs=1e-9))
    else:
        with pytest.raises(ProtocolError):
            driver.get_delay("H")


@settings(max_examples=60, deadline=None)
@given(seconds=st.floats(0, 2000), channel=st.sampled_from("ABCDEFGH"))
def test_delays_in_range_round_trip_to_5ps(fuzz, seconds, channel):
    driver, _ = fuzz
    driver.set_delay(channel, "T0", seconds)
    reference, readback = driver.get_delay(channel)
    assert reference == "T0"
    assert abs(readback - seconds) <= 2.5e-12 + 1e-15 * seconds


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda v: not 100e-6 <= v <= 10e6), st.integers(max_value=0)))
def test_any_rate_outside_range_is_refused_before_sending(fuzz, value):
    driver, emulator = fuzz
    before = emulator.received_bytes
    with pytest.raises(SettingOutOfRange):
        driver.set_trigger_rate(value)
    assert emulator.received_bytes == before


# --------------------------------------------------------------------------- bursts
@pytest.mark.parametrize("count", [1, 5, 23])
def test_burst_of_n_emits_exactly_n_shots(ddg, server, count):
    ddg.set_trigger_source("single_shot")
    ddg.configure_burst(count, 1e-3)
    ddg.fire()
    status = ddg.wait_end_of_burst(timeout_s=2.0)
    assert status == BurstStatus(end_of_burst=True, flags=status.flags)
    shots = server.emulator.shots
    assert len(shots) == count
    spacing = [s.time - shots[0].time for s in shots]
    assert spacing == pytest.approx([k * 1e-3 for k in range(count)], abs=1e-9)


def test_ignored_trigger_is_reported(ddg, server):
    ddg.set_trigger_source("single_shot")
    ddg.configure_burst(5, 5e-3)
    ddg.fire()
    ddg.fire()  # arrives while the first burst runs
    status = ddg.wait_end_of_burst(timeout_s=2.0)
    assert status.end_of_burst and status.triggers_ignored and not status.inhibited
    assert len(server.emulator.shots) == 5


def test_fire_needs_single_shot_trigger_source(ddg):
    ddg.set_trigger_source(TriggerSource.INTERNAL)
    with pytest.raises(InstrumentError, match="single_shot") as info:
        ddg.fire()
    assert (info.value.code, info.value.meaning) == (11, error_meaning(11))


def test_fire_reads_away_stale_status(ddg, server):
    ddg.set_trigger_source("single_shot")
    ddg.configure_burst(2, 1e-3)
    server.emulator.set_status_bits(StatusFlag.END_OF_BURST | StatusFlag.RATE)
    ddg.fire()
    status = ddg.wait_end_of_burst(timeout_s=2.0)
    assert not status.triggers_ignored
    assert len(server.emulator.shots) == 2


def test_burst_that_outlasts_the_wait_times_out(ddg):
    ddg.set_trigger_source("single_shot")
    ddg.configure_burst(100, 0.01)
    ddg.fire()
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="did not end"):
        ddg.wait_end_of_burst(timeout_s=0.05)
    assert time.monotonic() - start < 0.5
    ddg.disable_outputs()


def test_disable_outputs_inhibits_and_stops_triggers(ddg, server):
    ddg.set_trigger_source("internal")
    assert exchanges(server.emulator, ddg.disable_outputs) == [
        (b"TSRC 5;INHB 5;LERR?", b"0\r\n"),
    ]
    assert server.emulator.outputs_inhibited
    assert server.emulator.trigger_source == TriggerSource.SINGLE_SHOT
    ddg.enable_outputs()
    assert not server.emulator.outputs_inhibited


def test_disable_from_another_thread_ends_the_wait_and_gates_the_rest(ddg, server):
    ddg.set_trigger_source("single_shot")
    ddg.configure_burst(50, 0.01)
    ddg.fire()
    result: list[BurstStatus] = []
    waiter = threading.Thread(target=lambda: result.append(ddg.wait_end_of_burst(5.0)))
    waiter.start()
    time.sleep(0.05)  # let a few shots go out first
    start = time.monotonic()
    ddg.disable_outputs()
    waiter.join(timeout=2)
    assert not waiter.is_alive()
    assert time.monotonic() - start < 0.5
    assert result[0].aborted and not result[0].end_of_burst
    later = threading.Event()
    server.emulator.on_shot(lambda shot: later.set())
    assert later.wait(timeout=1.0)  # the burst goes on ...
    shots = server.emulator.shots
    assert shots[0].inhibited_outputs == frozenset()
    assert shots[-1].inhibited_outputs == {"AB", "CD", "EF", "GH"}  # ... but gated


# --------------------------------------------------------------------------- other links
def test_serial_link_through_a_pty():
    with DG645PtyServer() as srv, DG645(srv.resource_name, timeout_s=TIMEOUT_S) as driver:
        driver.set_trigger_source("single_shot")
        driver.configure_burst(3, 1e-3)
        driver.fire()
        assert driver.wait_end_of_burst(2.0).end_of_burst
        assert len(srv.emulator.shots) == 3


def test_serial_link_through_the_url_handler_is_byte_exact():
    emulator = DG645Emulator()
    register_emulator("bytes", emulator)
    try:
        with DG645("ASRLdg645sim://bytes::INSTR", timeout_s=TIMEOUT_S) as driver:
            emulator.clear_transcript()
            driver.set_output_level("GH", amplitude_v=1.0)
    finally:
        unregister_emulator("bytes")
    assert emulator.received_bytes == b"LAMP 4,1.00;LERR?\n"


# --------------------------------------------------------------------------- pyvisa-sim
@pytest.mark.parametrize("resource", ["TCPIP::127.0.0.1::5025::SOCKET", "ASRL1::INSTR"])
def test_static_paths_against_pyvisa_sim(resource):
    with DG645(resource, visa_library=SIM_LIBRARY, timeout_s=TIMEOUT_S) as driver:
        assert driver.identify() == "Stanford Research Systems,DG645,s/n004321,ver1.14.10E"
        driver.set_delay("E", "A", 1.5e-6)
        assert driver.get_delay("E") == ("A", pytest.approx(1.5e-6))
        driver.set_output_level("EF", amplitude_v=4.0, polarity=Polarity.NEGATIVE)
        assert driver.get_output_level("EF") == OutputLevel(4.0, 0.0, Polarity.NEGATIVE)
        driver.set_trigger_rate(20)
        assert driver.get_trigger_rate() == 20.0
        driver.disable_outputs()
        assert driver.get_trigger_source() is TriggerSource.SINGLE_SHOT


def test_unknown_command_error_path_against_pyvisa_sim():
    with DG645("TCPIP::127.0.0.1::5025::SOCKET", visa_library=SIM_LIBRARY,
               timeout_s=TIMEOUT_S) as driver:
        with pytest.raises(InstrumentError) as info:
            driver.configure_burst(3, 0.02)  # the static simulator knows no BUR* commands
        assert (info.value.code, info.value.meaning) == (111, "undefined command")
        assert driver.get_trigger_rate() > 0  # error queue drained, link still usable


def test_wrong_instrument_against_pyvisa_sim():
    with pytest.raises(InstrumentError, match="SR830"):
        DG645("TCPIP::127.0.0.1::5026::SOCKET", visa_library=SIM_LIBRARY, timeout_s=TIMEOUT_S)
