"""Driver for XY stages on a PI controller speaking GCS 2.0 (C-884, C-863, E-873 ...).

The port is any pyserial URL: ``socket://host:50000`` (the controller's TCP port), a serial
port (``/dev/ttyUSB0``, 115200 8N1), or ``pigcssim://name`` (the emulator). ``axes`` maps the
stage axes "x" and "y" to the controller's axis identifiers (default "1" and "2";
``reference/instruments.md`` 4.3).

How it talks:

* a command is the mnemonic, its arguments and LF (``MOV 1 10.500000 2 3.000000``). Set
  commands are silent, so every one is followed by ``ERR?``: a non-zero code raises
  `GCSError` carrying the code and its meaning (`ERRORS`);
* replies are parsed strictly: in a multi-line reply every line but the last ends with
  space + LF, the last with a bare LF; an axis query must answer ``<axis>=<number>`` once for
  each axis asked, in order. Anything else raises `ProtocolError` with the raw text; no reply
  within ``timeout_s`` raises `InstrumentTimeout`, a reply cut short `ProtocolError`;
* single-byte commands without terminator: ``#5`` (chr 5, hex bitmask of moving axes, bit
  n-1 for axis n, so axis identifiers must be numbers for `wait_until_idle`) [M], ``#7``
  (0xB1 ready) and ``#24`` (chr 24, stop all axes, used by `stop`);
* start-up: ``*IDN?``, ``ERR?`` (clears a stale error), ``SVO <ax> 1`` for both axes, then the
  travel limits ``TMN?``/``TMX?``. Targets are checked against those limits *before* anything
  is sent (`SettingOutOfRange`);
* units: the API takes µm and µm/s; GCS works in mm and mm/s (stage default [M]).

GCS has no message ids, so unread bytes are discarded (and logged) before each command: a
late answer to a command that timed out cannot be taken for the next one. One re-entrant
lock serialises each exchange; `wait_until_idle` and `home` sleep ``poll_interval_s`` between
polls, bounded by their timeout, so `stop` may be called from another thread meanwhile.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence

import serial
from serial import SerialException

from .errors import InstrumentError, ProtocolError, SettingOutOfRange
from .serial_device import AXES, SerialDevice, check_axis_names
from .serial_device import finite as _finite

log = logging.getLogger(__name__)

UM_PER_MM = 1000.0

#: GCS error codes and their meaning [V: reference/instruments.md 4.3].
ERRORS: dict[int, str] = {
    0: "no error",
    1: "parameter syntax error",
    2: "unknown command",
    3: "command too long",
    5: "move without reference or with servo off (reference the axis with home())",
    7: "position out of limits",
    8: "velocity out of limits",
    10: "stopped by command",
    15: "invalid axis identifier",
    216: "on a limit switch",
    1024: "motion error",
}
STOPPED = 10

MOVING = b"\x05"  # #5
READY = b"\x07"  # #7
STOP_ALL = b"\x18"  # #24

_MAX_REPLY = 65536
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_AXIS_ID = re.compile(r"[A-Za-z0-9_]+")


def error_meaning(code: int) -> str:
    return ERRORS.get(code, "undocumented GCS error code")


class GCSError(InstrumentError):
    """The controller's error register (``ERR?``) was non-zero after a command."""


def _mm(um: float) -> str:
    return f"{um / UM_PER_MM:.6f}"


def split_reply(data: bytes, *, device: str = "", command: str = "") -> list[str]:
    """Split one complete GCS reply into its lines (framing removed); raise `ProtocolError`
    unless every line but the last ends with space + LF and the last with a bare LF."""
    raw = data.decode("ascii", errors="backslashreplace")

    def bad(why: str) -> ProtocolError:
        return ProtocolError(why, reply=raw, device=device, command=command)

    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise bad("reply is not ASCII") from None
    if not text.endswith("\n") or text.endswith(" \n"):
        raise bad("reply not terminated by a bare LF")
    lines = text[:-1].split(" \n")
    for line in lines:
        if not line or not line.isprintable() or line != line.strip():
            raise bad("malformed reply line")
    return lines


