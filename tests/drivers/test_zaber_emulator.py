"""The Zaber ASCII emulator on its own: wire format, motion on a manual clock, homing, limits,
rejections, warnings, checksums, alerts, distance triggers, faults and the three transports."""

from __future__ import annotations

import socket
import time

import pytest
import serial

from plumelink.drivers.sim.zaber_emulator import (
    AxisConfig,
    EmulatorDisconnect,
    Fault,
    ManualClock,
    ScriptedPeer,
    TriggerEvent,
    ZaberEmulator,
    ZaberPtyServer,
    ZaberTcpServer,
    lrc,
    register_peer,
    unregister_peer,
)

# 100 000 microsteps/s: 1 microstep = 10 µs of travel time
SPEED = 163_840


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def em(clock: ManualClock) -> ZaberEmulator:
    return ZaberEmulator(clock=clock)


def homed(clock: ManualClock, **kwargs: object) -> ZaberEmulator:
    config = AxisConfig(referenced=True, position=0)
    return ZaberEmulator({1: [config], 2: [AxisConfig(referenced=True, position=0)]},
                         clock=clock, **kwargs)  # type: ignore[arg-type]


def test_lrc_matches_published_vector() -> None:
    # zproto's test vector: the bytes of "01 tools echo" plus 143 (0x8F) sum to 0 mod 256
    assert lrc("01 tools echo") == "8F"
    assert (sum(b"01 tools echo") + 0x8F) % 256 == 0


def test_status_reply_is_byte_exact(em: ZaberEmulator) -> None:
    assert em.handle(b"/1 1 00") == [b"@01 1 00 OK IDLE WR 0\r\n"]
    assert em.handle(b"/2 1") == [b"@02 1 OK IDLE WR 0\r\n"]  # no id sent: none echoed
    assert em.handle(b"/1 1 7 get limit.max") == [b"@01 1 7 OK IDLE WR 1000000\r\n"]


def test_broadcast_and_unknown_address(em: ZaberEmulator) -> None:
    assert em.handle(b"/0 0 12 get pos") == [b"@01 0 12 OK IDLE WR 500000\r\n",
                                             b"@02 0 12 OK IDLE WR 500000\r\n"]
    assert em.handle(b"/5 1 13 get pos") == []  # nobody at address 5
    assert em.handle(b"garbage without a slash") == []


def test_device_scope_get_lists_every_axis(clock: ManualClock) -> None:
    em = ZaberEmulator.single_controller(clock=clock)
    em.handle(b"/1 2 set pos 42")
    assert em.handle(b"/1 0 get pos") == [b"@01 0 OK IDLE WR 500000 42\r\n"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"/1 1 01 fly away", b"BADCOMMAND"),
        (b"/1 1 02 move abs lots", b"BADDATA"),
        (b"/1 1 03 set maxspeed 0", b"BADDATA"),
        (b"/1 2 04 get pos", b"BADAXIS"),
        (b"/1 1 05 trigger 1 disable", b"DEVICEONLY"),
        (b"/1 1 06 get comm.alert", b"DEVICEONLY"),
        (b"/1 0 07 trigger 9 disable", b"BADDATA"),
        (b"/1 0 08 trigger 1 action a io set do 9 t", b"BADDATA"),
    ],
)
def test_rejections_use_real_reason_words(em: ZaberEmulator, line: bytes, reason: bytes) -> None:
    (reply,) = em.handle(line)
    assert reply.split()[3] == b"RJ"
    assert reply.endswith(b" " + reason + b"\r\n")


def test_bad_message_id_is_rejected_without_an_id(em: ZaberEmulator) -> None:
    assert em.handle(b"/1 1 100 get pos") == [b"@01 1 RJ IDLE WR BADMESSAGEID\r\n"]


def test_unhomed_axis_refuses_moves_until_homed(clock: ManualClock, em: ZaberEmulator) -> None:
    assert em.handle(b"/1 1 01 move abs 100") == [b"@01 1 01 RJ IDLE WR BADDATA\r\n"]
    assert em.handle(b"/1 1 02 warnings") == [b"@01 1 02 OK IDLE WR 01 WR\r\n"]
    assert em.handle(b"/1 1 03 home") == [b"@01 1 03 OK BUSY WR 0\r\n"]
    clock.advance(2.5)  # halfway: 500 000 microsteps at 100 000/s takes 5 s
    assert em.position(1, 1) == pytest.approx(250_000)
    assert em.handle(b"/1 1 04") == [b"@01 1 04 OK BUSY WR 0\r\n"]
    clock.advance(2.5)
    assert em.handle(b"/1 1 05") == [b"@01 1 05 OK IDLE -- 0\r\n"]
    assert em.handle(b"/1 1 06 get pos") == [b"@01 1 06 OK IDLE -- 0\r\n"]
    assert em.handle(b"/1 1 07 warnings") == [b"@01 1 07 OK IDLE -- 00\r\n"]


