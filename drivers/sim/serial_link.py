"""The transport every wire-level emulator shares: lines in, replies out, over a real link.

An emulator is any `Peer`: ``handle(line)`` answers one received line (terminator removed) with
the bytes to send back, and four small hooks let transports record traffic, keep time and pass
on what the emulator says unprompted. Nothing here knows an instrument:

* `LineLink`: one connection's byte stream, split into lines on the protocol's terminator
  bytes, each handed to the peer, the replies collected;
* `FaultQueue`: one-shot faults an emulator queues and applies to its next replies (garbage,
  no reply, truncated, plus kinds of its own) and DISCONNECT, which makes the emulator raise
  `EmulatorDisconnect` so that every transport hangs up like an unplugged cable;
* `TcpServer`: a threaded localhost socket server (``port=0`` takes a free port);
* `PtyServer`: a pseudo-terminal pair; the driver opens ``/dev/pts/N`` as a real serial port;
* `register_scheme` and `register_url`: pyserial URLs ``<scheme>://<name>`` (pyvisa-py:
  ``ASRL<scheme>://<name>::INSTR``) reaching a registered peer in process, without threads;
* `ScriptedPeer`: plays an ordered script of (expected line, reply bytes), byte for byte.

Servers never spin: they sleep in ``select`` until a client sends bytes, ``close`` wakes them
or the peer's next timed event is due (`Peer.wait_hint_s`), and at most ``max_wait_s``, so an
event scheduled from outside the loop (another transport, a direct call) is still picked up.
The in-process port waits on a condition in the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import socket
import struct
import sys
import threading
import time
import tty
import types
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, Self, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

log = logging.getLogger(__name__)

LINE_ENDS = b"\r\n"  # default terminators: CR, LF or CR LF end a line
MAX_LINE = 4096  # an unterminated line longer than this is discarded
DEFAULT_MAX_WAIT_S = 0.5

#: What `Peer.handle` returns: one message, several, or None; each with its terminator.
Reply = bytes | Sequence[bytes] | None


# ---------------------------------------------------------------------- the far end
@runtime_checkable
class Peer(Protocol):
    """What a transport needs from the far end: an emulator's state machine or a script.

    ``handle`` gets one line without its terminator and returns the reply, and may raise
    `EmulatorDisconnect`. ``note_received`` sees every received byte before it is split into
    lines. ``update`` brings the peer up to its clock's present; ``take_unsolicited`` returns
    messages that became due without a command (alerts), which the transports send at once;
    ``wait_hint_s`` is the time to the peer's next timed event. A peer without a clock does
    nothing in ``update`` and returns ``[]`` and ``None``.
    """

    def handle(self, line: bytes) -> Reply: ...

    def note_received(self, data: bytes) -> None: ...

    def update(self) -> None: ...

    def take_unsolicited(self) -> list[bytes]: ...

    def wait_hint_s(self) -> float | None: ...


class EmulatorDisconnect(Exception):
    """Raised by a peer's ``handle`` when a DISCONNECT fault fires; transports hang up."""


def _messages(reply: Reply) -> list[bytes]:
    if reply is None:
        return []
    if isinstance(reply, bytes | bytearray):
        return [bytes(reply)]
    return list(reply)