class PIStage(SerialDevice):
    """An XY stage on a PI GCS 2.0 controller. See the module docstring for its rules."""

    def __init__(
        self,
        url: str | serial.SerialBase,
        *,
        axes: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        baudrate: int = 115200,
        poll_interval_s: float = 0.02,
        name: str = "pi",
    ) -> None:
        mapping = dict(axes) if axes is not None else {"x": "1", "y": "2"}
        check_axis_names(mapping)
        ids = [str(mapping[a]) for a in AXES]
        if len(set(ids)) != 2 or not all(_AXIS_ID.fullmatch(i) for i in ids):
            raise ValueError(f"bad GCS axis identifiers {ids}")
        self._ids: dict[str, str] = dict(zip(AXES, ids, strict=True))
        self._limits: dict[str, tuple[float, float]] = {}  # µm
        self.idn = ""
        self._open(url, name=name, baudrate=baudrate, timeout_s=timeout_s,
                   poll_interval_s=poll_interval_s)
        self._start_up(self._initialise)

    # ------------------------------------------------------------------ public API
    def home(self, axes: Sequence[str] = AXES, *, wait: bool = True,
             timeout_s: float = 120.0) -> None:
        """Reference the named axes on their reference switch (``FRF``); by default wait,
        polling ``FRF?``, until all are referenced."""
        ids = [self._axis_id(a) for a in axes]
        if not ids:
            return
        self._set("FRF " + " ".join(ids))
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            done = self._query_axes("FRF?", ids, _INTEGER)
            if all(int(v) == 1 for v in done.values()):
                return
            self._sleep_until(deadline, f"axis {', '.join(ids)} not referenced", timeout_s,
                              "FRF?")

    def referenced(self) -> dict[str, bool]:
        """Per axis: whether it has been referenced (``FRF?``)."""
        done = self._query_axes("FRF?", list(self._ids.values()), _INTEGER)
        return {axis: int(done[i]) == 1 for axis, i in self._ids.items()}

    def move_absolute(self, x_um: float | None = None, y_um: float | None = None) -> None:
        """Start moving to the given targets (µm); an axis given None stays where it is."""
        targets = {n: v for n, v in zip(AXES, (x_um, y_um), strict=True) if v is not None}
        checked = {n: self._checked_target(n, v, "MOV") for n, v in targets.items()}
        if checked:
            self._set("MOV " + " ".join(f"{self._ids[n]} {_mm(v)}" for n, v in checked.items()))

    def move_relative(self, dx_um: float = 0.0, dy_um: float = 0.0) -> None:
        """Start moving by the given offsets (µm). The resulting targets are checked against
        the limits first (one ``POS?``); nothing is sent if that fails."""
        offsets = self._offsets((dx_um, dy_um), "MVR")
        if not offsets:
            return
        here = dict(zip(AXES, self.position(), strict=True))
        for name, offset in offsets.items():
            self._checked_target(name, here[name] + offset, "MVR")
        self._set("MVR " + " ".join(f"{self._ids[n]} {_mm(v)}" for n, v in offsets.items()))

    def position(self) -> tuple[float, float]:
        """Current (x, y) position in µm (``POS?``)."""
        values = self._query_axes("POS?", list(self._ids.values()), _NUMBER)
        x, y = (float(values[self._ids[a]]) * UM_PER_MM for a in AXES)
        return x, y

    def moving(self) -> dict[str, bool]:
        """Which axes are moving, from the ``#5`` bitmask."""
        reply = self._exchange(MOVING, "#5")
        if len(reply) != 1 or not _HEX.fullmatch(reply[0]):
            raise ProtocolError("#5 reply is not a hex bitmask", reply="\n".join(reply),
                                device=self.name, command="#5")
        mask = int(reply[0], 16)
        try:
            return {a: bool(mask >> (int(i) - 1) & 1) for a, i in self._ids.items()}
        except ValueError:
            raise InstrumentError("#5 needs numeric axis identifiers", device=self.name,
                                  command="#5") from None

    def ready(self) -> bool:
        """``#7``: True when the controller answers 0xB1 (ready), False for 0xB0."""
        self._flush_stale("#7")
        with self._lock:
            self._write(READY, "#7")
            data = self._read_reply("#7")
        if data not in (b"\xb1\n", b"\xb0\n"):
            raise ProtocolError("#7 reply is not 0xB1/0xB0",
                                reply=data.decode("ascii", errors="backslashreplace"),
                                device=self.name, command="#7")
        return data == b"\xb1\n"

    def wait_until_idle(self, timeout_s: float, *, axes: Sequence[str] = AXES) -> None:
        """Block until none of ``axes`` moves (polling ``#5`` every ``poll_interval_s``), then
        read ``ERR?``: a motion error raises `GCSError`; a stop (code 10) is only logged.
        Raises `InstrumentTimeout` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while any(moving for axis, moving in self.moving().items() if axis in axes):
            self._sleep_until(deadline, "still moving", timeout_s, "#5")
        code = self._error_code()
        if code == STOPPED:
            log.info("%s: motion was stopped by command", self.name)
        elif code:
            raise GCSError("motion ended with an error", device=self.name, command="#5",
                           code=code, meaning=error_meaning(code))

    def set_speed(self, um_per_s: float) -> None:
        """Set the velocity of both axes (``VEL``), in µm/s."""
        speed = _finite(um_per_s)
        if speed is None or speed <= 0:
            raise SettingOutOfRange("speed (µm/s)", um_per_s, "> 0", device=self.name,
                                    command="VEL")
        self._set("VEL " + " ".join(f"{i} {_mm(speed)}" for i in self._ids.values()))

    def speed(self) -> float:
        """The lower of the two axes' velocities (``VEL?``), in µm/s."""
        values = self._query_axes("VEL?", list(self._ids.values()), _NUMBER)
        return min(float(v) for v in values.values()) * UM_PER_MM

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Read the travel limits ``TMN?``/``TMX?``: ((xmin, xmax), (ymin, ymax)) in µm."""
        ids = list(self._ids.values())
        low = self._query_axes("TMN?", ids, _NUMBER)
        high = self._query_axes("TMX?", ids, _NUMBER)
        for axis, i in self._ids.items():
            lo, hi = float(low[i]) * UM_PER_MM, float(high[i]) * UM_PER_MM
            if lo > hi:
                raise ProtocolError(f"axis {axis} TMN? {lo:g} > TMX? {hi:g} µm",
                                    device=self.name, command="TMX?")
            self._limits[axis] = (lo, hi)
        x, y = (self._limits[a] for a in AXES)
        return x, y

    def stop(self) -> None:
        """Stop all axes at once (``#24``), then read ``ERR?`` so the expected code 10 is not
        reported by the next command. Safe from any thread."""
        with self._lock:
            self._flush_stale("#24")
            self._write(STOP_ALL, "#24")
            code = self._error_code()
        if code not in (0, STOPPED):
            raise GCSError("error after stop", device=self.name, command="#24", code=code,
                           meaning=error_meaning(code))

    # ------------------------------------------------------------------ helpers
    def _initialise(self) -> None:
        """``*IDN?``, clear a stale error, servo on for both axes, read the limits."""
        self.idn = " ".join(self._query("*IDN?"))
        stale = self._error_code()
        if stale:
            log.info("%s: stale error %d (%s) cleared at start-up", self.name, stale,
                     error_meaning(stale))
        self._set("SVO " + " ".join(f"{i} 1" for i in self._ids.values()))
        self.limits()

    def _axis_id(self, name: str) -> str:
        return self._lookup_axis(self._ids, name)

    def _checked_target(self, name: str, um: object, command: str) -> float:
        value = _finite(um)
        low, high = self._limits[name]
        if value is None or not low <= value <= high:
            raise self._target_out_of_range(name, um, f"{low:g} .. {high:g} µm", command)
        return value

    def _set(self, command: str) -> None:
        """A silent set command, then ``ERR?``; a non-zero code raises `GCSError`."""
        with self._lock:
            self._flush_stale(command)
            self._write(f"{command}\n".encode("ascii"), command)
            code = self._error_code()
        if code:
            raise GCSError("command refused", device=self.name, command=command, code=code,
                           meaning=error_meaning(code))

    def _error_code(self) -> int:
        lines = self._query("ERR?")
        if len(lines) != 1 or not _INTEGER.fullmatch(lines[0]):
            raise ProtocolError("ERR? reply is not one integer", reply="\n".join(lines),
                                device=self.name, command="ERR?")
        return int(lines[0])

    def _query(self, command: str) -> list[str]:
        return self._exchange(f"{command}\n".encode("ascii"), command)

    def _query_axes(self, command: str, ids: list[str], value: re.Pattern[str]) -> dict[str, str]:
        """``<command> <ids>``: exactly one ``<id>=<value>`` line per axis, in order."""
        full = f"{command} {' '.join(ids)}"
        lines = self._query(full)
        out = {}
        for line, axis in zip(lines, ids, strict=False):
            key, sep, text = line.partition("=")
            if not sep or key != axis or not value.fullmatch(text):
                break
            out[key] = text
        if len(lines) != len(ids) or len(out) != len(ids):
            raise ProtocolError(f"expected one '<axis>=<value>' line for each of {ids}",
                                reply="\n".join(lines), device=self.name, command=full)
        return out

    def _exchange(self, data: bytes, command: str) -> list[str]:
        with self._lock:
            self._flush_stale(command)
            self._write(data, command)
            return split_reply(self._read_reply(command), device=self.name, command=command)

    def _flush_stale(self, command: str) -> None:
        try:
            stale = self._port.read(self._port.in_waiting) if self._port.in_waiting else b""
        except (SerialException, OSError) as exc:
            raise self._link_lost(exc, command) from exc
        if stale:
            log.warning("%s: unread bytes discarded before %r: %r", self.name, command, stale)

    def _read_reply(self, command: str) -> bytes:
        """Bytes up to the LF that is not preceded by a space (the end of a GCS reply)."""
        deadline = time.monotonic() + self._timeout_s

        def take(rx: bytearray) -> bytes | None:
            end = rx.find(b"\n")
            while end >= 0:
                if end == 0 or rx[end - 1] != ord(" "):
                    if end + 1 < len(rx):
                        log.warning("%s: bytes after the reply to %r discarded: %r", self.name,
                                    command, bytes(rx[end + 1:]))
                    return bytes(rx[: end + 1])
                end = rx.find(b"\n", end + 1)
            return None

        return self._read_until(bytearray(), deadline, command, take=take, max_len=_MAX_REPLY,
                                terminator="final LF")


__all__ = [
    "AXES",
    "ERRORS",
    "UM_PER_MM",
    "GCSError",
    "PIStage",
    "error_meaning",
    "split_reply",
]