def test_move_takes_time_at_maxspeed_and_interpolates(clock: ManualClock) -> None:
    em = homed(clock)
    assert em.handle(b"/1 1 set maxspeed 16384") == [b"@01 1 OK IDLE -- 0\r\n"]  # 10 000 /s
    assert em.handle(b"/1 1 move abs 20000") == [b"@01 1 OK BUSY -- 0\r\n"]
    clock.advance(0.5)
    assert em.handle(b"/1 1 get pos") == [b"@01 1 OK BUSY -- 5000\r\n"]
    clock.advance(1.49)
    assert em.busy(1, 1)
    clock.advance(0.01)
    assert not em.busy(1, 1)
    assert em.handle(b"/1 1 move rel -500") == [b"@01 1 OK BUSY -- 0\r\n"]
    clock.advance(1.0)
    assert em.position(1, 1) == 19_500


def test_targets_outside_the_limits_are_refused(clock: ManualClock) -> None:
    em = homed(clock)
    assert em.handle(b"/1 1 move abs 1000001")[0].endswith(b"RJ IDLE -- BADDATA\r\n")
    assert em.handle(b"/1 1 move rel -1")[0].endswith(b"RJ IDLE -- BADDATA\r\n")
    assert em.handle(b"/1 1 set limit.max 5000") == [b"@01 1 OK IDLE -- 0\r\n"]
    assert em.handle(b"/1 1 move abs 5001")[0].endswith(b"BADDATA\r\n")
    assert em.handle(b"/1 1 set limit.min 6000")[0].endswith(b"BADDATA\r\n")  # above max
    assert em.handle(b"/1 1 get limit.max") == [b"@01 1 OK IDLE -- 5000\r\n"]


def test_setting_limits_while_moving_is_statusbusy(clock: ManualClock) -> None:
    em = homed(clock)
    em.handle(b"/1 1 move abs 100000")
    assert em.handle(b"/1 1 set limit.max 200000") == [b"@01 1 RJ BUSY -- STATUSBUSY\r\n"]


def test_stop_freezes_position_and_sets_ni(clock: ManualClock) -> None:
    em = homed(clock)
    em.handle(b"/1 1 move abs 100000")
    clock.advance(0.25)
    assert em.handle(b"/1 1 stop") == [b"@01 1 OK IDLE NI 0\r\n"]
    assert em.position(1, 1) == pytest.approx(25_000)
    clock.advance(1.0)
    assert em.position(1, 1) == pytest.approx(25_000)
    # the list is the one before clearing; the flag field shows the state after it [I]
    assert em.handle(b"/1 1 warnings clear") == [b"@01 1 OK IDLE -- 01 NI\r\n"]
    assert em.handle(b"/1 1 warnings") == [b"@01 1 OK IDLE -- 00\r\n"]


def test_stall_fault_stops_the_move_part_way(clock: ManualClock) -> None:
    em = homed(clock)
    em.inject_stall(1, 1, fraction=0.25)
    em.handle(b"/1 1 move abs 80000")
    clock.advance(10.0)
    assert em.handle(b"/1 1") == [b"@01 1 OK IDLE FS 0\r\n"]
    assert em.position(1, 1) == pytest.approx(20_000)
    assert em.handle(b"/1 1 warnings") == [b"@01 1 OK IDLE FS 01 FS\r\n"]
    em.handle(b"/1 1 warnings clear")
    assert em.flags(1, 1) == frozenset()


def test_flag_shown_is_the_highest_priority(clock: ManualClock) -> None:
    em = homed(clock)
    em.set_flags(1, 1, "NI", "WT", "FQ")
    assert em.handle(b"/1 1") == [b"@01 1 OK IDLE FQ 0\r\n"]
    assert em.handle(b"/1 1 warnings") == [b"@01 1 OK IDLE FQ 03 FQ WT NI\r\n"]
    # homing references the axis; WR stays through "warnings clear" until then
    em.set_flags(2, 1, "WR")
    em.handle(b"/2 1 warnings clear")
    assert em.flags(2, 1) == frozenset({"WR"})


