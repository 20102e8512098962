"""Driver for Zaber XY stages speaking the Zaber ASCII protocol (X-series, firmware 6 and 7).

The two axes are either two single-axis devices daisy-chained on one port (device 1 = x,
device 2 = y, the default) or two axes of one controller (``axes={"x": (1, 1), "y": (1, 2)}``).
The port is any pyserial URL (``/dev/ttyUSB0``, ``/dev/pts/N``, ``socket://host:port``,
``zabersim://name``), 115200 8N1 without flow control (``reference/instruments.md`` 4.1-4.2).

How it talks:

* every command carries a message id (``/<device> <axis> <id> <command>``, ids 00-99 in
  turn); the reply with that id and address is the answer. Replies with another id are stale
  answers to earlier commands that timed out and are skipped; ``#`` info lines are skipped;
  ``!`` alerts are logged and skipped. An optional LRC checksum (``:XX``) is added when
  ``checksum=True`` and verified on every reply that carries one;
* replies are parsed strictly (``@<dd> <axis> <id> <OK|RJ> <IDLE|BUSY> <flag> <data>`` + CR LF):
  anything else raises `ProtocolError` with the raw text, no complete reply within
  ``timeout_s`` raises `InstrumentTimeout`, a lost link raises `InstrumentError`;
* ``RJ`` raises `CommandRejected` carrying the reason word and its meaning; ``AGAIN`` is resent
  up to three times first. A fault flag (``F*``) in the reply to a move, home or status poll
  raises `DeviceFault` listing every active warning flag with its meaning (`clear_warnings`
  clears them);
* targets are checked against ``limit.min``/``limit.max`` (read at connect, refreshed by
  `limits`) *before* anything is sent (`SettingOutOfRange`), and an axis without a reference
  position (``WR``/``WH``) refuses moves with `NotReferenced` before the move is sent;
* units: positions in µm, speeds in µm/s, times in s. ``microstep_um`` is the size of one
  device unit (microstep) per axis; Zaber speed units are microsteps/s x 1.6384 [M];
* identity: `identify` reads each axis's device id, serial number, firmware version
  (``get deviceid``, ``get system.serial``, ``get version`` on axis 0), peripheral id and
  microstep resolution (``get resolution``: microsteps per full step), for the map's
  instrument snapshot. Given ``fullstep_um`` (the travel of one full motor step, from the
  stage's datasheet: lead screw pitch / steps per turn), the connect reads ``resolution`` and
  the configured ``microstep_um`` must equal ``fullstep_um / resolution``; otherwise the stage
  refuses to open (`MicrostepMismatch`, saying which value to change), because every position
  would be off by their ratio.

Moves return at once; `wait_until_idle` polls the empty status command every
``poll_interval_s`` (sleeping in between, bounded by the timeout). One re-entrant lock
serialises each command/reply exchange, so `stop` may be called from another thread while
another thread waits.
"""

from __future__ import annotations

import itertools
import logging
import numbers
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import serial

from .errors import InstrumentError, ProtocolError, SettingOutOfRange
from .serial_device import AXES, SerialDevice, check_axis_names
from .serial_device import finite as _finite

log = logging.getLogger(__name__)

#: maxspeed (device units) = microsteps per second x SPEED_FACTOR on Zaber stepper devices [M].
SPEED_FACTOR = 1.6384
MAX_MESSAGE_ID = 99

#: RJ reasons and what each means for the caller [M: protocol manual, as remembered].
REJECTION_REASONS: dict[str, str] = {
    "BADCOMMAND": "the command or setting is not known to this device or firmware",
    "BADDATA": "the data is malformed or out of range (e.g. a target outside the limits)",
    "BADAXIS": "the axis number does not exist on this device",
    "DEVICEONLY": "the command is device-wide and must be sent to axis 0",
    "AGAIN": "the device could not take the command now; send it again",
    "STATUSBUSY": "the command is not allowed while the axis is moving",
    "PARKED": "the axis is parked; unpark it first",
    "DRIVERDISABLED": "the motor driver is disabled (driver enable, or clear the fault first)",
    "LOCKSTEP": "the axis is in a lockstep group; command the group instead",
    "SYSTEMERROR": "the device has a critical system error and needs a reset",
    "BADMESSAGEID": "the message id is invalid (must be 0-99)",
}

