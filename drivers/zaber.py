"""Driver for Zaber XY stages (ASCII protocol, X-series, firmware 6 and 7), standing on Zaber's
own library, zaber-motion (``zaber_motion.ascii``): framing, message ids, LRC checksums, reply
parsing and request timeouts are the library's, not ours to maintain.

The two axes are either two single-axis devices daisy-chained on one port (device 1 = x,
device 2 = y, the default) or two axes of one controller (``axes={"x": (1, 1), "y": (1, 2)}``).
The port is a serial port name (``/dev/ttyUSB0``, ``COM3``: `Connection.open_serial_port`,
115200 baud, opened directly, not through Zaber Launcher) or ``tcp://host:port`` (also
``socket://host:port``: `Connection.open_tcp`, e.g. a serial-to-Ethernet adapter or the
simulated bench's emulator on localhost).

Rules the driver adds on top of zaber-motion:

* every library failure becomes a typed error: a rejection (``RJ``) raises `CommandRejected`
  with the reason word and its meaning, a fault flag (``F*``) seen while waiting raises
  `DeviceFault` listing every active warning flag with its meaning, no reply in ``timeout_s``
  raises `InstrumentTimeout`, a malformed reply `ProtocolError`, a lost link `InstrumentError`;
* targets are checked against ``limit.min``/``limit.max`` (read at connect, refreshed by
  `limits`) *before* anything is sent (`SettingOutOfRange`), and an axis without a reference
  position (``WR``/``WH``) refuses moves with `NotReferenced` before the move is sent;
* units: positions in µm, speeds in µm/s. The library moves in native units (microsteps);
  the size of one microstep comes from Zaber's device database when the device is found there
  (`Device.identify`), otherwise from the profile's ``microstep_um`` (default 0.1 µm).
  Speeds are microsteps/s x 1.6384 (`SPEED_FACTOR`) in native units;
* identity: `identify` reads each axis's device id, serial number, firmware version,
  peripheral id and microstep resolution (microsteps per full step), for the map's instrument
  snapshot. The connect refuses a ``microstep_um`` that contradicts the device
  (`MicrostepMismatch`, saying which value to change): when the device database knows the
  device, its microstep size must equal ``microstep_um``; given ``fullstep_um`` (the travel of
  one full motor step, from the stage's datasheet), ``microstep_um`` must equal
  ``fullstep_um / resolution``. Otherwise every position would be off by their ratio;
* ``device_db``: None keeps the library's device-database source (Zaber's web service, or what
  the process set with `Library.set_device_db_source`); a path uses that database file;
  ``"offline"`` skips the database (identity from the device's own settings only).

Moves return at once; `wait_until_idle` polls the status every ``poll_interval_s``, bounded by
its timeout, with ``get pos`` per axis: its reply carries the status and the highest warning
flag like the empty command's, and the position too, so `wait_for_position` (the
`IdlePosition` capability) returns where a measured move ended without a position query after
it. zaber-motion serialises requests itself, so `stop` may be called from another thread while
one waits.

Round trips saved (each zaber-motion call costs a few hundred µs, more on a loaded host): the
driver remembers, per device trigger, that it disabled it and which action it set, and does
not send them again identically (a fly scan arms the same trigger every line); the condition
(``when ... dist``) and ``enable`` are always sent, since whether the distance is counted from
the condition or from the enable is not documented here [I]. It remembers the digital output
levels it set, and knows a trigger with a count spent once an idle poll finds its axis
``count x distance`` away from where the trigger was enabled (`_spend_triggers`): the trigger
then disabled itself and toggled its output ``count`` times, so neither the disable nor that
output level is sent again. What it remembers is forgotten on any error, `reconnect`, `home`
and `clear_warnings`.

`reconnect` (the `Reconnect` capability) opens the port again after the link dropped or the
device stopped answering, keeps the microstep sizes found at the first connect, reads the
limits again and asks for the reference state before the next move.

zaber-motion is an optional dependency (MIT): ``pip install zaber-motion`` (or
``plumelink[zaber]``); without it opening a Zaber stage raises `InstrumentError` saying so.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .errors import InstrumentError, InstrumentTimeout, ProtocolError, SettingOutOfRange
from .serial_device import AXES, SerialDevice, check_axis_names
from .serial_device import finite as _finite

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: maxspeed (device units) = microsteps per second x SPEED_FACTOR on Zaber stepper devices [M].
SPEED_FACTOR = 1.6384
DEFAULT_MICROSTEP_UM = 0.1
OFFLINE = "offline"

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
#: ``ascii/warning_flags.py`` for the names; M for the meanings].
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
    """The configured ``microstep_um`` contradicts the identified device: positions would be
    scaled wrongly."""


class NotReferenced(InstrumentError):
    """An axis has no reference position (``WR``/``WH``): `ZaberStage.home` it before moving."""


def _library() -> Any:
    """The zaber-motion module, imported when a stage is opened (so importing this module,
    the emulator and the rest of plumelink does not need it)."""
    try:
        import zaber_motion
        import zaber_motion.ascii
    except ImportError as exc:
        raise InstrumentError(
            f"Zaber stages need Zaber's library zaber-motion, which is not installed ({exc}); "
            "install it with: pip install zaber-motion  (or: pip install 'plumelink[zaber]')",
            device="zaber") from exc
    return zaber_motion


@dataclass
class _Axis:
    name: str
    device: int
    number: int
    microstep_um: float
    handle: Any = None  # zaber_motion.ascii.Axis

    def to_native(self, um: float) -> int:
        return round(um / self.microstep_um)

    def to_um(self, native: float) -> float:
        return native * self.microstep_um


@dataclass
class _TriggerState:
    """What the driver knows it set on one device trigger (None / False: not known)."""

    disabled: bool = False
    action: str | None = None
    arming: _Arming | None = None  # the last enable, when it can be known spent


@dataclass(frozen=True)
class _Arming:
    """A distance trigger enabled with a count while its axis was idle at a known position:
    the axis, that position (native), the travel that spends it (count x distance, native),
    the output it toggles, that output's level at the enable (None: unknown) and the count."""

    axis: str
    armed_at: int
    travel: int
    output: int
    level: int | None
    toggles: int


