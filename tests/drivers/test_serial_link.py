"""The shared emulator transport on its own, with a toy echo protocol: line splitting, the fault
queue, unprompted messages, and each way in (TCP, pty, pyserial URL, pyvisa-py ASRL URL)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum

import psutil
import pytest
import pyvisa
import serial

from plumelink.drivers.sim.dg645_emulator import DG645Emulator
from plumelink.drivers.sim.serial_link import (
    EmulatorDisconnect,
    Fault,
    FaultQueue,
    LineLink,
    Peer,
    PeerSerial,
    PtyServer,
    QueuedFault,
    Reply,
    ScriptedPeer,
    TcpServer,
    register_scheme,
    register_url,
    unregister_url,
)
from plumelink.drivers.sim.zaber_emulator import ZaberEmulator

SCHEME = "echosim"


class Echo:
    """A toy line protocol: ``x`` -> ``echo:x`` CR LF. ``raw`` answers with plain bytes,
    ``two`` with two messages, ``quiet`` with None, ``boom`` raises (a bug); ``later <s>``
    schedules an unprompted ``tick`` CR LF that many seconds on. Faults apply to replies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.faults = FaultQueue(garbage=b"junk\r\n")
        self.received = bytearray()
        self.lines: list[bytes] = []
        self._due: list[float] = []
        self._unprompted: list[bytes] = []
        self.failed = threading.Event()

    def handle(self, line: bytes) -> Reply:
        with self._lock:
            if self.faults.take_disconnect():
                raise EmulatorDisconnect("fault injected: disconnect")
            self.lines.append(line)
            if line == b"boom":
                self.failed.set()
                raise RuntimeError("emulator bug")
            if line.startswith(b"later "):
                self._due.append(self._clock() + float(line.split()[1]))
                return None
            replies = {b"raw": b"raw\r\n", b"two": [b"one\r\n", b"two\r\n"], b"quiet": None}
            if line in replies:
                return replies[line]
            return self.faults.apply([b"echo:" + line + b"\r\n"])

    def note_received(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def update(self) -> None:
        with self._lock:
            now = self._clock()
            self._unprompted += [b"tick\r\n" for t in self._due if t <= now]
            self._due = [t for t in self._due if t > now]

    def take_unsolicited(self) -> list[bytes]:
        with self._lock:
            out, self._unprompted = self._unprompted, []
            return out

    def wait_hint_s(self) -> float | None:
        with self._lock:
            return max(0.0, min(self._due) - self._clock()) if self._due else None


register_scheme(SCHEME, factory=Echo)


@pytest.fixture
def echo_url() -> Iterator[tuple[Echo, str]]:
    peer = Echo()
    url = register_url(SCHEME, "toy", peer)
    yield peer, url
    unregister_url(SCHEME, "toy")


def _read_lines(sock: socket.socket, count: int = 1) -> bytes:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(4096)
        assert chunk, "server closed the connection"
        data += chunk
    return data


def _server_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.endswith("-emulator")}


# ---------------------------------------------------------------------- line link
def test_peers_satisfy_the_protocol() -> None:
    for peer in (Echo(), ScriptedPeer(), DG645Emulator(), ZaberEmulator()):
        assert isinstance(peer, Peer)


def test_link_splits_lines_on_cr_lf_and_across_chunks() -> None:
    peer = Echo()
    link = LineLink(peer)
    assert link.feed(b"a\rb\nc\r\n") == b"echo:a\r\necho:b\r\necho:c\r\n"
    assert link.feed(b"pa") == b""
    assert link.feed(b"rt\n\r\n\n") == b"echo:part\r\n"  # blank lines are skipped
    assert peer.lines == [b"a", b"b", b"c", b"part"]
    assert bytes(peer.received) == b"a\rb\nc\r\npart\n\r\n\n"


def test_link_takes_any_reply_form_and_custom_terminators() -> None:
    link = LineLink(Echo(), terminators=b";")
    assert link.feed(b"raw;two;quiet;x\n;tail") == b"raw\r\none\r\ntwo\r\necho:x\n\r\n"
    assert link.feed(b";") == b"echo:tail\r\n"
    with pytest.raises(ValueError):
        LineLink(Echo(), terminators=b"")


def test_overlong_line_is_discarded(caplog: pytest.LogCaptureFixture) -> None:
    link = LineLink(Echo(), max_line=16)
    assert link.feed(b"x" * 17) == b""
    assert "too long" in caplog.text
    assert link.feed(b"ok\n") == b"echo:ok\r\n"


# ---------------------------------------------------------------------- faults
class Own(Enum):
    GARBAGE = "garbage"  # an emulator's own enum: shared kinds match by value
    DOUBLE = "double"  # applied by an action the emulator passes in
    HELD = "held"  # taken by the emulator itself