#: Warning flags, highest priority first: faults F*, warnings W*, notices N* [V: zaber-motion
#: for FS FQ FE FD FF WR WH WL WS NI NC; M for the rest].
FLAGS: dict[str, str] = {
    "FF": "critical system error; the device must be reset",
    "FD": "driver disabled: the motor driver shut down (over-temperature or over-current)",
    "FQ": "encoder error: the encoder reading is unreliable",
    "FS": "stalled and stopped: the axis stalled or was displaced and stopped the move",
    "FT": "excessive twist between lockstep axes",
    "FB": "stream bounds error",
    "FP": "interpolated path deviation",
    "FE": "limit error: a limit sensor gave an unexpected reading",
    "FM": "unexpected peripheral: the connected stage does not match the stored one",
    "WD": "driver temperature or current high",
    "WL": "unexpected limit trigger: the axis touched a limit sensor during a move",
    "WS": "stalled or displaced; the device recovered but the position may be off",
    "WT": "system temperature high",
    "WV": "supply voltage out of range",
    "WM": "displaced when stationary",
    "WR": "no reference position: the axis must be homed before absolute moves",
    "WH": "not homed: the axis has no reference position (home it)",
    "NC": "manual control: the knob or joystick moved the axis",
    "NI": "movement interrupted by a newer command or a stop",
    "ND": "stream discontinuity",
    "NU": "setting update pending",
}
NOT_REFERENCED_FLAGS = frozenset({"WR", "WH"})

_AGAIN_RETRIES = 3
_AGAIN_BACKOFF_S = 0.02
_MAX_LINE = 4096
_INTEGER = re.compile(r"[+-]?\d+")
_REPLY = re.compile(
    r"@(?P<device>\d{2}) (?P<axis>\d+) (?:(?P<id>\d{1,2}) )?(?P<ok>OK|RJ) (?P<busy>IDLE|BUSY)"
    r" (?P<flag>--|[A-Z]{2}) (?P<data>[^ ](?:.*[^ ])?)"
)
_ALERT = re.compile(r"!(?P<device>\d{2}) (?P<axis>\d+) (?P<busy>IDLE|BUSY) (?P<flag>--|[A-Z]{2})")
_INFO = re.compile(r"#\d{2} \d+(?: .*)?")
_FLAG = re.compile(r"[A-Z]{2}")


def lrc(text: str) -> str:
    """Zaber ASCII checksum: two's complement of the byte sum of ``text`` (the message between
    the leading ``/`` or ``@`` and the ``:``), as two upper-case hex digits."""
    return f"{-sum(text.encode('ascii')) & 0xFF:02X}"


def flag_meaning(flag: str) -> str:
    """What a warning flag means; unknown flags are classed by their first letter."""
    if flag in FLAGS:
        return FLAGS[flag]
    kind = {"F": "fault", "W": "warning", "N": "notice"}.get(flag[:1], "flag")
    return f"undocumented {kind}"


def rejection_meaning(reason: str) -> str:
    return REJECTION_REASONS.get(reason, "undocumented rejection reason")


class CommandRejected(InstrumentError):
    """The device answered ``RJ``; ``reason`` is its reason word (e.g. ``BADDATA``)."""

    def __init__(self, reason: str, **kwargs: Any) -> None:
        super().__init__(f"rejected: {reason}", meaning=rejection_meaning(reason), **kwargs)
        self.reason = reason


class DeviceFault(InstrumentError):
    """An axis reports fault flags (``F*``); ``flags`` holds every active warning flag."""

    def __init__(self, axis: str, flags: Iterable[str], **kwargs: Any) -> None:
        self.axis = axis
        self.flags = frozenset(flags)
        faults = sorted(f for f in self.flags if f.startswith("F"))
        super().__init__(
            f"axis {axis} fault {' '.join(faults)}",
            meaning="; ".join(f"{f}: {flag_meaning(f)}" for f in faults),
            **kwargs,
        )


class MicrostepMismatch(InstrumentError):
    """The configured ``microstep_um`` contradicts the device's resolution and the stage's
    full-step size: positions would be scaled wrongly."""


class NotReferenced(InstrumentError):
    """An axis has no reference position (``WR``/``WH``): `ZaberStage.home` it before moving."""


