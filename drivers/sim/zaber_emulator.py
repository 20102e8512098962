"""Wire-level emulator of Zaber ASCII stages, so tests and the simulated bench run the real
driver code (`plumelink.drivers.zaber`) without hardware.

`ZaberEmulator` is a state machine for one or more daisy-chained devices with one or more axes
each: ``handle(line) -> [reply lines]`` answers ``/<device> <axis> [<id>] <command>`` exactly as
``@<dd> <axis> [<id>] <OK|RJ> <IDLE|BUSY> <flag> <data>`` + CR LF. It models constant-speed
motion on an injectable clock (BUSY until the move time has elapsed, the position interpolated),
travel limits, homing (``WR`` until homed), the warning flags, message ids, optional LRC
checksums, ``!`` alerts (``set comm.alert 1``) and distance triggers that toggle a digital
output and record where each firing happened (`TriggerEvent`), for fly scans. It answers the
identity settings zaber-motion reads when it identifies a device (``system.serial``,
``deviceid``, ``version.build``, per axis ``resolution`` and ``peripheralid``), so the vendor's
library drives it unchanged; sources in ``docs/protocol_notes.md``.

Reachable three ways through the shared transport `serial_link`, all serving any `Peer` (this
emulator or a `ScriptedPeer`):

* `ZaberPtyServer`: a pseudo-terminal; the driver opens ``server.url`` (``/dev/pts/N``) with
  real pyserial;
* `ZaberTcpServer`: a localhost socket, ``socket://127.0.0.1:<port>``;
* the pyserial URL ``zabersim://<name>``: an in-process port without threads (name a peer with
  `register_peer`), which suits simulated time with `ManualClock` in the emulator's own tests.

The driver stands on zaber-motion, which opens serial ports and TCP sockets only, so the
simulated bench serves the emulator with `ZaberTcpServer` and the driver opens
``tcp://127.0.0.1:<port>``.

Faults (`Fault`) apply to the next replies: garbage, no reply, truncated, a forced rejection
(e.g. ``AGAIN``), a wrong message id, extra lines before the reply, disconnect; `inject_stall`
makes the next move on an axis stop part-way with the ``FS`` fault. Choices where the manual is
silent or not at hand are marked [I] (our inference).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from ..zaber import FLAGS, SPEED_FACTOR
from .events import Clocked, LineRecord, ServesEmulator, Subscribers
from .motion import ManualClock, Motion, MovingAxis
from .serial_link import (
    EmulatorDisconnect,
    FaultAction,
    FaultQueue,
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

TRIGGERS_PER_DEVICE = 6  # [M] X-MCB2 has six
DEVICE_ID = 30222  # ``get deviceid`` [I] not checked against Zaber's device database
SERIAL_BASE = 12300  # ``get system.serial`` = SERIAL_BASE + address [I]
VERSION_BUILD = 18000  # ``get version.build`` [I]
DIGITAL_OUTPUTS = 4
_PRIORITY = {flag: rank for rank, flag in enumerate(FLAGS)}
_STICKY = frozenset({"WR", "WH"})  # cleared by homing, not by "warnings clear" [M]
_INT = re.compile(r"[+-]?\d+")
_MAX_WAIT_S = 0.5  # longest a server sleeps without I/O or a timed event
_GARBAGE = b"\xfe\x80@garbage?\r\n"  # a GARBAGE fault's default reply


def lrc(text: str) -> str:
    """Zaber ASCII checksum: two's complement of the byte sum of ``text`` (the message between
    the leading ``/`` or ``@`` and the ``:``), as two upper-case hex digits [V: the published
    example ``/01 tools echo:8F``; zaber-motion verifies it on every reply, see the tests]."""
    return f"{-sum(text.encode('ascii')) & 0xFF:02X}"


class Fault(Enum):
    """Faults injected with `ZaberEmulator.inject_fault`; each applies to the next reply. The
    first four are `serial_link.Fault`'s shared kinds (same values)."""

    GARBAGE = "garbage"  # reply replaced by the payload (default: non-ASCII bytes + CR LF)
    NO_REPLY = "no_reply"  # reply dropped
    TRUNCATED = "truncated"  # reply cut to ``keep`` bytes (default half), CR LF kept
    REJECT = "reject"  # command rejected with the payload reason word (default AGAIN)
    WRONG_ID = "wrong_id"  # reply carries another message id (a stale reply)
    EXTRA_LINES = "extra_lines"  # payload bytes (info lines, alerts ...) sent before the reply
    DISCONNECT = "disconnect"  # the transport drops the link on the next line


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class AxisConfig:
    """Power-up state of one axis, in device units (microsteps; speed x 1.6384)."""

    limit_min: int = 0
    limit_max: int = 1_000_000
    maxspeed: int = 163_840  # 100 000 microsteps/s
    position: int = 500_000  # where the carriage really is at power-up
    home_position: int = 0  # position after homing
    referenced: bool = False  # False: WR set until homed
    resolution: int = 64  # microsteps per full step (``get resolution``) [M]
    peripheralid: int = 0  # 0: an integrated stage, no separate peripheral [M]