def test_shared_faults_spoil_the_next_reply_once() -> None:
    queue = FaultQueue(garbage=b"junk\r\n")
    queue.push(Fault.NO_REPLY)
    assert queue.apply([]) == []  # waits for a reply to spoil
    assert queue.apply([b"a\r\n", b"b\r\n"]) == [b"b\r\n"]
    queue.push(Fault.TRUNCATED)
    queue.push(Fault.TRUNCATED, 1)
    queue.push(Fault.GARBAGE)
    queue.push(Own.GARBAGE, b"xyz")
    assert queue.apply([b"abcdef\r\n"]) == [b"abc\r\n"]
    assert queue.apply([b"abcd\n"]) == [b"a\n"]
    assert queue.apply([b"abc\r\n", b"d\r\n"]) == [b"junk\r\n", b"d\r\n"]
    assert queue.apply([b"abc\r\n"]) == [b"xyz"]
    assert queue.apply([b"abc\r\n"]) == [b"abc\r\n"]
    assert len(queue) == 0


def test_disconnect_and_own_kinds_wait_for_the_emulator() -> None:
    queue = FaultQueue()
    own = {Own.DOUBLE: lambda detail, replies: replies * 2}
    queue.push(Fault.DISCONNECT)
    queue.push(Own.HELD, "why", times=2)
    queue.push(Own.DOUBLE)
    assert queue.apply([b"a\r\n"], own) == [b"a\r\n"]  # DISCONNECT is not a reply fault
    assert queue.take(Own.HELD) is None
    assert queue.take_disconnect()
    assert not queue.take_disconnect()
    assert queue.apply([b"a\r\n"], own) == [b"a\r\n"]  # HELD is left to the emulator
    assert [queue.take(Own.HELD), queue.take(Own.HELD)] == [QueuedFault(Own.HELD, "why")] * 2
    assert queue.apply([b"a\r\n"], own) == [b"a\r\n", b"a\r\n"]
    assert len(queue) == 0


# ---------------------------------------------------------------------- TCP
def test_tcp_server_serves_clients_with_their_own_line_buffers() -> None:
    with TcpServer(Echo()) as server:
        assert server.port > 0
        assert server.url == f"socket://127.0.0.1:{server.port}"
        with socket.create_connection((server.host, server.port), timeout=2) as a, \
                socket.create_connection((server.host, server.port), timeout=2) as b:
            a.sendall(b"hel")
            b.sendall(b"other\n")
            assert _read_lines(b) == b"echo:other\r\n"
            a.sendall(b"lo\r\n")
            assert _read_lines(a) == b"echo:hello\r\n"
        assert server.emulator is server.peer


def test_tcp_disconnect_fault_drops_only_that_connection() -> None:
    with TcpServer(Echo()) as server:
        server.peer.faults.push(Fault.DISCONNECT)
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            sock.sendall(b"x\n")
            with contextlib.suppress(ConnectionResetError):  # RST, or EOF if it came late
                assert sock.recv(100) == b""
        with socket.create_connection((server.host, server.port), timeout=2) as sock:
            sock.sendall(b"y\n")
            assert _read_lines(sock) == b"echo:y\r\n"


def test_tcp_server_survives_a_peer_bug(caplog: pytest.LogCaptureFixture) -> None:
    with TcpServer(Echo(), name="toy-emulator") as server, \
            socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(b"boom\n")
        assert server.peer.failed.wait(2)
        sock.sendall(b"after\n")
        assert _read_lines(sock) == b"echo:after\r\n"
    assert "toy-emulator: handler failed" in caplog.text


def test_close_stops_the_thread_and_releases_everything() -> None:
    fds = len(os.listdir("/proc/self/fd"))
    before = _server_threads()
    tcp = TcpServer(Echo(), name="toy-tcp-emulator")
    pty = PtyServer(Echo(), name="toy-pty-emulator")
    client = socket.create_connection((tcp.host, tcp.port), timeout=2)
    client.sendall(b"x\n")
    assert _read_lines(client) == b"echo:x\r\n"
    assert _server_threads() == before | {"toy-tcp-emulator", "toy-pty-emulator"}
    tcp.close()
    pty.close()
    assert client.recv(10) == b""  # the server hung up on its client
    client.close()
    assert not tcp._thread.is_alive()
    assert not pty._thread.is_alive()
    assert _server_threads() == before
    with pytest.raises(OSError):
        socket.create_connection((tcp.host, tcp.port), timeout=0.5)
    tcp.close()  # idempotent
    pty.close()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_idle_server_sleeps_instead_of_spinning() -> None:
    with TcpServer(Echo(), max_wait_s=0.05) as server, \
            socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall(b"later 100\n")  # an event far away: the loop sleeps max_wait_s at a time
        time.sleep(0.05)
        thread = next(t for t in psutil.Process().threads() if t.id == server._thread.native_id)
        time.sleep(0.5)
        after = next(t for t in psutil.Process().threads() if t.id == server._thread.native_id)
        cpu_s = after.user_time + after.system_time - thread.user_time - thread.system_time
        assert cpu_s < 0.1


