"""The DG645 emulator on its own: parser and error codes, status latching, the burst sequencer
on a manual clock, fault injection, and each transport (TCP, pty, pyserial URL)."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from plumelink.drivers.sim.dg645_emulator import (
    DEFAULT_IDN,
    DG645Emulator,
    DG645PtyServer,
    DG645TcpServer,
    EmulatorDisconnect,
    Fault,
    Shot,
    register_emulator,
    unregister_emulator,
)

KNOWN_CODES = {10, 11, 12, 13, 110, 111, 112, 113, 114, 115, 116, 117, 118, 120, 121, 254}


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def drain(emu: DG645Emulator) -> list[int]:
    codes = []
    while (reply := emu.handle(b"LERR?")) != b"0\r\n":
        codes.append(int(reply))
    return codes


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emu(clock: ManualClock) -> DG645Emulator:
    return DG645Emulator(clock=clock)


# --------------------------------------------------------------------------- parser
@pytest.mark.parametrize(
    ("line", "reply", "codes"),
    [
        (b"*IDN?", f"{DEFAULT_IDN}\r\n".encode(), []),
        (b"dlay 2,0,1e-6;DLAY?2", b"0,+0.000001000000\r\n", []),
        (b"DLAY 2,0,1e-6;DLAY 3,2,-0.5e-6;dlay? 3", b"2,-0.000000500000\r\n", []),
        (b"TSRC?;TRAT?", b"5;+10000.000000\r\n", []),
        (b"LAMP 1,3.3;LAMP?1;LPOL?1", b"+3.30;1\r\n", []),
        (b"BURP 0.020000004;BURP?", b"+0.020000000000\r\n", []),
        (b"ABCD 1", None, [111]),
        (b"12AB", None, [110]),
        (b"*TRG?", None, [112]),
        (b"LERR 1", None, [113]),
        (b"DLAY 2,,1", None, [114]),
        (b"TSRC 1,2", None, [115]),
        (b"TSRC? 1", None, [115]),
        (b"DLAY 2,0", None, [116]),
        (b"DLAY?", None, [116]),
        (b"TRAT fast", None, [118]),
        (b"TRAT 1e999", None, [117]),
        (b"TSRC 1.5", None, [120]),
        (b"BURC 99999999999", None, [121]),
        (b"TSRC 9", None, [10]),
        (b"LAMP?7", None, [10]),
        (b"LAMP 1,7", None, [10]),
        (b"BURP 50e-9", None, [10]),
        (b"*TRG;TSRC 0;*TRG", None, [11]),
        (b"DLAY 2,0,2001", None, [12]),
        (b"DLAY 3,0,-1e-6", None, [12]),
        (b"DLAY 2,2,0", None, [13]),
        (b"DLAY 2,3,0;DLAY 3,2,0", None, [13]),
        (b"DLAY 0,2,1e-6", None, [10]),
        (b"\xff\xfe", None, [110]),
        (b"ABCD;TSRC 9;*TRG?", None, [111, 10, 112]),
    ],
)
def test_line_gives_reply_and_error_codes(emu, line, reply, codes):
    assert emu.handle(line) == reply
    assert drain(emu) == codes


def test_failed_set_leaves_value_unchanged(emu):
    emu.handle(b"DLAY 2,0,1e-6;DLAY 3,2,2e-6")
    emu.handle(b"DLAY 2,3,0")  # would loop A -> B -> A
    assert drain(emu) == [13]
    assert emu.delay("A") == ("T0", 1e-6)
    assert emu.delay("B") == ("A", 2e-6)


def test_delays_kept_on_5ps_grid(emu):
    emu.handle(b"DLAY 4,0,0.000001000003")
    assert emu.handle(b"DLAY?4") == b"0,+0.000001000005\r\n"


def test_error_queue_overflow_ends_with_254(emu):
    for _ in range(30):
        emu.handle(b"ABCD")
    codes = drain(emu)
    assert len(codes) == 20
    assert codes[-1] == 254
    assert set(codes[:-1]) == {111}


def test_cls_clears_errors_and_status_rst_restores_defaults(emu):
    emu.handle(b"ABCD;TSRC 0;LAMP 2,4;DLAY 2,0,1")
    emu.set_status_bits(64)
    emu.handle(b"*CLS")
    assert emu.errors == ()
    assert emu.handle(b"INSR?") == b"0\r\n"
    emu.handle(b"*RST")
    assert emu.handle(b"TSRC?;LAMP?2;DLAY?2") == b"5;+2.50;0,+0.000000000000\r\n"


def test_esr_records_error_classes(emu):
    emu.handle(b"ABCD;TSRC 9")
    assert emu.handle(b"*ESR?") == b"48\r\n"  # command error (32) + execution error (16)
    assert emu.handle(b"*ESR?") == b"0\r\n"


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=40),
    st.text(alphabet="DLAYTSRCBURMPLAOFINHQE*?;, 0123456789.+-e", max_size=40).map(str.encode),
))
def test_any_line_is_answered_or_queued_never_raises(line):
    emu = DG645Emulator(clock=ManualClock())
    reply = emu.handle(line.replace(b"\n", b"").replace(b"\r", b""))
    assert reply is None or (reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1)
    assert set(emu.errors) <= KNOWN_CODES


# --------------------------------------------------------------------------- sequencer
def test_burst_emits_count_shots_spaced_by_period(emu, clock):
    seen: list[Shot] = []
    emu.on_shot(seen.append)
    emu.handle(b"BURM 1;BURC 4;BURP 0.02;BURD 0.001;BURT 1;INSR?")
    emu.handle(b"*TRG")
    clock.t += 0.05
    emu.update()
    assert [s.burst_cycle for s in seen] == [0, 1, 2]
    assert int(emu.handle(b"INSR?")) & 8 == 0  # END_OF_BURST not yet
    clock.t += 1.0
    assert int(emu.handle(b"INSR?")) == 4 | 8  # END_OF_DELAY, END_OF_BURST (TRIG read above)
    assert emu.handle(b"INSR?") == b"0\r\n"  # latched bits cleared by reading
    assert len(seen) == 4
    assert [round(s.time - 100.0, 9) for s in seen] == [0.001, 0.021, 0.041, 0.061]
    assert [s.t0_output for s in seen] == [True, False, False, False]
    assert [s.number for s in seen] == [1, 2, 3, 4]
    assert emu.shots == tuple(seen)


def test_trigger_during_burst_is_ignored_and_sets_rate(emu, clock):
    emu.handle(b"BURM 1;BURC 3;BURP 0.01;*TRG")
    clock.t += 0.005
    emu.handle(b"*TRG")
    clock.t += 1.0
    status = int(emu.handle(b"INSR?"))
    assert status & 2  # RATE
    assert status & 8  # END_OF_BURST
    assert len(emu.shots) == 3
    assert emu.ignored_triggers == 1


def test_single_shot_without_burst_ends_delay_not_burst(emu):
    emu.handle(b"DLAY 2,0,1e-6;DLAY 3,2,2e-6;*TRG")
    assert int(emu.handle(b"INSR?")) == 1 | 4
    (shot,) = emu.shots
    assert shot.delays["A"] == pytest.approx(1e-6)
    assert shot.delays["B"] == pytest.approx(3e-6)


def test_inhibit_all_outputs_gates_shots(emu, clock):
    emu.handle(b"INHB 5;BURM 1;BURC 2;BURP 0.01;*TRG")
    clock.t += 1
    emu.update()
    assert emu.outputs_inhibited
    assert all(s.inhibited_outputs == {"AB", "CD", "EF", "GH"} for s in emu.shots)
    assert int(emu.handle(b"INSR?")) & 16


def test_inhibit_triggers_starts_no_cycle(emu, clock):
    emu.handle(b"INHB 1;*TRG")
    clock.t += 1
    emu.update()
    assert emu.shots == ()
    assert int(emu.handle(b"INSR?")) == 16


def test_partial_inhibit_and_inhibit_input_released(clock):
    emu = DG645Emulator(clock=clock, inhibit_input=False)
    emu.handle(b"INHB 5;*TRG")
    assert emu.shots[0].inhibited_outputs == frozenset()
    assert not emu.outputs_inhibited
    emu.inhibit_input = True
    emu.handle(b"INHB 3")
    assert emu.inhibited_outputs == {"AB", "CD"}
    assert not emu.outputs_inhibited


def test_internal_trigger_runs_on_the_clock(emu, clock):
    emu.handle(b"TRAT 100;TSRC 0")
    assert emu.next_event_time() == pytest.approx(100.01)
    clock.t += 0.1005
    emu.update()
    assert len(emu.shots) == 10
    emu.handle(b"TSRC 5")
    clock.t += 1
    emu.update()
    assert len(emu.shots) == 10
    assert emu.next_event_time() is None


def test_external_trigger_and_armed_single_shot(emu):
    assert not emu.external_trigger()  # TSRC 5 ignores the external input
    emu.handle(b"TSRC 1")
    assert emu.external_trigger()
    emu.handle(b"TSRC 3")
    assert not emu.external_trigger()  # not armed
    emu.handle(b"*TRG")
    assert emu.external_trigger()
    assert not emu.external_trigger()  # one shot per arming
    assert drain(emu) == []
    assert len(emu.shots) == 2


def test_shot_callbacks_unsubscribe_and_survive_errors(emu):
    seen = []

    def broken(shot: Shot) -> None:
        raise RuntimeError("physics failed")

    emu.on_shot(broken)
    unsubscribe = emu.on_shot(seen.append)
    emu.handle(b"*TRG")
    unsubscribe()
    emu.handle(b"*TRG")
    assert len(seen) == 1
    assert len(emu.shots) == 2


def test_shots_arrive_in_order_from_several_threads(emu, clock):
    seen: list[int] = []
    emu.on_shot(lambda shot: seen.append(shot.number))
    emu.handle(b"TRAT 1000;TSRC 0")

    def hammer() -> None:
        for _ in range(200):
            emu.handle(b"INSR?")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(100):
        clock.t += 0.001
        emu.update()
    for thread in threads:
        thread.join()
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) == 100


# --------------------------------------------------------------------------- faults
def test_reply_faults_apply_once_each(emu):
    emu.inject_fault(Fault.GARBAGE)
    emu.inject_fault(Fault.NO_REPLY)
    emu.inject_fault(Fault.TRUNCATED)
    emu.inject_fault(Fault.GARBAGE, b"12,xyz\r\n")
    emu.handle(b"TSRC 1")  # a set has no reply to spoil
    assert not emu.handle(b"*IDN?").isascii()
    assert emu.handle(b"*IDN?") is None
    assert emu.handle(b"*IDN?") == DEFAULT_IDN[: (len(DEFAULT_IDN)) // 2].encode() + b"\r\n"
    assert emu.handle(b"*IDN?") == b"12,xyz\r\n"
    assert emu.handle(b"*IDN?") == f"{DEFAULT_IDN}\r\n".encode()


def test_disconnect_fault_raises_once(emu):
    emu.inject_fault(Fault.DISCONNECT)
    with pytest.raises(EmulatorDisconnect):
        emu.handle(b"*IDN?")
    assert emu.handle(b"TSRC?") == b"5\r\n"


# --------------------------------------------------------------------------- transports
def _ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        assert chunk, "server closed the connection"
        data += chunk
    return data


def test_tcp_server_serves_several_clients_and_closes():
    server = DG645TcpServer()
    assert server.resource_name == f"TCPIP::127.0.0.1::{server.port}::SOCKET"
    with socket.create_connection((server.host, server.port), timeout=2) as a, \
            socket.create_connection((server.host, server.port), timeout=2) as b:
        a.sendall(b"TSRC 1\n")
        assert _ask(b, b"tsrc?\r\n") == b"1\r\n"
        assert _ask(a, b"*IDN?\n").startswith(b"Stanford Research Systems,DG645")
    server.close()
    assert not server._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=0.5)
    server.close()  # idempotent


def test_tcp_server_emits_scheduled_shots_without_being_polled():
    done = threading.Event()
    with DG645TcpServer() as server:
        server.emulator.on_shot(lambda shot: shot.burst_cycle == 2 and done.set())
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            sock.sendall(b"BURM 1;BURC 3;BURP 0.005;*TRG\n")
            assert done.wait(timeout=2)
    times = server.emulator.shot_times
    assert [round(t - times[0], 9) for t in times] == [0.0, 0.005, 0.01]


def test_tcp_disconnect_fault_drops_the_connection():
    with DG645TcpServer() as server:
        server.emulator.inject_fault(Fault.DISCONNECT)
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            sock.sendall(b"*IDN?\n")
            with contextlib.suppress(ConnectionResetError):  # RST, or EOF if it came late
                assert sock.recv(100) == b""
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            assert _ask(sock, b"TSRC?\n") == b"5\r\n"


def test_pty_server_with_real_pyserial():
    with DG645PtyServer() as server:
        assert server.resource_name == f"ASRL{server.port}::INSTR"
        with serial.Serial(server.port, 9600, rtscts=True, timeout=2) as port:
            port.write(b"DLAY 2,0,1e-6;DLAY?2\n")
            assert port.read_until(b"\r\n") == b"0,+0.000001000000\r\n"
            port.write(b"*IDN?\r")
            assert port.read_until(b"\r\n") == f"{DEFAULT_IDN}\r\n".encode()


def test_url_handler_new_and_registered_emulators():
    fresh = serial.serial_for_url("dg645sim://", timeout=0.1)
    fresh.write(b"TSRC 0\n")
    assert fresh.emulator.trigger_source == 0
    emu = DG645Emulator()
    url = register_emulator("bench-a", emu)
    try:
        port = serial.serial_for_url(url, timeout=0.1)
        port.write(b"*IDN?\nTSRC?\n")
        assert port.in_waiting == len(DEFAULT_IDN) + 5
        assert port.read_until(b"\r\n") == f"{DEFAULT_IDN}\r\n".encode()
        assert port.read(10) == b"5\r\n"
        assert port.read(10) == b""  # times out, returns what there is
        assert emu.received_bytes == b"*IDN?\nTSRC?\n"
        emu.inject_fault(Fault.DISCONNECT)
        with pytest.raises(serial.SerialException):
            port.write(b"*IDN?\n")
        with pytest.raises(serial.SerialException):
            port.read(1)
        port.close()
    finally:
        unregister_emulator("bench-a")
    with pytest.raises(serial.SerialException):
        serial.serial_for_url("dg645sim://bench-a")
