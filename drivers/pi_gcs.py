"""Driver for XY stages on a PI controller speaking GCS 2.0 (C-884, C-863, E-873 ...), standing
on PI's own library, pipython, through its DLL-free GCS layer (``GCSMessages`` +
``GCSCommands``): framing, the ``ERR?`` check after every command, the answer parsing and the
GCS 2/3 choice (``CSV?``) are pipython's, not ours to maintain.

The port is any pyserial URL: ``socket://host:50000`` (the controller's TCP port), a serial
port (``/dev/ttyUSB0``, 115200 8N1), or ``pigcssim://name`` (the emulator); `PortGateway` puts
it under pipython (the gateway role ``PISocket``/``PISerial`` play), so no PI DLL is needed
on either link. ``axes`` maps the stage axes "x" and "y" to the controller's axis identifiers
(default "1" and "2").

Rules the driver adds on top of pipython:

* every pipython failure becomes a typed error: a controller error code raises `GCSError`
  with its code and meaning (`ERRORS`), no reply `InstrumentTimeout`, a reply cut short or
  malformed `ProtocolError`, a lost port `InstrumentError`;
* GCS has no message ids, so unread bytes are discarded (and logged) before each command: a
  late answer to a command that timed out cannot be taken for the next one;
* start-up: ``*IDN?``, ``ERR?`` (clears a stale error), ``SVO <ax> 1`` for both axes, then the
  travel limits ``TMN?``/``TMX?``; targets are checked against them *before* anything is sent
  (`SettingOutOfRange`);
* units: the API takes µm and µm/s; GCS works in mm and mm/s (stage default [M]);
* waiting (`home`, `wait_until_idle`) sleeps ``poll_interval_s`` between polls, bounded by the
  timeout, and one re-entrant lock serialises each exchange, so `stop` may be called from
  another thread meanwhile.

pipython is an optional dependency (PI's licence): ``pip install pipython`` (or
``plumelink[pi]``); without it opening a PI stage raises `InstrumentError` saying so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import serial
from serial import SerialException

from .errors import InstrumentError, InstrumentTimeout, ProtocolError, SettingOutOfRange
from .serial_device import AXES, SerialDevice, check_axis_names
from .serial_device import finite as _finite

log = logging.getLogger(__name__)
_T = TypeVar("_T")

UM_PER_MM = 1000.0

#: GCS error codes and their meaning [V: pipython pidevice/gcserror.py names them].
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
#: Controller codes are positive; pipython's own (interface) codes negative, -7 = no reply
#: in time [V: pidevice/gcserror.py, E_7_COM_TIMEOUT, E_1004_PI_UNEXPECTED_RESPONSE = -1004]
_PIPYTHON_TIMEOUT = -7
_CODEPAGE = "cp1252"  # [V] pipython's PI_CONTROLLER_CODEPAGE
_AXIS_ID = r"[A-Za-z0-9_]+"


def error_meaning(code: int) -> str:
    return ERRORS.get(code, "undocumented GCS error code")


class GCSError(InstrumentError):
    """The controller's error register (``ERR?``) was non-zero after a command."""


def _pipython() -> Any:
    try:
        from pipython import GCSError as PipythonError
        from pipython.pidevice.gcscommands import GCSCommands
        from pipython.pidevice.gcsmessages import GCSMessages
        from pipython.pidevice.interfaces.pigateway import PIGateway
    except ImportError as exc:
        raise InstrumentError(
            f"PI stages need PI's library pipython, which is not installed ({exc}); "
            "install it with: pip install pipython", device="pi") from exc
    return PipythonError, GCSCommands, GCSMessages, PIGateway


def _gateway_class() -> type:
    """`PortGateway` is built on pipython's `PIGateway` when first needed, so importing
    this module does not need pipython."""
    global _GATEWAY
    if _GATEWAY is None:
        base = _pipython()[3]

        class PortGateway(base):  # type: ignore[misc, valid-type]
            """pipython's gateway role on an open pyserial port (any URL): ``send`` writes,
            ``read`` returns what has arrived, waiting at most one read slice for it (so
            pipython's read loop sleeps in the port instead of spinning)."""

            def __init__(self, port: serial.SerialBase, name: str) -> None:
                self._port = port
                self._name = name
                self._timeout_ms = 2000
                self.received = ""  # text received since the last send (for messages)

            def __str__(self) -> str:
                return f"PortGateway({self._port.port})"

            @property
            def timeout(self) -> int:
                return self._timeout_ms

            def settimeout(self, value: int) -> None:
                self._timeout_ms = int(value)

            @property
            def connected(self) -> bool:
                return bool(self._port.is_open)

            @property
            def connectionid(self) -> int:
                return 0

            def send(self, msg: str) -> None:
                stale = self._port.read(self._port.in_waiting) if self._port.in_waiting else b""
                if stale:
                    log.warning("%s: unread bytes discarded before %r: %r", self._name, msg,
                                stale)
                self.received = ""
                self._port.write(msg.encode(_CODEPAGE))

            def read(self) -> str:
                data = self._port.read(max(1, self._port.in_waiting))
                text = data.decode(_CODEPAGE, errors="replace")
                self.received += text
                return text

            def flush(self) -> None:
                if self._port.in_waiting:
                    self._port.read(self._port.in_waiting)

            def close(self) -> None:
                """The port belongs to the driver, which closes it."""

            def unload(self) -> None:
                """Nothing loaded."""

        _GATEWAY = PortGateway
    return _GATEWAY