def test_checksums_are_checked_and_can_be_added_to_replies(clock: ManualClock) -> None:
    em = homed(clock, reply_checksums=True)
    body = "1 1 05 get limit.max"
    (reply,) = em.handle(f"/{body}:{lrc(body)}".encode())
    text = reply.decode().rstrip("\r\n")
    assert text.startswith("@01 1 05 OK IDLE -- 1000000:")
    assert lrc(text[1:-3]) == text[-2:]
    assert em.handle(f"/{body}:00".encode()) == []  # wrong checksum: dropped


def test_alerts_are_queued_when_a_move_ends(clock: ManualClock) -> None:
    em = homed(clock)
    assert em.handle(b"/1 0 set comm.alert 1") == [b"@01 0 OK IDLE -- 0\r\n"]
    em.handle(b"/1 1 move abs 1000")
    clock.advance(1.0)
    em.update()
    assert em.take_unsolicited() == [b"!01 1 IDLE --\r\n"]
    em.handle(b"/1 1 move abs 0")
    clock.advance(1.0)  # not collected by a transport: comes before the next reply
    assert em.handle(b"/1 1 05") == [b"!01 1 IDLE --\r\n", b"@01 1 05 OK IDLE -- 0\r\n"]


def test_distance_trigger_records_positions_and_toggles_output(clock: ManualClock) -> None:
    em = homed(clock)
    seen: list[TriggerEvent] = []
    unsubscribe = em.on_trigger(seen.append)
    for command in (b"/1 0 trigger 2 when 1 dist 1500", b"/1 0 trigger 2 action a io set do 3 t",
                    b"/1 0 trigger 2 enable"):
        assert em.handle(command) == [b"@01 0 OK IDLE -- 0\r\n"]
    em.handle(b"/1 1 move abs 10000")  # 0.1 s at 100 000 microsteps/s
    clock.advance(0.05)
    em.update()
    assert [e.position for e in seen] == [1500, 3000, 4500]
    clock.advance(1.0)
    em.handle(b"/1 1 move abs 7000")
    clock.advance(1.0)
    events = em.trigger_events
    assert [e.position for e in events] == [1500, 3000, 4500, 6000, 7500, 9000, 9500, 8000]
    assert [e.level for e in events] == [1, 0, 1, 0, 1, 0, 1, 0]
    assert all(e.output == 3 and e.trigger == 2 and e.axis == 1 for e in events)
    assert [round(e.time, 6) for e in events[:3]] == [0.015, 0.03, 0.045]
    assert em.output(1, 3) == 0
    assert seen == events
    unsubscribe()
    em.handle(b"/1 0 trigger 2 disable")
    em.handle(b"/1 1 move abs 0")
    clock.advance(1.0)
    assert len(em.trigger_events) == 8


def test_distance_trigger_count_disables_itself(clock: ManualClock) -> None:
    em = homed(clock)
    em.handle(b"/1 0 trigger 1 when 1 dist 100")
    em.handle(b"/1 0 trigger 1 action a io set do 1 t")
    em.handle(b"/1 0 trigger 1 enable 3")
    em.handle(b"/1 1 move abs 5000")
    clock.advance(1.0)
    assert [e.position for e in em.trigger_events] == [100, 200, 300]


@pytest.mark.parametrize(
    ("fault", "payload", "expected"),
    [
        (Fault.GARBAGE, b"zz\r\n", [b"zz\r\n"]),
        (Fault.NO_REPLY, None, []),
        (Fault.TRUNCATED, None, [b"@01 1 04 O\r\n"]),
        (Fault.REJECT, "LOCKSTEP", [b"@01 1 04 RJ IDLE -- LOCKSTEP\r\n"]),
        (Fault.WRONG_ID, None, [b"@01 1 05 OK IDLE -- 0\r\n"]),
        (Fault.EXTRA_LINES, b"#01 1 hello\r\n", [b"#01 1 hello\r\n", b"@01 1 04 OK IDLE -- 0\r\n"]),
    ],
)
def test_reply_faults(clock: ManualClock, fault: Fault, payload: bytes | str | None,
                      expected: list[bytes]) -> None:
    em = homed(clock)
    em.inject_fault(fault, payload)
    assert em.handle(b"/1 1 04 get pos") == expected
    assert em.handle(b"/1 1 05 get pos") == [b"@01 1 05 OK IDLE -- 0\r\n"]  # once only


