"""Wire-level emulator of a PI controller speaking GCS 2.0 (C-884-like, one stage per axis), so
tests and the simulated bench run the real driver (`plumelink.drivers.pi_gcs`) without hardware.

`PIEmulator` is a state machine: ``handle(line) -> [reply]`` answers one command line (LF
removed) or one single-byte command (``b"\\x05"``, ``b"\\x07"``, ``b"\\x18"``). It models servo
state, referencing (``FRF`` runs to the reference position at the axis velocity), travel limits
(``TMN?``/``TMX?``), constant-speed motion on an injectable clock (`ManualClock` works) and the
error register read and cleared by ``ERR?`` with the real codes (`ERRORS`). Set commands are
silent; a multi-line reply ends every line but the last with space + LF
(``reference/instruments.md`` 4.3).

Single-byte commands have no terminator, which `serial_link.LineLink` cannot deliver (it splits
on terminator bytes only). This module therefore adds a raw-byte hook of its own, `GcsLink`
(a `LineLink` that hands each of ``#5``/``#7``/``#24`` to the peer as a one-byte "line" the
moment it arrives), and uses it in `PIPtyServer`, `PITcpServer` and the in-process
``pigcssim://<name>`` port (`EmulatorSerial`); `serial_link.py` itself is unchanged. Any `Peer`
(e.g. a `ScriptedPeer` scripted with ``(b"\\x05", b"1\\n")``) can sit behind them.

It answers what pipython's DLL-free stack (``PISocket`` + ``GCSMessages`` + ``GCSCommands``) and
``pitools.startup`` ask a GCS 2.0 controller: ``CSV?`` (asked on every connect to choose GCS 2
or 3), ``SAI?``/``SAI? ALL``, ``HLP?`` (from which pipython learns which commands exist),
``CST?``, ``TRS?``, ``LIM?`` besides the motion commands. Sources of each fact are in
``docs/protocol_notes.md``; choices where the manual is not at hand are marked [I] (our
inference): an erroneous command is ignored as a whole; a query naming an unknown axis sets
error 15 and answers nothing; ``#7`` answers 0xB1 + LF.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .events import Clocked, LineRecord, ServesEmulator
from .motion import ManualClock, Motion, MovingAxis
from .serial_link import (
    EmulatorDisconnect,
    Fault,
    FaultQueue,
    LineLink,
    Peer,
    PeerSerial,
    PtyServer,
    ScriptedPeer,
    TcpServer,
    register_scheme,
    register_url,
    unregister_url,
)

log = logging.getLogger(__name__)

#: GCS error codes modelled here [V: reference/instruments.md 4.3].
ERRORS: dict[int, str] = {
    0: "no error",
    1: "parameter syntax error",
    2: "unknown command",
    3: "command too long",
    5: "move without reference or with servo off",
    7: "position out of limits",
    8: "velocity out of limits",
    10: "stopped by command",
    15: "invalid axis identifier",
    216: "on a limit switch",
    1024: "motion error",
}
MOVING = b"\x05"  # #5: hex bitmask of moving axes
READY = b"\x07"  # #7: 0xB1 ready, 0xB0 not
STOP_ALL = b"\x18"  # #24: stop all axes, no reply
SINGLE_BYTE = frozenset(MOVING + READY + STOP_ALL)
SYNTAX_VERSION = "2.0"  # CSV?: pipython takes <= 2.0 for GCS 2 (gcs30commands_helpers.py)
#: HLP? descriptions [I] (the wording is ours; pipython reads only the first word of a line)
HELP: dict[str, str] = {
    "*IDN?": "Get Device Identification", "CSV?": "Get Current Syntax Version",
    "CST?": "Get Assignment Of Stages To Axes", "ERR?": "Get Error Number",
    "FRF": "Fast Reference Move To Reference Switch", "FRF?": "Get Referencing Result",
    "HLP?": "Get List Of Available Commands", "HLT": "Halt Motion Smoothly",
    "LIM?": "Indicate Limit Switches", "MOV": "Set Target Position",
    "MVR": "Set Target Relative To Current Position", "ONT?": "Get On Target State",
    "POS?": "Get Real Position", "SAI?": "Get List Of Current Axis Identifiers",
    "STP": "Stop All Axes", "SVO": "Set Servo Mode", "SVO?": "Get Servo Mode",
    "TMN?": "Get Minimum Commandable Position", "TMX?": "Get Maximum Commandable Position",
    "TRS?": "Indicate Reference Switch", "VEL": "Set Closed-Loop Velocity",
    "VEL?": "Get Closed-Loop Velocity", "#5": "Request Motion Status",
    "#7": "Request Controller Ready Status", "#24": "Stop All Axes",
}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_GARBAGE = b"\xfe\x80=garbage?\n"
_MAX_WAIT_S = 0.5
_MAX_RECORDED = 100_000


class _GcsError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class PIAxisConfig:
    """Power-up state of one axis, in mm and mm/s."""

    low_mm: float = 0.0  # TMN?
    high_mm: float = 25.0  # TMX?
    position_mm: float = 12.5
    velocity: float = 10.0
    max_velocity: float = 50.0
    reference_mm: float = 0.0  # where FRF leaves the axis
    servo: bool = False
    referenced: bool = False
    stage: str = "L-511.20SD00"  # CST? [I] a PI linear stage with a reference switch


@dataclass
class _Motion(Motion):
    homing: bool = False


class _Axis(MovingAxis[_Motion]):
    def __init__(self, config: PIAxisConfig) -> None:
        self.low, self.high = config.low_mm, config.high_mm
        self.position = config.position_mm
        self.velocity, self.max_velocity = config.velocity, config.max_velocity
        self.reference = config.reference_mm
        self.servo, self.referenced = config.servo, config.referenced
        self.stage = config.stage
        self.motion: _Motion | None = None


def _number(text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise _GcsError(1)
    return float(text)


class PIEmulator(Clocked, LineRecord):
    """A GCS 2.0 controller; thread-safe; time from ``clock`` (default `time.monotonic`).
    ``axes`` maps axis identifiers ("1", "2" ...) to their power-up state."""

    _max_received_bytes = _MAX_RECORDED

    def __init__(self, axes: Mapping[str, PIAxisConfig] | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 idn: str = "(c)2024 Physik Instrumente (PI) GmbH & Co. KG, C-884.4DC, "
                            "000000000, 1.0.0.0") -> None:
        configs = axes if axes is not None else {"1": PIAxisConfig(), "2": PIAxisConfig()}
        self._axes = {name: _Axis(cfg) for name, cfg in configs.items()}
        self._clock = clock
        self.idn = idn
        self._error = 0
        self._lock = threading.RLock()
        self._faults = FaultQueue(garbage=_GARBAGE)
        self._transcript: deque[tuple[bytes, tuple[bytes, ...]]] = deque(maxlen=_MAX_RECORDED)
        self._received = bytearray()
        self._queries: dict[str, Callable[[list[str], float], bytes]] = {
            "*IDN?": lambda args, now: self._single(args, self.idn),
            "ERR?": self._err,
            "POS?": lambda args, now: self._per_axis(args, lambda a: f"{a.position_at(now):.6f}"),
            "TMN?": lambda args, now: self._per_axis(args, lambda a: f"{a.low:.6f}"),
            "TMX?": lambda args, now: self._per_axis(args, lambda a: f"{a.high:.6f}"),
            "VEL?": lambda args, now: self._per_axis(args, lambda a: f"{a.velocity:.6f}"),
            "SVO?": lambda args, now: self._per_axis(args, lambda a: str(int(a.servo))),
            "FRF?": lambda args, now: self._per_axis(args, lambda a: str(int(a.referenced))),
            "ONT?": lambda args, now: self._per_axis(args, lambda a: str(int(a.motion is None))),
            "CST?": lambda args, now: self._per_axis(args, lambda a: a.stage),
            "TRS?": lambda args, now: self._per_axis(args, lambda a: "1"),  # reference switch
            "LIM?": lambda args, now: self._per_axis(args, lambda a: "1"),  # limit switches
            "CSV?": lambda args, now: self._single(args, SYNTAX_VERSION),
            "SAI?": self._sai,
            "HLP?": self._hlp,
        }
        self._sets: dict[str, Callable[[list[str], float], None]] = {
            "SVO": self._svo, "FRF": self._frf, "MOV": self._mov, "MVR": self._mvr,
            "VEL": self._vel, "STP": self._stp, "HLT": self._hlt,
        }

    # ------------------------------------------------------------------ protocol
    def handle(self, line: bytes) -> list[bytes]:
        """Execute one command line (LF removed) or single-byte command; return the reply."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._faults.take_disconnect():
                self._transcript.append((bytes(line), ()))
                raise EmulatorDisconnect("fault injected: disconnect")
            reply = self._respond(bytes(line), now)
            out = self._faults.apply([reply] if reply else [])
            self._transcript.append((bytes(line), tuple(out)))
            log.debug("PI emulator %r -> %r", line, out)
            return out

    def _respond(self, line: bytes, now: float) -> bytes:
        if line == MOVING:
            mask = sum(1 << i for i, ax in enumerate(self._axes.values()) if ax.motion)
            return f"{mask:X}\n".encode()
        if line == READY:
            return b"\xb1\n"
        if line == STOP_ALL:
            self._stop_all(now)
            return b""
        try:
            words = line.decode("ascii").split()
        except UnicodeDecodeError:
            words = []
        if not words:
            self._set_error(2)
            return b""
        command, args = words[0].upper(), words[1:]
        try:
            if command in self._queries:
                return self._queries[command](args, now)
            if command in self._sets:
                self._sets[command](args, now)
                return b""
            raise _GcsError(2)
        except _GcsError as exc:
            self._set_error(exc.code)
            return b""

    def _set_error(self, code: int) -> None:
        """The error register holds the last error only; ``ERR?`` reads and clears it."""
        self._error = code

    @staticmethod
    def _lines(lines: list[str]) -> bytes:
        """GCS multi-line framing: every line but the last ends with space + LF."""
        return (" \n".join(lines) + "\n").encode("ascii")

    def _single(self, args: list[str], text: str) -> bytes:
        if args:
            raise _GcsError(1)
        return self._lines([text])

    def _err(self, args: list[str], now: float) -> bytes:
        if args:
            raise _GcsError(1)
        code, self._error = self._error, 0
        return self._lines([str(code)])

    def _sai(self, args: list[str], now: float) -> bytes:
        """``SAI?`` the configured axes, ``SAI? ALL`` every axis (here the same), one a line."""
        if [a.upper() for a in args] not in ([], ["ALL"]):
            raise _GcsError(1)
        return self._lines(list(self._axes))

    def _hlp(self, args: list[str], now: float) -> bytes:
        """``HLP?``: a heading, one line per command, a closing line. pipython drops the first
        and last line and takes the first word of the others as the command list."""
        if args:
            raise _GcsError(1)
        commands = [*sorted(self._queries), *sorted(self._sets), "#5", "#7", "#24"]
        return self._lines(["The following commands are valid:",
                            *(f"{c} {HELP.get(c, '')}".rstrip() for c in commands),
                            "end of help"])

    def _named(self, names: list[str]) -> list[str]:
        for name in names:
            if name not in self._axes:
                raise _GcsError(15)
        return names

    def _per_axis(self, args: list[str], value: Callable[[_Axis], str]) -> bytes:
        names = self._named(args) if args else list(self._axes)
        return self._lines([f"{n}={value(self._axes[n])}" for n in names])

    def _pairs(self, args: list[str]) -> list[tuple[_Axis, float]]:
        if not args or len(args) % 2:
            raise _GcsError(1)
        names = self._named(args[0::2])
        return [(self._axes[n], _number(v)) for n, v in zip(names, args[1::2], strict=True)]

    # ------------------------------------------------------------------ set commands
    def _svo(self, args: list[str], now: float) -> None:
        pairs = self._pairs(args)
        if any(v not in (0.0, 1.0) for _, v in pairs):
            raise _GcsError(1)
        for ax, v in pairs:
            if not v:
                ax.halt(now)
            ax.servo = bool(v)

    def _frf(self, args: list[str], now: float) -> None:
        axes = [self._axes[n] for n in (self._named(args) if args else self._axes)]
        if any(not ax.servo for ax in axes):
            raise _GcsError(5)
        for ax in axes:
            ax.referenced = False
            self._start(ax, ax.reference, now, homing=True)

    def _check_moves(self, moves: list[tuple[_Axis, float]]) -> None:
        for ax, _ in moves:
            if not (ax.servo and ax.referenced):
                raise _GcsError(5)
        for ax, target in moves:
            if not ax.low <= target <= ax.high:
                raise _GcsError(7)

    def _mov(self, args: list[str], now: float) -> None:
        moves = self._pairs(args)
        self._check_moves(moves)
        for ax, target in moves:
            self._start(ax, target, now)

    def _mvr(self, args: list[str], now: float) -> None:
        moves = [(ax, ax.position_at(now) + d) for ax, d in self._pairs(args)]
        self._check_moves(moves)
        for ax, target in moves:
            self._start(ax, target, now)

    def _vel(self, args: list[str], now: float) -> None:
        pairs = self._pairs(args)
        if any(not 0 < v <= ax.max_velocity for ax, v in pairs):
            raise _GcsError(8)
        for ax, v in pairs:
            ax.velocity = v

    def _stp(self, args: list[str], now: float) -> None:
        if args:
            raise _GcsError(1)
        self._stop_all(now)

    def _hlt(self, args: list[str], now: float) -> None:
        axes = [self._axes[n] for n in (self._named(args) if args else self._axes)]
        if any(ax.motion for ax in axes):
            self._set_error(10)
        for ax in axes:
            ax.halt(now)

    def _stop_all(self, now: float) -> None:
        if any(ax.motion for ax in self._axes.values()):
            self._set_error(10)
        for ax in self._axes.values():
            ax.halt(now)

    def _start(self, ax: _Axis, target: float, now: float, *, homing: bool = False) -> None:
        ax.halt(now)
        if target != ax.position:
            ax.motion = _Motion(ax.position, target, now, ax.velocity, homing)
        elif homing:
            ax.referenced = True

    def _advance(self, now: float) -> None:
        for ax in self._axes.values():
            if ax.motion is not None and now >= ax.motion.end_time:
                if ax.motion.homing:
                    ax.referenced = True
                ax.position, ax.motion = ax.motion.target, None

    # ------------------------------------------------------------------ bench and tests
    def take_unsolicited(self) -> list[bytes]:
        return []  # GCS sends nothing unprompted

    def next_event_time(self) -> float | None:
        """Clock time of the next move end, if any."""
        with self._lock:
            ends = [ax.motion.end_time for ax in self._axes.values() if ax.motion]
            return min(ends) if ends else None

    def inject_fault(self, fault: Fault, payload: bytes | None = None, *,
                     keep: int | None = None, times: int = 1) -> None:
        """Queue a shared fault for the next replies (GARBAGE sends ``payload``, TRUNCATED keeps
        ``keep`` bytes, NO_REPLY drops, DISCONNECT hangs up)."""
        with self._lock:
            self._faults.push(fault, keep if fault is Fault.TRUNCATED else payload, times)

    def position(self, axis: str) -> float:
        """Where the axis is now, in mm."""
        with self._lock:
            return self._axes[axis].position_at(self._clock())

    def position_at(self, axis: str, t: float) -> float:
        """Where the axis is or was at clock time ``t`` (mm), also during a recent move that
        has ended since."""
        with self._lock:
            return self._axes[axis].position_was(t)

    def moving(self, axis: str) -> bool:
        with self._lock:
            self._advance(self._clock())
            return self._axes[axis].moving

    def state(self, axis: str) -> dict[str, float | bool]:
        with self._lock:
            ax = self._axes[axis]
            return {"servo": ax.servo, "referenced": ax.referenced, "velocity": ax.velocity,
                    "low": ax.low, "high": ax.high}

    @property
    def error(self) -> int:
        """The error register, without clearing it."""
        with self._lock:
            return self._error