# ---------------------------------------------------------------------- unprompted
def test_tcp_server_sends_unprompted_messages_on_time_to_every_client() -> None:
    with TcpServer(Echo(), max_wait_s=10.0) as server, \
            socket.create_connection((server.host, server.port), timeout=2) as a, \
            socket.create_connection((server.host, server.port), timeout=2) as b:
        b.sendall(b"ping\n")
        assert _read_lines(b) == b"echo:ping\r\n"
        started = time.monotonic()
        a.sendall(b"later 0.05\n")
        assert _read_lines(a) == b"tick\r\n"
        assert _read_lines(b) == b"tick\r\n"
        assert 0.04 < time.monotonic() - started < 2.0  # woken by the hint, not max_wait_s


def test_pty_server_with_real_pyserial_and_unprompted_messages() -> None:
    with PtyServer(Echo(), max_wait_s=10.0) as server:
        assert server.url == server.port
        with serial.Serial(server.port, 115200, timeout=2) as port:
            port.write(b"hello\r\ntwo\n")
            assert port.read_until(b"two\r\n") == b"echo:hello\r\none\r\ntwo\r\n"
            port.write(b"later 0.02\n")
            assert port.read_until(b"\r\n") == b"tick\r\n"


def test_pty_disconnect_fault_fails_the_client() -> None:
    with PtyServer(Echo()) as server, serial.Serial(server.port, timeout=0.2) as port:
        server.peer.faults.push(Fault.DISCONNECT)
        port.write(b"x\n")
        with pytest.raises(serial.SerialException):
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                port.read(1)


# ---------------------------------------------------------------------- pyserial URL
def test_url_reaches_a_registered_peer_in_process(echo_url: tuple[Echo, str]) -> None:
    peer, url = echo_url
    assert url == "echosim://toy"
    port = serial.serial_for_url(url, timeout=0.1)
    assert isinstance(port, PeerSerial)
    assert port.emulator is peer
    port.write(b"a\nb\n")
    assert port.in_waiting == 16
    assert port.read_until(b"\r\n") == b"echo:a\r\n"
    assert port.read(10) == b"echo:b\r\n"
    assert port.read(10) == b""  # times out, returns what there is
    assert bytes(peer.received) == b"a\nb\n"
    port.close()


def test_url_alone_makes_a_fresh_peer_and_unknown_names_fail() -> None:
    port = serial.serial_for_url(f"{SCHEME}://", timeout=0.1)
    port.write(b"hi\n")
    assert isinstance(port.peer, Echo)
    assert port.read(20) == b"echo:hi\r\n"
    with pytest.raises(serial.SerialException, match="no emulator registered"):
        serial.serial_for_url(f"{SCHEME}://nobody")
    with pytest.raises(ValueError):
        register_url("unknownsim", "x", Echo())
    with pytest.raises(ValueError):
        register_scheme("bad_scheme")


def test_url_read_waits_for_unprompted_messages(echo_url: tuple[Echo, str]) -> None:
    _, url = echo_url
    port = serial.serial_for_url(url, timeout=2.0)
    started = time.monotonic()
    port.write(b"later 0.05\n")
    assert port.read_until(b"\r\n") == b"tick\r\n"
    assert 0.04 < time.monotonic() - started < 1.0
    port.close()


def test_url_disconnect_fault_fails_writes_and_reads(echo_url: tuple[Echo, str]) -> None:
    peer, url = echo_url
    port = serial.serial_for_url(url, timeout=0.1)
    peer.faults.push(Fault.DISCONNECT)
    with pytest.raises(serial.SerialException):
        port.write(b"x\n")
    with pytest.raises(serial.SerialException):
        port.read(1)
    with pytest.raises(serial.SerialException):
        port.write(b"x\n")
    port.close()


def test_url_after_unregister_fails() -> None:
    register_url(SCHEME, "gone", Echo())
    serial.serial_for_url(f"{SCHEME}://gone").close()
    unregister_url(SCHEME, "gone")
    with pytest.raises(serial.SerialException):
        serial.serial_for_url(f"{SCHEME}://gone")


def test_pyvisa_py_asrl_url(echo_url: tuple[Echo, str]) -> None:
    _, url = echo_url
    manager = pyvisa.ResourceManager("@py")
    try:
        resource = manager.open_resource(f"ASRL{url}::INSTR", read_termination="\r\n",
                                         write_termination="\n", timeout=1000)
        assert resource.query("via visa") == "echo:via visa"  # type: ignore[attr-defined]
        resource.close()
    finally:
        manager.close()


# ---------------------------------------------------------------------- scripts
def test_scripted_peer_plays_byte_exact_and_records_deviations() -> None:
    peer = ScriptedPeer([(b"a", b"1\r\n"), (b"b", b"")])
    peer.extend([(b"c", b"\xff3\r\n")])
    with PtyServer(peer) as server, serial.Serial(server.port, timeout=0.2) as port:
        port.write(b"a\r\nb\r\nc\r\n")
        assert port.read(7) == b"1\r\n\xff3\r\n"
        port.write(b"x\n")
        assert port.read(1) == b""
    assert peer.remaining == []
    assert bytes(peer.received) == b"a\r\nb\r\nc\r\nx\n"
    assert peer.errors == ["unexpected b'x' after the end of the script"]
    wrong = ScriptedPeer([(b"a", b"1\r\n")])
    assert wrong.handle(b"z") == []
    assert wrong.errors == ["expected b'a', got b'z'"]