class LineLink:
    """One connection: received bytes -> lines -> ``peer.handle`` -> the bytes to send.

    Any byte of ``terminators`` ends a line; blank lines are skipped; an unterminated line
    longer than ``max_line`` is discarded with a warning.
    """

    def __init__(self, peer: Peer, terminators: bytes = LINE_ENDS,
                 max_line: int = MAX_LINE) -> None:
        if not terminators:
            raise ValueError("a line protocol needs at least one terminator byte")
        self.peer = peer
        self._end = re.compile(b"[" + re.escape(terminators) + b"]")
        self._max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Feed received bytes; return the replies to send. May raise `EmulatorDisconnect`."""
        self.peer.note_received(data)
        self._buffer += data
        out = bytearray()
        while (end := self._end.search(self._buffer)) is not None:
            line = bytes(self._buffer[: end.start()])
            del self._buffer[: end.end()]
            if line.strip():
                out += b"".join(_messages(self.peer.handle(line)))
        if len(self._buffer) > self._max_line:
            log.warning("%s: input line too long, discarded", type(self.peer).__name__)
            self._buffer.clear()
        return bytes(out)


# ---------------------------------------------------------------------- faults
class Fault(Enum):
    """The faults every emulator offers; each applies once. An emulator's own enum may add
    kinds: `FaultQueue` matches these four by value."""

    GARBAGE = "garbage"  # the next reply is replaced (payload, or the emulator's default junk)
    NO_REPLY = "no_reply"  # the next reply is dropped: the driver must time out
    TRUNCATED = "truncated"  # the next reply loses its tail (default: half), keeps its ending
    DISCONNECT = "disconnect"  # the transport drops the link on the next line


@dataclass(frozen=True)
class QueuedFault:
    kind: Enum
    detail: object = None  # payload bytes, bytes to keep, a reason word: up to the kind


#: Applies an emulator's own fault kind: (detail, replies) -> the replies as sent.
FaultAction = Callable[[object, list[bytes]], list[bytes]]


class FaultQueue:
    """One-shot faults an emulator queues and applies, in order, to its next replies.

    Not locked: the emulator calls it under its own lock. GARBAGE sends the ``detail`` bytes
    (default ``garbage``); TRUNCATED keeps ``detail`` bytes of the reply (default half) and its
    CR/LF ending. A fault waits for a line that has a reply to spoil.
    """

    def __init__(self, garbage: bytes = b"\xfe\x80?garbage\r\n") -> None:
        self.garbage = garbage
        self._queue: deque[QueuedFault] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, kind: Enum, detail: object = None, times: int = 1) -> None:
        self._queue.extend([QueuedFault(kind, detail)] * times)

    def take(self, kind: Enum) -> QueuedFault | None:
        """Remove and return the next fault if it is of ``kind`` (matched by value)."""
        if self._queue and self._queue[0].kind.value == kind.value:
            return self._queue.popleft()
        return None

    def take_disconnect(self) -> bool:
        """True, once, when the next fault is DISCONNECT: the emulator raises then."""
        return self.take(Fault.DISCONNECT) is not None

    def apply(self, replies: list[bytes],
              own: Mapping[Enum, FaultAction] | None = None) -> list[bytes]:
        """The replies as sent: spoiled by the next fault if it is a reply fault (a shared
        kind or one in ``own``); other kinds (DISCONNECT, kinds the emulator takes itself)
        stay queued."""
        if not replies or not self._queue:
            return replies
        fault = self._queue[0]
        kind, detail, first = fault.kind.value, fault.detail, replies[0]
        if kind == Fault.NO_REPLY.value:
            spoiled = replies[1:]
        elif kind == Fault.TRUNCATED.value:
            spoiled = [_truncated(first, detail), *replies[1:]]
        elif kind == Fault.GARBAGE.value:
            spoiled = [detail if isinstance(detail, bytes) else self.garbage, *replies[1:]]
        elif own is not None and fault.kind in own:
            spoiled = own[fault.kind](detail, replies)
        else:
            return replies
        self._queue.popleft()
        return spoiled


def _truncated(reply: bytes, keep: object) -> bytes:
    ending = reply[len(reply.rstrip(b"\r\n")):]
    cut = keep if isinstance(keep, int) else (len(reply) - len(ending)) // 2
    return reply[:cut] + ending


# ---------------------------------------------------------------------- servers
P = TypeVar("P", bound=Peer)


class _Server(Generic[P]):
    """A selector loop on a daemon thread: serves clients, wakes for the peer's timed events
    and sends its unprompted messages to every client."""

    def __init__(self, peer: P, *, name: str, terminators: bytes, max_wait_s: float) -> None:
        self.peer = peer
        self._terminators = terminators
        self._max_wait_s = max_wait_s
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @property
    def emulator(self) -> P:
        return self.peer

    def _new_link(self) -> LineLink:
        return LineLink(self.peer, self._terminators)

    def _wait_s(self) -> float:
        hint = self.peer.wait_hint_s()
        return self._max_wait_s if hint is None else min(max(hint, 0.0), self._max_wait_s)

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(self._wait_s()):
                if key.fileobj is self._wake_r:
                    self._wake_r.recv(64)
                    continue
                try:
                    key.data(key.fileobj)
                except Exception:  # a bug must not silently kill the server thread
                    log.exception("%s: handler failed", self._thread.name)
            try:
                self.peer.update()
                unsolicited = b"".join(self.peer.take_unsolicited())
            except Exception:
                log.exception("%s: peer update failed", self._thread.name)
                continue
            if unsolicited:
                self._broadcast(unsolicited)
        self._shutdown()

    def close(self) -> None:
        """Stop the thread and release every socket or descriptor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._wake_w.close()
        self._wake_r.close()
        self._selector.close()

    def _broadcast(self, data: bytes) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpServer(_Server[P]):
    """``peer`` on a localhost TCP socket (``.url`` = ``socket://host:port``); ``port=0``
    takes a free port. Each client has its own line buffer; alerts go to every client; a
    DISCONNECT fault resets that client's connection."""

    def __init__(self, peer: P, *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "tcp-emulator", terminators: bytes = LINE_ENDS,
                 max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        listener = socket.create_server((host, port))
        super().__init__(peer, name=name, terminators=terminators, max_wait_s=max_wait_s)
        self._listener = listener
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._links: dict[socket.socket, LineLink] = {}
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._thread.start()

    @property
    def url(self) -> str:
        """pyserial URL of the socket."""
        return f"socket://{self.host}:{self.port}"

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links[conn] = self._new_link()
        self._selector.register(conn, selectors.EVENT_READ, self._receive)

    def _receive(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
            if not data:
                self._drop(conn, reset=False)
                return
            reply = self._links[conn].feed(data)
            if reply:
                conn.sendall(reply)
        except EmulatorDisconnect:
            self._drop(conn, reset=True)
        except OSError:
            self._drop(conn, reset=False)

    def _broadcast(self, data: bytes) -> None:
        for conn in list(self._links):
            try:
                conn.sendall(data)
            except OSError:
                self._drop(conn, reset=False)

    def _drop(self, conn: socket.socket, *, reset: bool) -> None:
        self._selector.unregister(conn)
        self._links.pop(conn, None)
        if reset:  # linger 0 makes close() send RST: the client sees the loss at once
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _shutdown(self) -> None:
        for conn in list(self._links):
            self._drop(conn, reset=False)
        self._selector.unregister(self._listener)
        self._listener.close()


class PtyServer(_Server[P]):
    """``peer`` behind a pseudo-terminal: open ``.port`` (= ``.url``, ``/dev/pts/N``) with real
    pyserial or pyvisa ``ASRL/dev/pts/N::INSTR``.

    Baud rate, parity and handshake are ignored on a pty. A DISCONNECT fault closes the master
    side, so the client's next read or write fails like an unplugged cable.
    """

    def __init__(self, peer: P, *, name: str = "pty-emulator", terminators: bytes = LINE_ENDS,
                 max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no CR/LF translation before the client opens it
            port = os.ttyname(slave)
        except OSError:
            os.close(master)
            os.close(slave)
            raise
        super().__init__(peer, name=name, terminators=terminators, max_wait_s=max_wait_s)
        self._master, self._slave, self.port = master, slave, port
        self._link = self._new_link()
        self._master_open = True
        self._selector.register(self._master, selectors.EVENT_READ, self._receive)
        self._thread.start()

    @property
    def url(self) -> str:
        return self.port

    def _receive(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO while no client has the slave open
            return
        try:
            reply = self._link.feed(data)
        except EmulatorDisconnect:
            self._close_master()
            return
        if reply:
            os.write(fd, reply)

    def _broadcast(self, data: bytes) -> None:
        if self._master_open:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _close_master(self) -> None:
        if self._master_open:
            self._master_open = False
            self._selector.unregister(self._master)
            os.close(self._master)

    def _shutdown(self) -> None:
        self._close_master()
        os.close(self._slave)


# ---------------------------------------------------------------------- pyserial URLs
@dataclass(frozen=True)
class _Scheme:
    factory: Callable[[], Peer] | None
    terminators: bytes


_schemes: dict[str, _Scheme] = {}
_peers: dict[tuple[str, str], Peer] = {}
_registry_lock = threading.Lock()
_SCHEME = re.compile(r"[a-z][a-z0-9]*")


def register_scheme(scheme: str, *, factory: Callable[[], Peer] | None = None,
                    terminators: bytes = LINE_ENDS) -> None:
    """Let ``serial.serial_for_url("<scheme>://<name>")`` (and pyvisa-py's
    ``ASRL<scheme>://<name>::INSTR``) open the peer registered as ``name`` (`register_url`);
    ``<scheme>://`` alone opens a fresh ``factory()``. Registering again replaces the options.

    pyserial imports ``<package>.protocol_<scheme>`` for each package named in
    ``serial.protocol_handler_packages``: this module is added there as the package, and the
    handler module is made here and put in ``sys.modules`` under the name pyserial asks for,
    so a new scheme needs no file of its own.
    """
    if not _SCHEME.fullmatch(scheme):
        raise ValueError(f"a URL scheme is lower-case letters and digits: {scheme!r}")
    with _registry_lock:
        _schemes[scheme] = _Scheme(factory, terminators)
    handler_name = f"{__name__}.protocol_{scheme}"
    if handler_name not in sys.modules:
        handler = types.ModuleType(handler_name, f"pyserial handler for {scheme}:// URLs")
        handler.Serial = PeerSerial  # type: ignore[attr-defined]
        sys.modules[handler_name] = handler
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)


def register_url(scheme: str, name: str, peer: Peer) -> str:
    """Make ``peer`` reachable as ``<scheme>://<name>``; returns that URL."""
    with _registry_lock:
        if scheme not in _schemes:
            raise ValueError(f"URL scheme {scheme!r} is not registered")
        _peers[(scheme, name)] = peer
    return f"{scheme}://{name}"


def unregister_url(scheme: str, name: str) -> None:
    with _registry_lock:
        _peers.pop((scheme, name), None)


def _open_peer(url: str) -> tuple[Peer, bytes]:
    parts = urlsplit(url)
    scheme, name = parts.scheme.lower(), (parts.netloc + parts.path).strip("/")
    with _registry_lock:
        options = _schemes.get(scheme)
        if options is None:
            raise SerialException(f"no emulator URL scheme {scheme!r}: {url!r}")
        peer = _peers.get((scheme, name)) if name else None
    if peer is None and not name and options.factory is not None:
        peer = options.factory()
    if peer is None:
        raise SerialException(f"no emulator registered as {name!r}")
    return peer, options.terminators


class PeerSerial(SerialBase):
    """A pyserial port wired straight to a peer, opened from a registered URL.

    Writes are answered at once; reads wait on a condition (never spin) and also wake for the
    peer's timed events, to pick up its unprompted messages.
    """

    def open(self) -> None:
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        peer, terminators = _open_peer(self._port)
        self.peer = peer
        self._link = LineLink(peer, terminators)
        self._rx = bytearray()
        self._ready = threading.Condition()
        self._broken = False
        self.is_open = True

    @property
    def emulator(self) -> Peer:
        return self.peer

    def close(self) -> None:
        if getattr(self, "_ready", None) is not None:
            with self._ready:
                self.is_open = False
                self._ready.notify_all()
        self.is_open = False

    @property
    def in_waiting(self) -> int:
        self._collect()
        with self._ready:
            return len(self._rx)

    def _receive(self, data: bytes) -> None:
        if data:
            with self._ready:
                self._rx += data
                self._ready.notify_all()

    def _collect(self) -> None:
        self.peer.update()
        self._receive(b"".join(self.peer.take_unsolicited()))

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            self._collect()
            with self._ready:
                if len(self._rx) >= size or self._broken or not self.is_open:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                waits = [w for w in (remaining, self.peer.wait_hint_s()) if w is not None]
                self._ready.wait(min(waits) if waits else None)
        with self._ready:
            if self._broken and not self._rx:
                raise SerialException("emulator link disconnected")
            data = bytes(self._rx[:size])
            del self._rx[:size]
            return data

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        if self._broken:
            raise SerialException("emulator link disconnected")
        try:
            reply = self._link.feed(bytes(data))
        except EmulatorDisconnect as exc:
            with self._ready:
                self._broken = True
                self._ready.notify_all()
            raise SerialException("emulator link disconnected") from exc
        self._receive(reply)
        return len(data)

    def flush(self) -> None:
        """Writes complete synchronously."""

    def reset_input_buffer(self) -> None:
        with self._ready:
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the way out."""

    def _reconfigure_port(self, *args: object, **kwargs: object) -> None:
        """Baud rate, framing and handshake do not matter in process."""

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


# ---------------------------------------------------------------------- scripts
class ScriptedPeer:
    """A peer that plays an ordered script of (expected line, reply bytes) and records any
    deviation in ``errors`` (answering nothing then, so the driver times out).

    Lines are compared without their terminator; replies are sent byte for byte (b"" = no
    reply), so garbage, truncated or interleaved lines are easy to script.
    """

    def __init__(self, script: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self._script: deque[tuple[bytes, bytes]] = deque(script)
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.received = bytearray()

    def extend(self, script: Iterable[tuple[bytes, bytes]]) -> None:
        with self._lock:
            self._script.extend(script)

    @property
    def remaining(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return list(self._script)

    def handle(self, line: bytes) -> list[bytes]:
        with self._lock:
            if not self._script:
                self.errors.append(f"unexpected {line!r} after the end of the script")
                return []
            expected, reply = self._script.popleft()
            if line != expected:
                self.errors.append(f"expected {expected!r}, got {line!r}")
                return []
            return [reply] if reply else []

    def note_received(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def update(self) -> None:
        """Scripts have no clock."""

    def take_unsolicited(self) -> list[bytes]:
        return []

    def wait_hint_s(self) -> float | None:
        return None


__all__ = [
    "DEFAULT_MAX_WAIT_S",
    "LINE_ENDS",
    "MAX_LINE",
    "EmulatorDisconnect",
    "Fault",
    "FaultAction",
    "FaultQueue",
    "LineLink",
    "Peer",
    "PeerSerial",
    "PtyServer",
    "QueuedFault",
    "Reply",
    "ScriptedPeer",
    "TcpServer",
    "register_scheme",
    "register_url",
    "unregister_url",
]