def test_disconnect_fault_raises(em: ZaberEmulator) -> None:
    em.inject_fault(Fault.DISCONNECT)
    with pytest.raises(EmulatorDisconnect):
        em.handle(b"/1 1 get pos")
    assert em.handle(b"/1 1 get pos")  # the emulator itself carries on


def test_transcript_records_lines_and_replies(em: ZaberEmulator) -> None:
    em.handle(b"/1 1 01 get pos")
    assert em.transcript == [(b"/1 1 01 get pos", (b"@01 1 01 OK IDLE WR 500000\r\n",))]
    assert em.commands == [b"/1 1 01 get pos"]
    em.clear_transcript()
    assert em.transcript == []


# ---------------------------------------------------------------------- transports
def _exchange(port: serial.SerialBase, data: bytes, lines: int = 1) -> bytes:
    port.write(data)
    out = b""
    deadline = time.monotonic() + 2.0
    while out.count(b"\n") < lines and time.monotonic() < deadline:
        out += port.read(1)
    return out


def test_pty_transport_speaks_through_real_pyserial() -> None:
    with ZaberPtyServer() as server:
        port = serial.Serial(server.url, 115200, timeout=0.2)
        try:
            assert _exchange(port, b"/1 1 00 get pos\r\n") == b"@01 1 00 OK IDLE WR 500000\r\n"
            # CR, LF and CR LF all end a command; two devices answer a broadcast
            assert _exchange(port, b"/0 0 01\n", lines=2) == (b"@01 0 01 OK IDLE WR 0\r\n"
                                                              b"@02 0 01 OK IDLE WR 0\r\n")
            assert server.emulator.received_bytes == b"/1 1 00 get pos\r\n/0 0 01\n"
        finally:
            port.close()


def test_pty_disconnect_fault_fails_the_client() -> None:
    with ZaberPtyServer() as server:
        port = serial.Serial(server.url, 115200, timeout=0.2)
        try:
            server.emulator.inject_fault(Fault.DISCONNECT)
            port.write(b"/1 1 get pos\r\n")
            with pytest.raises(serial.SerialException):
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    port.read(1)
        finally:
            port.close()


def test_tcp_transport_and_async_alerts() -> None:
    em = ZaberEmulator({1: [AxisConfig(referenced=True, position=0, maxspeed=16_384_000)]})
    with ZaberTcpServer(em) as server:
        port = serial.serial_for_url(server.url, timeout=0.2)
        try:
            assert _exchange(port, b"/1 0 set comm.alert 1\r\n") == b"@01 0 OK IDLE -- 0\r\n"
            # 10 000 microsteps at 10^7/s: the alert comes unprompted ~1 ms later
            assert _exchange(port, b"/1 1 move abs 10000\r\n", lines=2) == (
                b"@01 1 OK BUSY -- 0\r\n!01 1 IDLE --\r\n")
        finally:
            port.close()


def test_tcp_disconnect_fault_resets_the_connection() -> None:
    with ZaberTcpServer() as server:
        client = socket.create_connection((server.host, server.port), timeout=2)
        try:
            server.emulator.inject_fault(Fault.DISCONNECT)
            client.sendall(b"/1 1 get pos\r\n")
            with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
                if client.recv(64) == b"":
                    raise ConnectionResetError
        finally:
            client.close()


def test_url_handler_in_process_with_manual_clock(clock: ManualClock) -> None:
    em = homed(clock)
    url = register_peer("emu-test", em)
    try:
        port = serial.serial_for_url(url, timeout=0.1)
        assert isinstance(port, serial.SerialBase)
        assert _exchange(port, b"/1 1 move abs 50000\r\n") == b"@01 1 OK BUSY -- 0\r\n"
        clock.advance(0.2)
        assert _exchange(port, b"/1 1 get pos\r\n") == b"@01 1 OK BUSY -- 20000\r\n"
        port.close()
        with pytest.raises(serial.SerialException):
            serial.serial_for_url("zabersim://nobody-registered")
    finally:
        unregister_peer("emu-test")


def test_scripted_peer_reports_deviations() -> None:
    peer = ScriptedPeer([(b"/1 1 00 get pos", b"@01 1 00 OK IDLE -- 5\r\n")])
    assert peer.handle(b"/1 1 00 get pos") == [b"@01 1 00 OK IDLE -- 5\r\n"]
    assert peer.handle(b"/1 1 01 get pos") == []
    assert peer.errors == ["unexpected b'/1 1 01 get pos' after the end of the script"]