# ---------------------------------------------------------------------- raw-byte hook
class GcsLink(LineLink):
    """`LineLink` for GCS: LF ends a line, and each single-byte command (#5, #7, #24) goes to
    the peer at once as a one-byte line, wherever it appears in the byte stream."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer, b"\n")

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        start = 0
        for i, byte in enumerate(data):
            if byte in SINGLE_BYTE:
                out += super().feed(data[start:i])
                self.peer.note_received(data[i:i + 1])
                out += b"".join(_as_list(self.peer.handle(data[i:i + 1])))
                start = i + 1
        out += super().feed(data[start:])
        return bytes(out)


def _as_list(reply: object) -> list[bytes]:
    if reply is None:
        return []
    return [bytes(reply)] if isinstance(reply, bytes | bytearray) else list(reply)  # type: ignore[call-overload]


class PIPtyServer(ServesEmulator[PIEmulator], PtyServer[Peer]):
    """The peer behind a pseudo-terminal: open ``.url`` (``/dev/pts/N``) with real pyserial."""

    _emulator_type = PIEmulator

    def __init__(self, peer: Peer | None = None) -> None:
        super().__init__(peer if peer is not None else PIEmulator(), name="pi-pty-emulator",
                         terminators=b"\n", max_wait_s=_MAX_WAIT_S)

    def _new_link(self) -> LineLink:
        return GcsLink(self.peer)


class PITcpServer(ServesEmulator[PIEmulator], TcpServer[Peer]):
    """The peer on a localhost TCP socket (``.url`` = ``socket://127.0.0.1:<port>``), like the
    controller's TCP port 50000."""

    _emulator_type = PIEmulator

    def __init__(self, peer: Peer | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(peer if peer is not None else PIEmulator(), host=host, port=port,
                         name="pi-tcp-emulator", terminators=b"\n", max_wait_s=_MAX_WAIT_S)

    def _new_link(self) -> LineLink:
        return GcsLink(self.peer)


# ---------------------------------------------------------------------- pyserial URL
URL_SCHEME = "pigcssim"


class EmulatorSerial(PeerSerial):
    """The in-process port behind ``pigcssim://`` URLs, with the `GcsLink` raw-byte hook."""

    def open(self) -> None:
        super().open()
        self._link = GcsLink(self.peer)


register_scheme(URL_SCHEME, factory=PIEmulator, terminators=b"\n")
# register_scheme installs the plain PeerSerial as the handler; swap in the GCS port.
sys.modules[f"{register_scheme.__module__}.protocol_{URL_SCHEME}"].Serial = (  # type: ignore[attr-defined]
    EmulatorSerial)


def register_peer(name: str, peer: Peer) -> str:
    """Make ``peer`` reachable as ``pigcssim://<name>``; returns that URL."""
    return register_url(URL_SCHEME, name, peer)


def unregister_peer(name: str) -> None:
    unregister_url(URL_SCHEME, name)


__all__ = [
    "ERRORS",
    "MOVING",
    "READY",
    "STOP_ALL",
    "EmulatorSerial",
    "Fault",
    "GcsLink",
    "ManualClock",
    "PIAxisConfig",
    "PIEmulator",
    "PIPtyServer",
    "PITcpServer",
    "ScriptedPeer",
    "register_peer",
    "unregister_peer",
]