_GATEWAY: type | None = None


class PIStage(SerialDevice):
    """An XY stage on a PI GCS 2.0 controller, through pipython. See the module docstring."""

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
        if len(set(ids)) != 2 or not all(re.fullmatch(_AXIS_ID, i) for i in ids):
            raise ValueError(f"bad GCS axis identifiers {ids}")
        self._ids: dict[str, str] = dict(zip(AXES, ids, strict=True))
        self._limits: dict[str, tuple[float, float]] = {}  # µm
        self.idn = ""
        self._pidevice: Any = None
        self._errors, commands, messages, _ = _pipython()
        self._open(url, name=name, baudrate=baudrate, timeout_s=timeout_s,
                   poll_interval_s=poll_interval_s)
        self._gateway = _gateway_class()(self._port, name)
        self._start_up(lambda: self._connect(commands, messages))

    def _connect(self, commands: Any, messages: Any) -> None:
        self._messages = messages(self._gateway)
        self.timeout_s = self._timeout_s
        with self._call("CSV?"):  # pipython asks the syntax version when it connects
            self._pidevice = commands(self._messages)
        self._initialise()

    @property
    def timeout_s(self) -> float:
        """How long a reply may take (s); pipython's own timeout follows it."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self._timeout_s = float(seconds)
        self._messages.timeout = max(1, round(self._timeout_s * 1000))

    # ------------------------------------------------------------------ public API
    def home(self, axes: Sequence[str] = AXES, *, wait: bool = True,
             timeout_s: float = 120.0) -> None:
        """Reference the named axes on their reference switch (``FRF``); by default wait,
        polling ``FRF?``, until all are referenced."""
        ids = [self._axis_id(a) for a in axes]
        if not ids:
            return
        self._do("FRF", lambda d: d.FRF(ids))
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        while not all(self._do("FRF?", lambda d: d.qFRF(ids)).values()):
            self._sleep_until(deadline, f"axis {', '.join(ids)} not referenced", timeout_s,
                              "FRF?")

    def referenced(self) -> dict[str, bool]:
        """Per axis: whether it has been referenced (``FRF?``)."""
        done = self._do("FRF?", lambda d: d.qFRF(list(self._ids.values())))
        return {axis: bool(done[i]) for axis, i in self._ids.items()}

    def move_absolute(self, x_um: float | None = None, y_um: float | None = None) -> None:
        """Start moving to the given targets (µm); an axis given None stays where it is."""
        targets = {n: v for n, v in zip(AXES, (x_um, y_um), strict=True) if v is not None}
        checked = {n: self._checked_target(n, v, "MOV") for n, v in targets.items()}
        if checked:
            self._do("MOV", lambda d: d.MOV({self._ids[n]: _mm(v) for n, v in checked.items()}))

    def move_relative(self, dx_um: float = 0.0, dy_um: float = 0.0) -> None:
        """Start moving by the given offsets (µm). The resulting targets are checked against
        the limits first (one ``POS?``); nothing is sent if that fails."""
        offsets = self._offsets((dx_um, dy_um), "MVR")
        if not offsets:
            return
        here = dict(zip(AXES, self.position(), strict=True))
        for name, offset in offsets.items():
            self._checked_target(name, here[name] + offset, "MVR")
        self._do("MVR", lambda d: d.MVR({self._ids[n]: _mm(v) for n, v in offsets.items()}))

    def position(self) -> tuple[float, float]:
        """Current (x, y) position in µm (``POS?``)."""
        values = self._axis_values("POS?", lambda d, ids: d.qPOS(ids))
        x, y = (values[self._ids[a]] * UM_PER_MM for a in AXES)
        return x, y

    def moving(self) -> dict[str, bool]:
        """Which axes are moving (``#5``)."""
        mask = self._do("#5", lambda d: d.IsMoving(list(self._ids.values())))
        return {a: bool(mask[i]) for a, i in self._ids.items()}

    def ready(self) -> bool:
        """``#7``: True when the controller answers 0xB1 (ready), False for 0xB0."""
        return bool(self._do("#7", lambda d: d.IsControllerReady()))

    def wait_until_idle(self, timeout_s: float, *, axes: Sequence[str] = AXES) -> None:
        """Block until none of ``axes`` moves (polling ``#5`` every ``poll_interval_s``); a
        motion error raises `GCSError`; a stop (code 10) is only logged. Raises
        `InstrumentTimeout` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                still = any(moving for axis, moving in self.moving().items() if axis in axes)
            except GCSError as exc:
                if exc.code != STOPPED:
                    raise GCSError("motion ended with an error", device=self.name,
                                   command="#5", code=exc.code, meaning=exc.meaning) from exc
                log.info("%s: motion was stopped by command", self.name)
                continue
            if not still:
                return
            self._sleep_until(deadline, "still moving", timeout_s, "#5")

    def set_speed(self, um_per_s: float) -> None:
        """Set the velocity of both axes (``VEL``), in µm/s."""
        speed = _finite(um_per_s)
        if speed is None or speed <= 0:
            raise SettingOutOfRange("speed (µm/s)", um_per_s, "> 0", device=self.name,
                                    command="VEL")
        self._do("VEL", lambda d: d.VEL({i: _mm(speed) for i in self._ids.values()}))

    def speed(self) -> float:
        """The lower of the two axes' velocities (``VEL?``), in µm/s."""
        values = self._axis_values("VEL?", lambda d, ids: d.qVEL(ids))
        return min(values.values()) * UM_PER_MM

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Read the travel limits ``TMN?``/``TMX?``: ((xmin, xmax), (ymin, ymax)) in µm."""
        low = self._axis_values("TMN?", lambda d, ids: d.qTMN(ids))
        high = self._axis_values("TMX?", lambda d, ids: d.qTMX(ids))
        for axis, i in self._ids.items():
            lo, hi = low[i] * UM_PER_MM, high[i] * UM_PER_MM
            if lo > hi:
                raise ProtocolError(f"axis {axis} TMN? {lo:g} > TMX? {hi:g} µm",
                                    device=self.name, command="TMX?")
            self._limits[axis] = (lo, hi)
        x, y = (self._limits[a] for a in AXES)
        return x, y

    def stop(self) -> None:
        """Stop all axes at once (``#24``); the expected code 10 is read away with it. Safe
        from any thread."""
        self._do("#24", lambda d: d.StopAll(noraise=True))

    def close(self) -> None:
        """Release pipython's hold on the connection, then close the port (idempotent)."""
        pidevice, self._pidevice = getattr(self, "_pidevice", None), None
        if pidevice is not None:
            pidevice.__exit__(None, None, None)  # unregisters its connection callback
        super().close()

    # ------------------------------------------------------------------ helpers
    def _initialise(self) -> None:
        """``*IDN?``, clear a stale error, servo on for both axes, read the limits."""
        self.idn = self._do("*IDN?", lambda d: d.qIDN()).strip()
        stale = self._do("ERR?", lambda d: d.qERR())
        if stale:
            log.info("%s: stale error %d (%s) cleared at start-up", self.name, stale,
                     error_meaning(stale))
        self._do("SVO", lambda d: d.SVO({i: True for i in self._ids.values()}))
        self.limits()

    def _axis_id(self, name: str) -> str:
        return self._lookup_axis(self._ids, name)

    def _checked_target(self, name: str, um: object, command: str) -> float:
        value = _finite(um)
        low, high = self._limits[name]
        if value is None or not low <= value <= high:
            raise self._target_out_of_range(name, um, f"{low:g} .. {high:g} µm", command)
        return value

    def _axis_values(self, command: str, query: Callable[[Any, list[str]], Mapping[str, Any]]
                     ) -> dict[str, float]:
        """``<command> <ids>``: one number per axis asked, else `ProtocolError`."""
        ids = list(self._ids.values())
        values = self._do(command, lambda d: query(d, ids))
        try:
            out = {i: float(values[i]) for i in ids}
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"expected one number for each of axes {ids}",
                                reply=self._gateway.received, device=self.name,
                                command=command) from None
        if len(values) != len(ids):
            raise ProtocolError(f"expected one number for each of axes {ids}",
                                reply=self._gateway.received, device=self.name,
                                command=command)
        return out

    def _do(self, command: str, action: Callable[[Any], _T]) -> _T:
        """One pipython call under the lock, its failures as typed errors."""
        with self._lock, self._call(command):  # type: ignore[attr-defined]
            if self._pidevice is None:
                raise InstrumentError("port is closed", device=self.name, command=command)
            return action(self._pidevice)

    @contextmanager
    def _call(self, command: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            code = int(exc.val) if isinstance(exc.val, int) else None
            received = self._gateway.received
            if code == _PIPYTHON_TIMEOUT:
                if received:
                    raise ProtocolError("truncated reply (no final LF before the timeout)",
                                        reply=received, device=self.name,
                                        command=command) from exc
                raise InstrumentTimeout(f"no reply within {self._timeout_s:g} s",
                                        device=self.name, command=command) from exc
            if code is not None and code > 0:
                raise GCSError("command refused", device=self.name, command=command,
                               code=code, meaning=error_meaning(code)) from exc
            raise ProtocolError(f"unexpected reply ({exc})", reply=received,
                                device=self.name, command=command) from exc
        except (SerialException, OSError) as exc:
            raise self._link_lost(exc, command) from exc
        except (ValueError, KeyError, IndexError, TypeError, UnicodeError) as exc:
            raise ProtocolError(f"malformed reply ({exc})", reply=self._gateway.received,
                                device=self.name, command=command) from exc


def _mm(um: float) -> float:
    return round(um / UM_PER_MM, 6)


__all__ = [
    "AXES",
    "ERRORS",
    "UM_PER_MM",
    "GCSError",
    "PIStage",
    "error_meaning",
]