@dataclass(frozen=True)
class Reply:
    """One parsed ``@`` reply line."""

    device: int
    axis: int
    message_id: int | None
    ok: bool
    busy: bool
    flag: str
    data: str
    raw: str

    @property
    def warning(self) -> str | None:
        return None if self.flag == "--" else self.flag


@dataclass(frozen=True)
class Alert:
    """One ``!`` alert line (sent unprompted when ``comm.alert`` is 1)."""

    device: int
    axis: int
    busy: bool
    flag: str
    raw: str


@dataclass(frozen=True)
class Info:
    """One ``#`` info line (extra text some commands send after their reply)."""

    raw: str


def parse_message(line: bytes, *, device: str = "", command: str = "") -> Reply | Alert | Info:
    """Parse one received line, CR LF included; raise `ProtocolError` on anything malformed."""
    raw = line.decode("ascii", errors="backslashreplace")

    def bad(why: str) -> ProtocolError:
        return ProtocolError(why, reply=raw, device=device, command=command)

    if not line.endswith(b"\r\n"):
        raise bad("reply not terminated by CR LF")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise bad("reply is not ASCII") from None
    if not text.isprintable():
        raise bad("reply contains control characters")
    if len(text) > 3 and text[-3] == ":":
        text, given = text[:-3], text[-2:]
        if lrc(text[1:]) != given:
            raise bad(f"checksum mismatch (expected {lrc(text[1:])})")
    if text.endswith("\\"):
        raise bad("multi-packet replies are not supported")
    if text.startswith("#"):
        if not _INFO.fullmatch(text):
            raise bad("malformed info line")
        return Info(raw)
    if text.startswith("!"):
        alert = _ALERT.match(text)
        if alert is None:
            raise bad("malformed alert")
        return Alert(int(alert["device"]), int(alert["axis"]), alert["busy"] == "BUSY",
                     alert["flag"], raw)
    match = _REPLY.fullmatch(text)
    if match is None:
        raise bad("malformed reply")
    return Reply(
        device=int(match["device"]),
        axis=int(match["axis"]),
        message_id=int(match["id"]) if match["id"] is not None else None,
        ok=match["ok"] == "OK",
        busy=match["busy"] == "BUSY",
        flag=match["flag"],
        data=match["data"],
        raw=raw,
    )


def parse_warnings(reply: Reply, *, device: str = "", command: str = "warnings") -> set[str]:
    """Decode the data of a ``warnings`` reply: a two-digit count followed by that many flags."""
    words = reply.data.split(" ")
    count = words[0]
    if (
        not re.fullmatch(r"\d{2}", count)
        or int(count) != len(words) - 1
        or not all(_FLAG.fullmatch(w) for w in words[1:])
    ):
        raise ProtocolError("malformed warnings list", reply=reply.raw, device=device,
                            command=command)
    return set(words[1:])


@dataclass(frozen=True)
class _Axis:
    name: str
    device: int
    number: int
    microstep_um: float

    def to_native(self, um: float) -> int:
        return round(um / self.microstep_um)

    def to_um(self, native: int) -> float:
        return native * self.microstep_um