@dataclass(frozen=True)
class TriggerEvent:
    """One distance-trigger firing: clock time, where the axis was, the output level after."""

    time: float
    device: int
    trigger: int
    axis: int
    position: int
    output: int
    level: int


@dataclass
class _Motion(Motion):
    """Speed in microsteps per second; a stalled move stops after ``stall_after``."""

    odometer0: float = 0.0
    homing: bool = False
    stall_after: float | None = None

    @property
    def length(self) -> float:
        full = abs(self.target - self.start)
        return full if self.stall_after is None else min(full, self.stall_after)

    def position_at(self, t: float) -> float:
        return self.start + self.direction * self.travel_at(t)


class _Axis(MovingAxis[_Motion]):
    def __init__(self, config: AxisConfig) -> None:
        self.limit_min = config.limit_min
        self.limit_max = config.limit_max
        self.maxspeed = config.maxspeed
        self.accel = 2000
        self.home_position = config.home_position
        self.resolution = config.resolution
        self.peripheralid = config.peripheralid
        self.position = float(config.position)
        self.flags: set[str] = set() if config.referenced else {"WR"}
        self.motion: _Motion | None = None
        self.odometer = 0.0  # total distance travelled, either direction
        self.stall_fraction: float | None = None

    def odometer_at(self, t: float) -> float:
        return self.odometer + (self.motion.travel_at(t) if self.motion else 0.0)

    def halt(self, t: float, notice: str | None = "NI") -> None:
        """Freeze the axis where it is at ``t`` (stop is instantaneous here [I])."""
        if self.motion is not None:
            self.odometer = self.odometer_at(t)
            super().halt(t)
            if notice:
                self.flags.add(notice)

    def flag(self) -> str:
        return _highest(self.flags)


def _highest(flags: Iterable[str]) -> str:
    ranked = sorted(flags, key=lambda f: (_PRIORITY.get(f, len(_PRIORITY)), f))
    return ranked[0] if ranked else "--"


@dataclass
class _Trigger:
    axis: int = 0  # 0: no condition set
    distance: int = 0
    actions: dict[str, tuple[int, str]] = field(default_factory=dict)  # a|b -> (output, 0|1|t)
    enabled: bool = False
    remaining: int | None = None
    next_fire: float = math.inf  # odometer reading of the next firing
    fired: int = 0


class _Device:
    def __init__(self, address: int, axes: Sequence[AxisConfig]) -> None:
        self.address = address
        self.serial = SERIAL_BASE + address
        self.axes = [_Axis(c) for c in axes]
        self.triggers = {n: _Trigger() for n in range(1, TRIGGERS_PER_DEVICE + 1)}
        self.outputs = [0] * DIGITAL_OUTPUTS
        self.alerts = False

    def chosen(self, axis: int) -> list[_Axis]:
        return self.axes if axis == 0 else [self.axes[axis - 1]]


def _number(text: str, low: float = -(2**31), high: float = 2**31 - 1) -> int:
    if not _INT.fullmatch(text) or not low <= int(text) <= high:
        raise _Rejected("BADDATA")
    return int(text)