def _per_axis(value: float | Mapping[str, float] | None, what: str) -> dict[str, float | None]:
    if value is None:
        return dict.fromkeys(AXES)
    values = value if isinstance(value, Mapping) else dict.fromkeys(AXES, value)
    out: dict[str, float | None] = {}
    for axis in AXES:
        number = _finite(values.get(axis))
        if number is None or number <= 0:
            raise ValueError(f"bad {what} for axis {axis}")
        out[axis] = number
    return out


class ZaberStage(SerialDevice):
    """An XY stage on a Zaber ASCII port, through zaber-motion. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        x_device: int = 1,
        y_device: int = 2,
        axes: Mapping[str, tuple[int, int]] | None = None,
        microstep_um: float | Mapping[str, float] | None = None,
        fullstep_um: float | Mapping[str, float] | None = None,
        device_db: str | None = None,
        baudrate: int = 115200,
        timeout_s: float = 2.0,
        checksum: bool = True,
        poll_interval_s: float = 0.02,
        name: str = "zaber",
    ) -> None:
        """``axes`` maps "x" and "y" to (device, axis number) and overrides ``x_device`` and
        ``y_device`` (which mean axis 1 of that device). ``microstep_um`` (one value or one
        per axis; None: the device database's, else 0.1 µm) is checked against the device
        database and, given ``fullstep_um``, against the device's resolution."""
        mapping = dict(axes) if axes is not None else {"x": (x_device, 1), "y": (y_device, 1)}
        check_axis_names(mapping)
        self._configured = _per_axis(microstep_um, "microstep_um")
        self._fullstep = _per_axis(fullstep_um, "fullstep_um")
        self._axes: dict[str, _Axis] = {}
        for axis in AXES:
            device, number = mapping[axis]
            if not (1 <= device <= 99 and 1 <= number <= 9):
                raise ValueError(f"bad address for axis {axis}: device {device} axis {number}")
            step = self._configured[axis] or DEFAULT_MICROSTEP_UM
            self._axes[axis] = _Axis(axis, device, number, step)
        self.name = name
        self._timeout_s = float(timeout_s)
        self._poll_interval_s = float(poll_interval_s)
        self._device_db = device_db
        self._identity: dict[str, dict[str, object]] = {}
        self._database: dict[int, str] = {}  # device address -> product name (when found)
        self._referenced: dict[str, bool | None] = dict.fromkeys(AXES)
        self._limits: dict[str, tuple[int, int]] = {}
        # what this driver last set on each (device, trigger): saves identical re-sends
        self._triggers: dict[tuple[int, int], _TriggerState] = {}
        # digital output levels this driver knows, (device, output) -> 0/1, and where each
        # axis was found idle last (native) with no command that moves it sent since
        self._outputs: dict[tuple[int, int], int] = {}
        self._idle_at: dict[str, int] = {}
        self._url, self._baudrate, self._checksum = url, baudrate, checksum
        self._zm = _library()
        self._errors = self._error_table()
        self._connection: Any = None
        self._connection = self._do(f"open {url}", lambda: self._connect(url, baudrate))
        try:
            self._do("", lambda: self._configure(checksum))
            self._initialise()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start-up
    def _connect(self, url: str, baudrate: int) -> Any:
        connection_type = self._zm.ascii.Connection
        parts = urlsplit(url)
        if parts.scheme in ("tcp", "socket"):
            if not parts.hostname or parts.port is None:
                raise InstrumentError(f"cannot open {url!r}: expected tcp://host:port",
                                      device=self.name)
            return connection_type.open_tcp(parts.hostname, parts.port)
        if "://" in url:
            raise InstrumentError(
                f"cannot open {url!r}: zaber-motion opens a serial port name or "
                "tcp://host:port (serve an emulator with ZaberTcpServer)", device=self.name)
        return connection_type.open_serial_port(url, baud_rate=baudrate, direct=True)

    def _configure(self, checksum: bool) -> None:
        self._connection.default_request_timeout = max(1, round(self._timeout_s * 1000))
        self._connection.checksum_enabled = bool(checksum)
        for axis in self._axes.values():
            axis.handle = self._connection.get_device(axis.device).get_axis(axis.number)

    def _initialise(self) -> None:
        """Device database (unless offline), the microstep checks, then the limits."""
        if self._device_db != OFFLINE:
            for address in dict.fromkeys(a.device for a in self._axes.values()):
                self._look_up(address)
        for axis in self._axes.values():
            if axis.device not in self._database and self._configured[axis.name] is None:
                log.warning("%s: axis %s is not in the device database and no microstep_um "
                            "is configured: positions assume %g µm per microstep", self.name,
                            axis.name, DEFAULT_MICROSTEP_UM)
            self._check_microstep(axis)
        self.limits()

    def _look_up(self, address: int) -> None:
        """Identify one device through the device database; on success its microstep size
        (µm per native position unit) replaces the configured one, after the check."""
        zm = self._zm
        if self._device_db is not None:
            zm.Library.set_device_db_source(zm.DeviceDbSourceType.FILE, self._device_db)
        device = self._connection.get_device(address)
        try:
            self._do("identify", device.identify)
        except InstrumentError as exc:
            if not isinstance(exc.__cause__, zm.DeviceDbFailedException):
                raise
            log.info("%s: device %d not identified through the device database (%s); "
                     "positions use microstep_um", self.name, address, exc.__cause__)
            return
        self._database[address] = device.name
        for axis in self._axes.values():
            if axis.device != address:
                continue
            step = self._do("convert units", lambda a=axis: a.handle.settings.
                            convert_from_native_units("pos", 1.0, zm.Units.LENGTH_MICROMETRES))
            configured = self._configured[axis.name]
            if configured is not None and abs(configured - step) > 1e-6 * step:
                raise MicrostepMismatch(
                    f"microstep_um {configured:g} µm for axis {axis.name} contradicts the "
                    f"device: Zaber's device database gives {step:g} µm per microstep for "
                    f"device {address} ({device.name}) axis {axis.number}; set microstep_um "
                    f"= {step:g} or remove it", device=self.name, command="identify")
            axis.microstep_um = step

    def _check_microstep(self, axis: _Axis) -> None:
        full = self._fullstep[axis.name]
        if full is None:
            return
        try:
            resolution = round(self._do("get resolution",
                                        lambda: axis.handle.settings.get("resolution")))
        except CommandRejected:
            resolution = 0
        if resolution < 1:
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

    def identify(self) -> dict[str, dict[str, object]]:
        """Per axis: device address and axis number, device id, serial, firmware, peripheral
        id, resolution (None where the firmware rejects the setting), the microstep size in
        µm and where it came from; the product name when the device database knows it. Read
        once, then remembered."""
        if not self._identity:
            self._identity = {a.name: self._identify(a) for a in self._axes.values()}
        return {name: dict(entry) for name, entry in self._identity.items()}

    def _identify(self, axis: _Axis) -> dict[str, object]:
        settings = axis.handle.device.settings

        def number(read: Callable[[], float], what: str) -> int | None:
            try:
                return round(self._do(f"get {what}", read))
            except CommandRejected as exc:  # older firmware lacks some settings
                log.info("%s: get %s rejected (%s)", self.name, what, exc.reason)
                return None

        def text(name: str) -> str | None:
            try:
                return self._do(f"get {name}", lambda: settings.get_string(name))
            except CommandRejected:
                return None

        entry: dict[str, object] = {
            "device": axis.device, "axis": axis.number,
            "device_id": number(lambda: settings.get("deviceid"), "deviceid"),
            "serial": number(lambda: settings.get("system.serial"), "system.serial"),
            "firmware": text("version"),
            "peripheral_id": number(lambda: axis.handle.settings.get("peripheralid"),
                                    "peripheralid"),
            "resolution": number(lambda: axis.handle.settings.get("resolution"), "resolution"),
            "microstep_um": axis.microstep_um,
            "microstep_source": ("device database" if axis.device in self._database
                                 else "profile" if self._configured[axis.name] is not None
                                 else "default"),
        }
        if axis.device in self._database:
            entry["product"] = self._database[axis.device]
        return entry

    # ------------------------------------------------------------------ public API
    def home(self, axes: Sequence[str] = AXES, *, wait: bool = True,
             timeout_s: float = 120.0) -> None:
        """Home the named axes together (sets their reference position); by default wait."""
        chosen = [self._axis(a) for a in axes]
        self._forget_state()  # a homing may follow a reset or another program's settings
        for axis in chosen:
            self._do("home", lambda a=axis: a.handle.home(wait_until_idle=False))
            self._referenced[axis.name] = None
        if wait:
            self.wait_until_idle(timeout_s, axes=[a.name for a in chosen])

    def move_absolute(self, x_um: float | None = None, y_um: float | None = None) -> None:
        """Start moving to the given targets (µm); an axis given None stays where it is."""
        targets = {n: v for n, v in zip(AXES, (x_um, y_um), strict=True) if v is not None}
        natives = {n: self._checked_target(n, v, "move abs") for n, v in targets.items()}
        self._start_moves("move abs", natives, relative=False)

    def move_relative(self, dx_um: float = 0.0, dy_um: float = 0.0) -> None:
        """Start moving by the given offsets (µm). The resulting target is checked against the
        limits first, which needs one position read; nothing that moves is sent if it fails."""
        offsets = self._offsets((dx_um, dy_um), "move rel")
        natives = {}
        for name, offset in offsets.items():
            axis = self._axes[name]
            here = round(self._do("get pos", axis.handle.get_position))
            step = axis.to_native(offset)
            self._checked_target(name, axis.to_um(here) + offset, "move rel", native=here + step)
            natives[name] = step
        self._start_moves("move rel", natives, relative=True)

    def position(self) -> tuple[float, float]:
        """Current (x, y) position in µm as the device reports it."""
        x, y = (a.to_um(self._do("get pos", a.handle.get_position)) for a in self._axes.values())
        return x, y

    def wait_until_idle(self, timeout_s: float, *, axes: Sequence[str] = AXES) -> None:
        """Block until every named axis is IDLE, polling every ``poll_interval_s``; raise
        `DeviceFault` when an axis reports a fault and `InstrumentTimeout` after ``timeout_s``.

        The poll is ``get pos``, not the empty command: the same one round trip per axis and
        the same status and flag, plus the position, which `wait_for_position` returns."""
        self._wait(timeout_s, axes)

    def wait_for_position(self, timeout_s: float) -> tuple[float, float]:
        """`wait_until_idle` on both axes, then the (x, y) position in µm that the polls which
        found them IDLE carried: where a move ended, without a position query after it (one
        round trip per axis saved per measured move; `IdlePosition`)."""
        at = self._wait(timeout_s, AXES)
        x, y = (a.to_um(at[a.name]) for a in self._axes.values())
        return x, y

    def _wait(self, timeout_s: float, axes: Sequence[str]) -> dict[str, int]:
        """Poll until idle; per axis, the position (native) its IDLE reply carried."""
        deadline = time.monotonic() + timeout_s
        pending = [self._axis(a) for a in axes]
        at: dict[str, int] = {}
        while True:
            still = []
            for axis in pending:
                reply = self._do("get pos", lambda a=axis: a.handle.generic_command("get pos"))
                if reply.warning_flag in NOT_REFERENCED_FLAGS:
                    self._referenced[axis.name] = False
                if reply.warning_flag.startswith("F"):
                    self._forget_state()
                    raise DeviceFault(axis.name, self._warnings(axis) | {reply.warning_flag},
                                      device=self.name, command="get pos")
                if reply.status == "BUSY":
                    still.append(axis)
                else:
                    at[axis.name] = self._native(reply.data, "get pos")
                    self._idle_at[axis.name] = at[axis.name]
                    self._spend_triggers(axis, at[axis.name])
            pending = still
            if not pending:
                return at
            names = ", ".join(a.name for a in pending)
            self._sleep_until(deadline, f"axis {names} still BUSY", timeout_s, "get pos")

    def _native(self, data: str, command: str) -> int:
        try:
            return int(data)
        except ValueError:
            raise ProtocolError("position reply is not an integer", reply=data,
                                device=self.name, command=command) from None

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
            self._do("set maxspeed", lambda a=axis: a.handle.settings.set(
                "maxspeed", natives[a.name]))

    def speed(self) -> float:
        """The lower of the two axes' top speeds, in µm/s (what a diagonal move can rely on)."""
        return min(self._get(axis, "maxspeed") / SPEED_FACTOR * axis.microstep_um
                   for axis in self._axes.values())

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Read ``limit.min``/``limit.max`` of both axes: ((xmin, xmax), (ymin, ymax)) in µm."""
        for axis in self._axes.values():
            low, high = self._get(axis, "limit.min"), self._get(axis, "limit.max")
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
        self._forget_state()  # after a fault, what the device holds is asked again
        for axis in self._axes.values():
            self._do("warnings clear", axis.handle.warnings.clear_flags)
            self._referenced[axis.name] = None

    def stop(self) -> None:
        """Stop both axes (decelerating); tries both even if one fails. Safe from any thread."""
        errors = []
        for axis in self._axes.values():
            try:
                self._do("stop", lambda a=axis: a.handle.stop(wait_until_idle=False))
            except InstrumentError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def configure_distance_trigger(self, axis: str, distance_um: float, output: int = 1, *,
                                   trigger: int = 1, count: int | None = None) -> float:
        """Toggle digital output ``output`` of the axis's device every ``distance_um`` of travel
        (either direction), for fly scans. Returns the distance actually set (whole microsteps).

        Through zaber-motion's `Trigger` (firmware >= 7.06): disable, ``fire_when_distance_
        travelled``, ``on_fire`` action A ``io set do <output> t``, enable [count]. The output
        *toggles* at each firing, so an edge-triggered input sees one edge of each polarity in
        turn: a rising-edge-only trigger input fires every 2 x ``distance_um``. ``count``
        limits the number of firings (None = until disabled).
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
        handle = ax.handle.device.triggers.get_trigger(int(trigger))
        state = self._triggers.setdefault((ax.device, int(trigger)), _TriggerState())
        # disabled (by `disable_distance_trigger`) and nothing enabled it since: no second
        # disable; one round trip per fly line saved
        if not state.disabled:
            self._do("trigger disable", handle.disable)
            state.disabled = True
        self._do("trigger when dist",
                 lambda: handle.fire_when_distance_travelled(ax.number, native))
        # the action is the same every line: sent only when it differs from the one set here
        action = f"io set do {int(output)} t"
        if state.action != action:
            state.action = None  # unknown if the command fails
            self._do("trigger action", lambda: handle.on_fire(
                self._zm.ascii.TriggerAction.A, 0, action))
            state.action = action
        state.disabled = False  # enabled from the command on, even if its reply is lost
        key = (ax.device, int(output))
        level = self._outputs.pop(key, None)  # toggled from now on: unknown until spent
        state.arming = None  # a new enable: whatever was known of the last one is void
        self._do("trigger enable", lambda: handle.enable(int(count or 0)))
        at = self._idle_at.get(ax.name)
        if count is not None and at is not None:
            state.arming = _Arming(ax.name, at, native * int(count), int(output), level,
                                   int(count))
        return ax.to_um(native)

    def disable_distance_trigger(self, axis: str, *, trigger: int = 1) -> None:
        """Disable the trigger: what stops a trigger left armed, so it is sent unless this
        driver knows the trigger is disabled (it sent the disable, or the trigger fired its
        count: see `_spend_triggers`) and nothing failed since."""
        ax = self._axis(axis)
        handle = ax.handle.device.triggers.get_trigger(int(trigger))
        state = self._triggers.setdefault((ax.device, int(trigger)), _TriggerState())
        if state.disabled:
            return
        self._do("trigger disable", handle.disable)
        state.disabled = True

    def set_digital_output(self, axis: str, output: int, level: int) -> None:
        """Set digital output ``output`` of the axis's device to 0 or 1 (``io set do``), e.g.
        low before a distance trigger that toggles it, so its first firing is a rising edge."""
        if level not in (0, 1) or isinstance(level, bool):
            raise SettingOutOfRange("digital output level", level, "0 or 1", device=self.name,
                                    command="io set do")
        if not isinstance(output, numbers.Integral) or not 1 <= output <= 99:
            raise SettingOutOfRange("digital output", output, "integers 1 .. 99",
                                    device=self.name, command="io set do")
        ax = self._axis(axis)
        key = (ax.device, int(output))
        if self._outputs.get(key) == level:  # known to be there already: not sent again
            return
        action = self._zm.ascii.DigitalOutputAction
        io = ax.handle.device.io
        self._outputs.pop(key, None)  # unknown if the command fails
        self._do("io set do", lambda: io.set_digital_output(
            int(output), action.ON if level else action.OFF))
        self._outputs[key] = level

    def reconnect(self) -> None:
        """Open the port again with the same settings after the link dropped or the device
        stopped answering (`Reconnect`): the old connection is closed, the limits are read
        again, the reference state is asked before the next move and nothing remembered from
        before is trusted. The microstep sizes found at the first connect are kept. Raises
        an InstrumentError while the device is not back."""
        self.close()
        self._forget_state()
        self._referenced = dict.fromkeys(AXES)
        self._connection = self._do(f"open {self._url}",
                                    lambda: self._connect(self._url, self._baudrate))
        try:
            self._do("", lambda: self._configure(self._checksum))
            self.limits()
        except BaseException:
            self.close()
            raise
        log.info("%s: reconnected to %s", self.name, self._url)

    def close(self) -> None:
        """Close the connection (idempotent). Motion in progress is not stopped."""
        connection, self._connection = getattr(self, "_connection", None), None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a lost link
                log.debug("%s: error while closing", self.name, exc_info=True)

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

    def _start_moves(self, command: str, natives: Mapping[str, int], *, relative: bool) -> None:
        for name in natives:
            self._require_reference(self._axes[name])
        for name, native in natives.items():
            self._idle_at.pop(name, None)  # moving from the command on
            handle = self._axes[name].handle
            move = handle.move_relative if relative else handle.move_absolute
            self._do(f"{command} {native}", lambda m=move, n=native: m(n, wait_until_idle=False))

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
        flags = set(self._do("warnings", axis.handle.warnings.get_flags))
        if flags & NOT_REFERENCED_FLAGS:
            self._referenced[axis.name] = False
        return flags

    def _get(self, axis: _Axis, setting: str) -> int:
        value = self._do(f"get {setting}", lambda: axis.handle.settings.get(setting))
        if value != round(value):
            raise ProtocolError(f"{setting} reply is not an integer", reply=str(value),
                                device=self.name, command=f"get {setting}")
        return round(value)

    def _forget_state(self) -> None:
        """Trust nothing remembered of the device's trigger set-up, outputs and positions."""
        self._triggers.clear()
        self._outputs.clear()
        self._idle_at.clear()

    def _spend_triggers(self, axis: _Axis, native: int) -> None:
        """An axis found idle at ``native``: each distance trigger armed on it with a count,
        at a known position, has fired its count once the axis is ``count x distance`` or
        more away from there (the distance travelled is at least that), so it is disabled
        (a trigger with a count disables itself after that many firings [V]) and its output
        was toggled ``count`` times from the level it had at the enable."""
        for (device, _), state in self._triggers.items():
            arming = state.arming
            if (device != axis.device or state.disabled or arming is None
                    or arming.axis != axis.name or abs(native - arming.armed_at) < arming.travel):
                continue
            state.disabled, state.arming = True, None
            if arming.level is not None:
                self._outputs[(device, arming.output)] = arming.level ^ (arming.toggles & 1)

    def _error_table(self) -> list[tuple[type, Callable[[Any, str], InstrumentError]]]:
        """zaber-motion's exceptions, most specific first, and the typed error each becomes."""
        zm = self._zm

        def rejected(exc: Any, command: str) -> InstrumentError:
            details = exc.details
            return CommandRejected(details.response_data, device=self.name,
                                   command=details.command or command)

        def fault(exc: Any, command: str) -> InstrumentError:
            details = exc.details
            names = [a.name for a in self._axes.values()
                     if (a.device, a.number) == (details.device, details.axis)]
            return DeviceFault(names[0] if names else f"{details.device} {details.axis}",
                               details.warnings, device=self.name, command=command)

        def simple(kind: type[InstrumentError], text: str) -> Callable[[Any, str],
                                                                        InstrumentError]:
            return lambda exc, command: kind(f"{text}: {exc}", device=self.name,
                                             command=command)

        return [
            (zm.CommandFailedException, rejected),
            (zm.MovementFailedException, fault),
            (zm.RequestTimeoutException,
             lambda exc, command: InstrumentTimeout(f"no reply within {self._timeout_s:g} s",
                                                    device=self.name, command=command)),
            (zm.ConnectionFailedException, simple(InstrumentError, "cannot open the port")),
            (zm.ConnectionClosedException, simple(InstrumentError, "link lost")),
            (zm.InvalidPacketException, simple(ProtocolError, "malformed reply")),
            (zm.InvalidResponseException, simple(ProtocolError, "unexpected reply")),
            (zm.MotionLibException, simple(InstrumentError, "zaber-motion failed")),
        ]

    def _do(self, command: str, action: Callable[[], _T]) -> _T:
        """One library call, its failures as typed errors. ``AGAIN`` (the device could not
        take the command now) is retried up to three times: zaber-motion 10.3 does not [T]."""
        for attempt in range(_AGAIN_RETRIES + 1):
            try:
                return action()
            except InstrumentError:
                self._forget_state()  # after any failure, what was set is asked again
                raise
            except Exception as exc:
                self._forget_state()
                for kind, convert in self._errors:
                    if isinstance(exc, kind):
                        error = convert(exc, command)
                        break
                else:
                    raise
                if (isinstance(error, CommandRejected) and error.reason == "AGAIN"
                        and attempt < _AGAIN_RETRIES):
                    log.info("%s: %s answered AGAIN; resending", self.name, error.command)
                    time.sleep(_AGAIN_BACKOFF_S * (attempt + 1))
                    continue
                raise error from exc
        raise AssertionError("unreachable")


__all__ = [
    "AXES",
    "DEFAULT_MICROSTEP_UM",
    "FLAGS",
    "OFFLINE",
    "REJECTION_REASONS",
    "SPEED_FACTOR",
    "CommandRejected",
    "DeviceFault",
    "MicrostepMismatch",
    "NotReferenced",
    "ZaberStage",
    "flag_meaning",
]