class ZaberStage(SerialDevice):
    """An XY stage on a Zaber ASCII port. See the module docstring for the rules it follows."""

    def __init__(
        self,
        url: str | serial.SerialBase,
        *,
        x_device: int = 1,
        y_device: int = 2,
        axes: Mapping[str, tuple[int, int]] | None = None,
        microstep_um: float | Mapping[str, float] = 0.1,
        fullstep_um: float | Mapping[str, float] | None = None,
        baudrate: int = 115200,
        timeout_s: float = 2.0,
        checksum: bool = False,
        poll_interval_s: float = 0.02,
        name: str = "zaber",
    ) -> None:
        """``axes`` maps "x" and "y" to (device, axis number) and overrides ``x_device`` and
        ``y_device`` (which mean axis 1 of that device). ``url`` may be an open serial port.
        ``fullstep_um`` (one value or one per axis) enables the microstep check."""
        mapping = dict(axes) if axes is not None else {"x": (x_device, 1), "y": (y_device, 1)}
        check_axis_names(mapping)
        steps = (microstep_um if isinstance(microstep_um, Mapping)
                 else dict.fromkeys(AXES, microstep_um))
        self._axes: dict[str, _Axis] = {}
        for axis in AXES:
            device, number = mapping[axis]
            step = _finite(steps.get(axis))
            if not (1 <= device <= 99 and 1 <= number <= 9) or step is None or step <= 0:
                raise ValueError(f"bad address or microstep for axis {axis}")
            self._axes[axis] = _Axis(axis, device, number, step)
        self._fullstep: dict[str, float] = {}
        if fullstep_um is not None:
            full = (fullstep_um if isinstance(fullstep_um, Mapping)
                    else dict.fromkeys(AXES, fullstep_um))
            for axis in AXES:
                value = _finite(full.get(axis))
                if value is None or value <= 0:
                    raise ValueError(f"bad fullstep_um for axis {axis}")
                self._fullstep[axis] = value
        self._identity: dict[str, dict[str, object]] = {}
        self._checksum = checksum
        self._ids = itertools.cycle(range(MAX_MESSAGE_ID + 1))
        self._rx = bytearray()
        self._referenced: dict[str, bool | None] = dict.fromkeys(AXES)
        self._limits: dict[str, tuple[int, int]] = {}
        self._open(url, name=name, baudrate=baudrate, timeout_s=timeout_s,
                   poll_interval_s=poll_interval_s)
        self._start_up(self._initialise)

    def _initialise(self) -> None:
        """The microstep check (when ``fullstep_um`` is given), then the limits."""
        for axis in self._axes.values():
            self._check_microstep(axis)
        self.limits()

    def identify(self) -> dict[str, dict[str, object]]:
        """Per axis: device address and axis number, device id, serial, firmware, peripheral
        id, resolution (None where the firmware rejects the setting) and the configured
        microstep size in µm. Read once, then remembered."""
        if not self._identity:
            self._identity = {a.name: self._identify(a) for a in self._axes.values()}
        return {name: dict(entry) for name, entry in self._identity.items()}

    def _identify(self, axis: _Axis) -> dict[str, object]:
        device = (axis.device, 0)

        def setting(target: _Axis | tuple[int, int], name: str) -> str | None:
            try:
                return self._command(target, f"get {name}").data
            except CommandRejected as exc:  # older firmware lacks some settings
                log.info("%s: get %s rejected (%s)", self.name, name, exc.reason)
                return None

        def number(text: str | None) -> int | None:
            return int(text) if text is not None and _INTEGER.fullmatch(text) else None

        return {"device": axis.device, "axis": axis.number,
                "device_id": number(setting(device, "deviceid")),
                "serial": number(setting(device, "system.serial")),
                "firmware": setting(device, "version"),
                "peripheral_id": number(setting(axis, "peripheralid")),
                "resolution": number(setting(axis, "resolution")),
                "microstep_um": axis.microstep_um}

    def _check_microstep(self, axis: _Axis) -> None:
        full = self._fullstep.get(axis.name)
        if full is None:
            return
        reply = self._command(axis, "get resolution").data
        resolution = int(reply) if _INTEGER.fullmatch(reply) else None
        if resolution is None or resolution < 1:
            raise MicrostepMismatch(
                f"axis {axis.name} (device {axis.device}) does not report its resolution, "
                "so microstep_um cannot be checked against fullstep_um; remove fullstep_um "
                "to skip the check", device=self.name, command="get resolution")
        expected = full / resolution
        if abs(axis.microstep_um - expected) > 1e-6 * expected:
            raise MicrostepMismatch(
                f"microstep_um {axis.microstep_um:g} µm for axis {axis.name} contradicts the "
                f"device: device {axis.device} axis {axis.number} has resolution {resolution} "
                f"microsteps per full step, so with fullstep_um {full:g} µm one microstep is "
                f"{expected:g} µm; set microstep_um = {expected:g} (or fix fullstep_um, or "
                "the device's resolution setting)", device=self.name, command="get resolution")

    # ------------------------------------------------------------------ public API
    def home(self, axes: Sequence[str] = AXES, *, wait: bool = True,
             timeout_s: float = 120.0) -> None:
        """Home the named axes together (sets their reference position); by default wait."""
        chosen = [self._axis(a) for a in axes]
        for axis in chosen:
            self._motion_command(axis, "home")
            self._referenced[axis.name] = None
        if wait:
            self.wait_until_idle(timeout_s, axes=[a.name for a in chosen])

    def move_absolute(self, x_um: float | None = None, y_um: float | None = None) -> None:
        """Start moving to the given targets (µm); an axis given None stays where it is."""
        targets = {n: v for n, v in zip(AXES, (x_um, y_um), strict=True) if v is not None}
        natives = {n: self._checked_target(n, v, "move abs") for n, v in targets.items()}
        self._start_moves("move abs", natives)

    def move_relative(self, dx_um: float = 0.0, dy_um: float = 0.0) -> None:
        """Start moving by the given offsets (µm). The resulting target is checked against the
        limits first, which needs one position read; nothing that moves is sent if it fails."""
        offsets = self._offsets((dx_um, dy_um), "move rel")
        if not offsets:
            return
        natives = {}
        for name, offset in offsets.items():
            axis = self._axes[name]
            here = self._get_int(axis, "pos")
            step = axis.to_native(offset)
            self._checked_target(name, axis.to_um(here) + offset, "move rel", native=here + step)
            natives[name] = step
        self._start_moves("move rel", natives)

    def position(self) -> tuple[float, float]:
        """Current (x, y) position in µm as the device reports it."""
        x, y = (axis.to_um(self._get_int(axis, "pos")) for axis in self._axes.values())
        return x, y

    def wait_until_idle(self, timeout_s: float, *, axes: Sequence[str] = AXES) -> None:
        """Block until every named axis is IDLE, polling every ``poll_interval_s``; raise
        `DeviceFault` when an axis reports a fault and `InstrumentTimeout` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        pending = [self._axis(a) for a in axes]
        while True:
            still = []
            for axis in pending:
                reply = self._command(axis, "")
                self._raise_on_fault(axis, reply)
                if reply.busy:
                    still.append(axis)
            pending = still
            if not pending:
                return
            names = ", ".join(a.name for a in pending)
            self._sleep_until(deadline, f"axis {names} still BUSY", timeout_s, "")

    def set_speed(self, um_per_s: float) -> None:
        """Set the top speed of both axes (``maxspeed``), in µm/s."""
        speed = _finite(um_per_s)
        natives = {}
        for axis in self._axes.values():
            native = (round(speed / axis.microstep_um * SPEED_FACTOR)
                      if speed is not None and speed > 0 else 0)
            if native < 1:
                lowest = axis.microstep_um / SPEED_FACTOR
                raise SettingOutOfRange("speed (µm/s)", um_per_s, f">= {lowest:g} µm/s",
                                        device=self.name, command="set maxspeed")
            natives[axis.name] = native
        for axis in self._axes.values():
            self._command(axis, f"set maxspeed {natives[axis.name]}")

    def speed(self) -> float:
        """The lower of the two axes' top speeds, in µm/s (what a diagonal move can rely on)."""
        return min(self._get_int(axis, "maxspeed") / SPEED_FACTOR * axis.microstep_um
                   for axis in self._axes.values())

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Read ``limit.min``/``limit.max`` of both axes: ((xmin, xmax), (ymin, ymax)) in µm."""
        for axis in self._axes.values():
            low, high = self._get_int(axis, "limit.min"), self._get_int(axis, "limit.max")
            if low > high:
                raise ProtocolError(f"axis {axis.name} limit.min {low} > limit.max {high}",
                                    device=self.name, command="get limit.max")
            self._limits[axis.name] = (low, high)
        x, y = (tuple(a.to_um(n) for n in self._limits[a.name]) for a in self._axes.values())
        return (x[0], x[1]), (y[0], y[1])

    def warnings(self) -> set[str]:
        """Every active warning flag on either axis (see `FLAGS` for meanings)."""
        return set().union(*self.axis_warnings().values())

    def referenced(self) -> dict[str, bool]:
        """Per axis: whether it has a reference position (no ``WR``/``WH`` flag)."""
        return {name: not flags & NOT_REFERENCED_FLAGS
                for name, flags in self.axis_warnings().items()}

    def axis_warnings(self) -> dict[str, set[str]]:
        return {axis.name: self._warnings(axis) for axis in self._axes.values()}

    def clear_warnings(self) -> None:
        """Clear the clearable flags (faults, notices); WR/WH stay until the axis is homed."""
        for axis in self._axes.values():
            self._command(axis, "warnings clear")
            self._referenced[axis.name] = None

    def stop(self) -> None:
        """Stop both axes (decelerating); tries both even if one fails. Safe from any thread."""
        errors = []
        for axis in self._axes.values():
            try:
                self._command(axis, "stop")
            except InstrumentError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def configure_distance_trigger(self, axis: str, distance_um: float, output: int = 1, *,
                                   trigger: int = 1, count: int | None = None) -> float:
        """Toggle digital output ``output`` of the axis's device every ``distance_um`` of travel
        (either direction), for fly scans. Returns the distance actually set (whole microsteps).

        Firmware 7 trigger syntax (``trigger`` needs firmware >= 7.06; sent to axis 0) [V: public
        user code for 7.33; check the protocol manual of the installed firmware]::

            trigger <n> disable
            trigger <n> when <axis> dist <microsteps>
            trigger <n> action a io set do <output> t
            trigger <n> enable [count]

        The output *toggles* at each firing, so an edge-triggered input sees one edge of each
        polarity in turn: a rising-edge-only trigger input fires every 2 x ``distance_um``.
        ``count`` limits the number of firings (None = until disabled).
        """
        ax = self._axis(axis)
        distance = _finite(distance_um)
        native = ax.to_native(distance) if distance is not None and distance > 0 else 0
        if native < 1:
            raise SettingOutOfRange("trigger distance (µm)", distance_um,
                                    f">= {ax.microstep_um:g} µm", device=self.name,
                                    command="trigger when dist")
        for label, value, low, high in (("trigger number", trigger, 1, 99),
                                        ("digital output", output, 1, 99),
                                        ("trigger count", 1 if count is None else count, 1,
                                         2**31 - 1)):
            if not isinstance(value, numbers.Integral) or not low <= value <= high:
                raise SettingOutOfRange(label, value, f"integers {low} .. {high}",
                                        device=self.name, command="trigger")
        device = (ax.device, 0)
        self._command(device, f"trigger {trigger} disable")
        self._command(device, f"trigger {trigger} when {ax.number} dist {native}")
        self._command(device, f"trigger {trigger} action a io set do {output} t")
        self._command(device, f"trigger {trigger} enable" + (f" {count}" if count else ""))
        return ax.to_um(native)

    def disable_distance_trigger(self, axis: str, *, trigger: int = 1) -> None:
        self._command((self._axis(axis).device, 0), f"trigger {int(trigger)} disable")

    def set_digital_output(self, axis: str, output: int, level: int) -> None:
        """Set digital output ``output`` of the axis's device to 0 or 1 (``io set do``), e.g.
        low before a distance trigger that toggles it, so its first firing is a rising edge."""
        if level not in (0, 1) or isinstance(level, bool):
            raise SettingOutOfRange("digital output level", level, "0 or 1", device=self.name,
                                    command="io set do")
        if not isinstance(output, numbers.Integral) or not 1 <= output <= 99:
            raise SettingOutOfRange("digital output", output, "integers 1 .. 99",
                                    device=self.name, command="io set do")
        self._command((self._axis(axis).device, 0), f"io set do {int(output)} {level}")

    # ------------------------------------------------------------------ helpers
    def _axis(self, name: str) -> _Axis:
        return self._lookup_axis(self._axes, name)

    def _checked_target(self, name: str, um: object, command: str, *,
                        native: int | None = None) -> int:
        axis = self._axes[name]
        value = _finite(um)
        low, high = self._limits[name]
        if value is not None and native is None:
            native = axis.to_native(value)
        if value is None or native is None or not low <= native <= high:
            allowed = f"{axis.to_um(low):g} .. {axis.to_um(high):g} µm"
            raise self._target_out_of_range(name, um, allowed, command)
        return native

    def _start_moves(self, command: str, natives: Mapping[str, int]) -> None:
        for name in natives:
            self._require_reference(self._axes[name])
        for name, native in natives.items():
            self._motion_command(self._axes[name], f"{command} {native}")

    def _require_reference(self, axis: _Axis) -> None:
        if self._referenced[axis.name]:
            return
        missing = self._warnings(axis) & NOT_REFERENCED_FLAGS
        if missing:
            flag = sorted(missing)[0]
            raise NotReferenced(f"axis {axis.name} has no reference position; call home()",
                                device=self.name, command="move", meaning=flag_meaning(flag))
        self._referenced[axis.name] = True

    def _warnings(self, axis: _Axis) -> set[str]:
        flags = parse_warnings(self._command(axis, "warnings"), device=self.name)
        if flags & NOT_REFERENCED_FLAGS:
            self._referenced[axis.name] = False
        return flags

    def _motion_command(self, axis: _Axis, text: str) -> Reply:
        reply = self._command(axis, text)
        self._raise_on_fault(axis, reply)
        return reply

    def _raise_on_fault(self, axis: _Axis, reply: Reply) -> None:
        if reply.flag.startswith("F"):
            flags = self._warnings(axis) | {reply.flag}
            raise DeviceFault(axis.name, flags, device=self.name, command=reply.raw.strip())

    def _get_int(self, axis: _Axis, setting: str) -> int:
        reply = self._command(axis, f"get {setting}")
        if not _INTEGER.fullmatch(reply.data):
            raise ProtocolError(f"{setting} reply is not an integer", reply=reply.raw,
                                device=self.name, command=f"get {setting}")
        return int(reply.data)

    def _command(self, target: _Axis | tuple[int, int], text: str) -> Reply:
        """One command with AGAIN retries; RJ raises `CommandRejected`."""
        device, number = (target.device, target.number) if isinstance(target, _Axis) else target
        for attempt in range(_AGAIN_RETRIES + 1):
            reply = self._transact(device, number, text)
            if reply.ok:
                break
            if reply.data == "AGAIN" and attempt < _AGAIN_RETRIES:
                log.info("%s: /%d %d %s answered AGAIN; resending", self.name, device, number,
                         text)
                time.sleep(_AGAIN_BACKOFF_S * (attempt + 1))
                continue
            raise CommandRejected(reply.data, device=self.name,
                                  command=f"/{device} {number} {text}".rstrip())
        if isinstance(target, _Axis) and reply.flag in NOT_REFERENCED_FLAGS:
            self._referenced[target.name] = False
        return reply

    def _transact(self, device: int, axis: int, text: str) -> Reply:
        """Send one command and return the reply carrying its message id."""
        with self._lock:
            msg_id = next(self._ids)
            body = f"{device} {axis} {msg_id:02d} {text}".rstrip()
            if self._checksum:
                body += f":{lrc(body)}"
            command = f"/{body}"
            self._write(f"{command}\r\n".encode("ascii"), command)
            deadline = time.monotonic() + self._timeout_s
            while True:
                message = parse_message(self._read_line(deadline, command), device=self.name,
                                        command=command)
                if isinstance(message, Info):
                    log.debug("%s: info line skipped: %r", self.name, message.raw)
                    continue
                if isinstance(message, Alert):
                    log.info("%s: alert %r", self.name, message.raw)
                    continue
                if message.message_id is None and not (
                    message.data == "BADMESSAGEID" and not message.ok
                ):
                    raise ProtocolError("reply carries no message id", reply=message.raw,
                                        device=self.name, command=command)
                if message.message_id is not None and message.message_id != msg_id:
                    log.warning("%s: stale reply skipped (id %s, expected %02d): %r", self.name,
                                message.message_id, msg_id, message.raw)
                    continue
                if (message.device, message.axis) != (device, axis):
                    raise ProtocolError(f"reply from the wrong address (sent to {device} {axis})",
                                        reply=message.raw, device=self.name, command=command)
                log.debug("%s: %s -> %r", self.name, command, message.raw)
                return message

    def _read_line(self, deadline: float, command: str) -> bytes:
        return self._read_until(self._rx, deadline, command, take=_take_line,
                                max_len=_MAX_LINE, terminator="CR LF")


def _take_line(rx: bytearray) -> bytes | None:
    """Remove and return the first LF-terminated line of ``rx``, if complete."""
    end = rx.find(b"\n")
    if end < 0:
        return None
    line = bytes(rx[: end + 1])
    del rx[: end + 1]
    return line


__all__ = [
    "AXES",
    "FLAGS",
    "REJECTION_REASONS",
    "SPEED_FACTOR",
    "Alert",
    "CommandRejected",
    "DeviceFault",
    "Info",
    "MicrostepMismatch",
    "NotReferenced",
    "Reply",
    "ZaberStage",
    "flag_meaning",
    "lrc",
    "parse_message",
    "parse_warnings",
]