def _wrong_id(detail: object, replies: list[bytes]) -> list[bytes]:
    parts = replies[0].split(b" ")
    if len(parts) > 2 and parts[2].isdigit():
        parts[2] = b"%02d" % ((int(parts[2]) + 1) % 100)
    return [b" ".join(parts), *replies[1:]]


def _extra_lines(detail: object, replies: list[bytes]) -> list[bytes]:
    extra = detail.encode() if isinstance(detail, str) else detail
    return [extra if isinstance(extra, bytes) else b"#01 0 extra info\r\n", *replies]


#: Reply faults of Zaber's own; REJECT is taken by the command that it refuses.
_OWN_FAULTS: dict[Enum, FaultAction] = {Fault.WRONG_ID: _wrong_id, Fault.EXTRA_LINES: _extra_lines}


class ZaberEmulator(Clocked, LineRecord):
    """Zaber ASCII devices; thread-safe, time from ``clock`` (default `time.monotonic`).

    ``devices`` maps each address to its axes' configs; the default is two single-axis devices
    (1 = x, 2 = y). ``reply_checksums`` appends ``:XX`` to every reply and alert.
    """

    def __init__(
        self,
        devices: Mapping[int, Sequence[AxisConfig]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        version: str = "7.33",
        device_id: int = DEVICE_ID,
        version_build: int = VERSION_BUILD,
        reply_checksums: bool = False,
        history: int = 100_000,
    ) -> None:
        if devices is None:
            devices = {1: [AxisConfig()], 2: [AxisConfig()]}
        self._devices = {a: _Device(a, axes) for a, axes in sorted(devices.items())}
        self._clock = clock
        self.version = version
        self.device_id = device_id
        self.version_build = version_build
        self.reply_checksums = reply_checksums
        self._lock = threading.RLock()
        self._faults = FaultQueue(garbage=_GARBAGE)
        self._unsolicited: deque[bytes] = deque()
        self._events: deque[TriggerEvent] = deque(maxlen=history)
        self._subscribers: Subscribers[TriggerEvent] = Subscribers(
            self._lock, log, "Zaber emulator: trigger callback failed")
        self._transcript: deque[tuple[bytes, tuple[bytes, ...]]] = deque(maxlen=history)
        self._received = bytearray()
        self._commands = {
            "home": self._home, "move": self._move, "stop": self._stop, "estop": self._stop,
            "get": self._get, "set": self._set, "warnings": self._warnings,
            "trigger": self._trigger, "io": self._io,
        }

    @classmethod
    def single_controller(cls, axes: int = 2, config: AxisConfig | None = None,
                          **kwargs: object) -> ZaberEmulator:
        """One device (address 1) with ``axes`` axes, e.g. an X-MCC2 driving an XY stage."""
        return cls({1: [config or AxisConfig() for _ in range(axes)]}, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ protocol
    def handle(self, line: bytes) -> list[bytes]:
        """Execute one command line (terminator removed); return the lines to send, alerts
        that became due first."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._faults.take_disconnect():
                self._transcript.append((bytes(line), ()))
                raise EmulatorDisconnect("fault injected: disconnect")
            replies = self._faults.apply(self._respond(bytes(line), now), _OWN_FAULTS)
            out = [*self._unsolicited, *replies]
            self._unsolicited.clear()
            self._transcript.append((bytes(line), tuple(out)))
            log.debug("Zaber emulator %r -> %r", line, out)
        self._dispatch()
        return out

    def _respond(self, line: bytes, now: float) -> list[bytes]:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return []  # [I] a real device drops undecodable input
        start = text.find("/")
        if start < 0:
            return []  # input before "/" is ignored
        body = text[start + 1:].strip()
        if ":" in body:
            body, _, given = body.rpartition(":")
            if given.upper() != lrc(body):
                log.info("Zaber emulator: bad checksum, command dropped: %r", line)
                return []  # [I] the device drops a command whose checksum is wrong
        words = body.split()
        address = axis = 0
        msg_id: str | None = None
        if words and words[0].isdigit():
            address = int(words.pop(0))
            if words and words[0].isdigit():
                axis = int(words.pop(0))
                if words and words[0].isdigit():
                    msg_id = words.pop(0)
        targets = list(self._devices.values()) if address == 0 else (
            [self._devices[address]] if address in self._devices else [])
        return [self._reply(device, axis, msg_id, words, now) for device in targets]

    def _reply(self, device: _Device, axis: int, msg_id: str | None, words: list[str],
               now: float) -> bytes:
        ok, data = True, "0"
        try:
            if msg_id is not None and int(msg_id) > 99:
                msg_id = None
                raise _Rejected("BADMESSAGEID")  # [I] answered without an id
            if (forced := self._faults.take(Fault.REJECT)) is not None:
                raise _Rejected(str(forced.detail or "AGAIN"))
            if axis > len(device.axes):
                raise _Rejected("BADAXIS")
            if words:
                handler = self._commands.get(words[0])
                if handler is None:
                    raise _Rejected("BADCOMMAND")
                data = handler(device, axis, words[1:], now)
        except _Rejected as rejected:
            ok, data = False, rejected.reason
        chosen = device.chosen(axis) if axis <= len(device.axes) else []
        busy = any(a.motion is not None for a in chosen)
        flag = _highest(f for a in chosen for f in a.flags)
        ident = f"{msg_id} " if msg_id is not None else ""
        return self._frame(f"@{device.address:02d} {axis} {ident}{'OK' if ok else 'RJ'} "
                           f"{'BUSY' if busy else 'IDLE'} {flag} {data}")

    def _frame(self, text: str) -> bytes:
        if self.reply_checksums:
            text += f":{lrc(text[1:])}"
        return f"{text}\r\n".encode("ascii")

    # ------------------------------------------------------------------ commands
    def _home(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if args:
            raise _Rejected("BADDATA")
        for ax in device.chosen(axis):
            self._start(ax, ax.home_position, ax.maxspeed, now, homing=True)
        return "0"

    def _move(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if not args or args[0] not in ("abs", "rel", "vel"):
            raise _Rejected("BADCOMMAND")
        if len(args) != 2:
            raise _Rejected("BADDATA")
        value = _number(args[1])
        plans = []
        for ax in device.chosen(axis):
            if "WR" in ax.flags and args[0] != "vel":
                raise _Rejected("BADDATA")  # [I] no absolute frame before homing
            if args[0] == "vel":
                target, speed = (ax.limit_max if value > 0 else ax.limit_min), abs(value)
            else:
                here = round(ax.position_at(now))
                target, speed = (value if args[0] == "abs" else here + value), ax.maxspeed
                if not ax.limit_min <= target <= ax.limit_max:
                    raise _Rejected("BADDATA")
            plans.append((ax, target, speed))
        for ax, target, speed in plans:
            if speed == 0:
                ax.halt(now)
            else:
                self._start(ax, target, speed, now)
        return "0"

    def _start(self, ax: _Axis, target: float, speed: float, now: float, *,
               homing: bool = False) -> None:
        ax.halt(now)
        start = ax.position
        stall = ax.stall_fraction
        ax.stall_fraction = None
        if target == start and not homing:
            return
        ax.motion = _Motion(start, float(target), now, speed / SPEED_FACTOR, ax.odometer,
                            homing=homing,
                            stall_after=None if stall is None else stall * abs(target - start))

    def _stop(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if args:
            raise _Rejected("BADDATA")
        for ax in device.chosen(axis):
            ax.halt(now)
        return "0"

    _AXIS_SETTINGS = ("pos", "encoder.pos", "maxspeed", "accel", "limit.min", "limit.max",
                      "resolution", "peripheralid")

    def _get(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if len(args) != 1:
            raise _Rejected("BADDATA")
        name = args[0]
        if name in self._AXIS_SETTINGS:
            return " ".join(str(self._axis_setting(ax, name, now)) for ax in device.chosen(axis))
        # What zaber-motion's detect_devices asks of each device (seen in its traffic): the
        # comm.* and get.settings.max limits are left BADCOMMAND, as on firmware that lacks
        # them, so the library keeps one packet and one setting per command [I].
        device_settings = {"comm.alert": int(device.alerts), "version": self.version,
                           "version.build": self.version_build,
                           "system.axiscount": len(device.axes), "deviceid": self.device_id,
                           "system.serial": device.serial, "device.hw.modified": 0}
        if name not in device_settings:
            raise _Rejected("BADCOMMAND")
        if axis:
            raise _Rejected("DEVICEONLY")  # [I]
        return str(device_settings[name])

    @staticmethod
    def _axis_setting(ax: _Axis, name: str, now: float) -> int:
        if name in ("pos", "encoder.pos"):
            return round(ax.position_at(now))
        return int(getattr(ax, name.replace(".", "_")))

    def _set(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if len(args) != 2:
            raise _Rejected("BADDATA")
        name, value = args[0], _number(args[1])
        if name == "comm.alert":
            if axis:
                raise _Rejected("DEVICEONLY")
            if value not in (0, 1):
                raise _Rejected("BADDATA")
            device.alerts = bool(value)
            return "0"
        if name not in ("pos", "maxspeed", "accel", "limit.min", "limit.max"):
            raise _Rejected("BADCOMMAND" if name not in self._AXIS_SETTINGS else "BADDATA")
        for ax in device.chosen(axis):
            if name in ("pos", "limit.min", "limit.max") and ax.motion is not None:
                raise _Rejected("STATUSBUSY")  # [I]
            low = ax.limit_min if name == "limit.max" else -(2**31)
            high = ax.limit_max if name == "limit.min" else 2**31 - 1
            if name in ("maxspeed", "accel"):
                low = 1
            if not low <= value <= high:
                raise _Rejected("BADDATA")
        for ax in device.chosen(axis):
            if name == "pos":
                ax.position = float(value)
            else:
                setattr(ax, name.replace(".", "_"), value)
        return "0"

    def _warnings(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if args not in ([], ["clear"]):
            raise _Rejected("BADCOMMAND")
        chosen = device.chosen(axis)
        flags = sorted({f for ax in chosen for f in ax.flags},
                       key=lambda f: (_PRIORITY.get(f, len(_PRIORITY)), f))
        if args:  # the list before clearing; the reply's flag field shows the state after [I]
            for ax in chosen:
                ax.flags &= _STICKY
        return " ".join([f"{len(flags):02d}", *flags])

    def _trigger(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if axis:
            raise _Rejected("DEVICEONLY")
        if len(args) < 2:
            raise _Rejected("BADCOMMAND")
        trig = device.triggers.get(_number(args[0]))
        if trig is None:
            raise _Rejected("BADDATA")
        verb, rest = args[1], args[2:]
        if verb == "when" and len(rest) == 3 and rest[1] == "dist":
            trig.axis = _number(rest[0], 1, len(device.axes))
            trig.distance = _number(rest[2], 1)
            if trig.enabled:
                trig.next_fire = device.axes[trig.axis - 1].odometer_at(now) + trig.distance
        elif verb == "action" and len(rest) == 6 and rest[0] in ("a", "b") and rest[1:4] == [
                "io", "set", "do"]:
            if rest[5] not in ("0", "1", "t"):
                raise _Rejected("BADDATA")
            trig.actions[rest[0]] = (_number(rest[4], 1, DIGITAL_OUTPUTS), rest[5])
        elif verb == "enable" and len(rest) <= 1:
            if not trig.axis:
                raise _Rejected("BADDATA")  # [I] no condition to enable
            trig.remaining = _number(rest[0], 1) if rest else None
            trig.enabled = True
            trig.next_fire = device.axes[trig.axis - 1].odometer_at(now) + trig.distance
        elif verb == "disable" and not rest:
            trig.enabled = False
        else:
            raise _Rejected("BADCOMMAND")
        return "0"

    def _io(self, device: _Device, axis: int, args: list[str], now: float) -> str:
        if axis:
            raise _Rejected("DEVICEONLY")
        if len(args) == 4 and args[:2] == ["set", "do"] and args[3] in ("0", "1"):
            device.outputs[_number(args[2], 1, DIGITAL_OUTPUTS) - 1] = int(args[3])
            return "0"
        if len(args) == 3 and args[:2] == ["get", "do"]:
            return str(device.outputs[_number(args[2], 1, DIGITAL_OUTPUTS) - 1])
        raise _Rejected("BADCOMMAND")

    # ------------------------------------------------------------------ time
    def _advance(self, now: float) -> None:
        """Fire triggers and finish moves due up to ``now``, in time order per axis."""
        fired: list[TriggerEvent] = []
        for device in self._devices.values():
            for number, ax in enumerate(device.axes, start=1):
                if ax.motion is None:
                    continue
                fired += self._fire_triggers(device, number, ax, min(now, ax.motion.end_time))
                if now >= ax.motion.end_time:
                    self._finish(device, number, ax)
        fired.sort(key=lambda e: e.time)
        self._events.extend(fired)
        self._subscribers.post(fired)

    def _fire_triggers(self, device: _Device, number: int, ax: _Axis,
                       t: float) -> list[TriggerEvent]:
        motion = ax.motion
        assert motion is not None
        events = []
        for trig_number, trig in device.triggers.items():
            while (trig.enabled and trig.axis == number
                   and (travel := trig.next_fire - motion.odometer0) <= motion.length
                   and motion.time_at(travel) <= t):
                level = 0
                for output, value in trig.actions.values():
                    old = device.outputs[output - 1]
                    device.outputs[output - 1] = 1 - old if value == "t" else int(value)
                level_output = next(iter(trig.actions.values()), (0, ""))[0]
                if level_output:
                    level = device.outputs[level_output - 1]
                events.append(TriggerEvent(
                    time=motion.time_at(travel), device=device.address,
                    trigger=trig_number, axis=number,
                    position=round(motion.start + motion.direction * travel),
                    output=level_output, level=level))
                trig.fired += 1
                trig.next_fire += trig.distance
                if trig.remaining is not None:
                    trig.remaining -= 1
                    if trig.remaining <= 0:
                        trig.enabled = False
        return events

    def _finish(self, device: _Device, number: int, ax: _Axis) -> None:
        motion = ax.motion
        assert motion is not None
        ax.halt(motion.end_time, notice=None)
        if motion.stall_after is not None and motion.stall_after < abs(motion.target -
                                                                       motion.start):
            ax.flags.add("FS")
        elif motion.homing:
            ax.flags -= _STICKY
        if device.alerts:
            self._unsolicited.append(self._frame(f"!{device.address:02d} {number} IDLE "
                                                 f"{ax.flag()}"))

    def _dispatch(self) -> None:
        """Hand new trigger events to subscribers in order, outside the state lock."""
        self._subscribers.dispatch()

    # ------------------------------------------------------------------ bench and tests

    def next_event_time(self) -> float | None:
        """Clock time of the next move end or trigger firing, if any."""
        with self._lock:
            times = []
            for device in self._devices.values():
                for number, ax in enumerate(device.axes, start=1):
                    motion = ax.motion
                    if motion is None:
                        continue
                    times.append(motion.end_time)
                    times += [motion.time_at(trig.next_fire - motion.odometer0)
                              for trig in device.triggers.values()
                              if trig.enabled and trig.axis == number]
            return min(times) if times else None

    def take_unsolicited(self) -> list[bytes]:
        """Alerts that became due outside a command exchange (transports send them)."""
        with self._lock:
            out = list(self._unsolicited)
            self._unsolicited.clear()
            return out

    def inject_fault(self, fault: Fault, payload: bytes | str | None = None, *,
                     keep: int | None = None, times: int = 1) -> None:
        """Queue ``times`` copies of a fault. GARBAGE and EXTRA_LINES send ``payload`` bytes,
        REJECT uses ``payload`` as the reason word, TRUNCATED keeps ``keep`` bytes."""
        with self._lock:
            self._faults.push(fault, keep if fault is Fault.TRUNCATED else payload, times)

    def inject_stall(self, device: int, axis: int, fraction: float = 0.5) -> None:
        """The next move of this axis stalls after ``fraction`` of its length: it stops there,
        IDLE, with the ``FS`` fault flag."""
        with self._lock:
            self._axis(device, axis).stall_fraction = fraction

    def set_flags(self, device: int, axis: int, *flags: str) -> None:
        """Raise warning flags as if the hardware did (e.g. ``"FQ"``)."""
        with self._lock:
            self._axis(device, axis).flags.update(flags)

    def flags(self, device: int, axis: int) -> frozenset[str]:
        with self._lock:
            return frozenset(self._axis(device, axis).flags)

    def position(self, device: int, axis: int) -> float:
        """Where the axis is now (microsteps, not rounded)."""
        with self._lock:
            return self._axis(device, axis).position_at(self._clock())

    def position_at(self, device: int, axis: int, t: float) -> float:
        """Where the axis is or was at clock time ``t`` (microsteps), also during a recent
        move that has ended since."""
        with self._lock:
            return self._axis(device, axis).position_was(t)

    def busy(self, device: int, axis: int) -> bool:
        with self._lock:
            self._advance(self._clock())
            return self._axis(device, axis).moving

    def speed(self, device: int, axis: int) -> int:
        """The axis's maxspeed setting (device units)."""
        with self._lock:
            return self._axis(device, axis).maxspeed

    def output(self, device: int, channel: int) -> int:
        with self._lock:
            return self._devices[device].outputs[channel - 1]

    def on_trigger(self, callback: Callable[[TriggerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every trigger firing; returns an unsubscribe function."""
        return self._subscribers.subscribe(callback)

    @property
    def trigger_events(self) -> list[TriggerEvent]:
        """Every trigger firing so far (after bringing the emulator up to the clock)."""
        self.update()
        with self._lock:
            return list(self._events)

    def clear_trigger_events(self) -> None:
        with self._lock:
            self._events.clear()

    def _axis(self, device: int, axis: int) -> _Axis:
        return self._devices[device].axes[axis - 1]


# ---------------------------------------------------------------------- transports
class ZaberPtyServer(ServesEmulator[ZaberEmulator], PtyServer[Peer]):
    """The peer behind a pseudo-terminal: open ``.url`` (``/dev/pts/N``) with real pyserial.

    Baud rate and framing are ignored on a pty. A DISCONNECT fault closes the master side, so
    the client's next read or write fails like an unplugged cable.
    """

    _emulator_type = ZaberEmulator

    def __init__(self, peer: Peer | None = None) -> None:
        super().__init__(peer if peer is not None else ZaberEmulator(),
                         name="zaber-pty-emulator", max_wait_s=_MAX_WAIT_S)


class ZaberTcpServer(ServesEmulator[ZaberEmulator], TcpServer[Peer]):
    """The peer on a localhost TCP socket (``.url`` = ``socket://127.0.0.1:<port>``), like a
    serial-to-Ethernet adapter or a controller with a TCP port."""

    _emulator_type = ZaberEmulator

    def __init__(self, peer: Peer | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(peer if peer is not None else ZaberEmulator(), host=host, port=port,
                         name="zaber-tcp-emulator", max_wait_s=_MAX_WAIT_S)


# ---------------------------------------------------------------------- pyserial URL
URL_SCHEME = "zabersim"
EmulatorSerial = PeerSerial  # the in-process port behind zabersim:// URLs
register_scheme(URL_SCHEME, factory=ZaberEmulator)


def register_peer(name: str, peer: Peer) -> str:
    """Make ``peer`` reachable as ``zabersim://<name>``; returns that URL."""
    return register_url(URL_SCHEME, name, peer)


def unregister_peer(name: str) -> None:
    unregister_url(URL_SCHEME, name)


__all__ = [
    "DIGITAL_OUTPUTS",
    "TRIGGERS_PER_DEVICE",
    "AxisConfig",
    "EmulatorDisconnect",
    "EmulatorSerial",
    "Fault",
    "ManualClock",
    "Peer",
    "ScriptedPeer",
    "TriggerEvent",
    "ZaberEmulator",
    "ZaberPtyServer",
    "ZaberTcpServer",
    "lrc",
    "register_peer",
    "unregister_peer",
]
