"""Driver for the Stanford Research Systems DG645 digital delay generator.

Speaks the DG645 ASCII protocol (``reference/instruments.md`` section 2) over a pyvisa message
resource: the LAN raw socket (``TCPIP::<host>::5025::SOCKET``), RS-232 (``ASRL<port>::INSTR``,
9600 8N1 RTS/CTS) or GPIB, through pyvisa-py (``"@py"``) or pyvisa-sim (``"<file>.yaml@sim"``).

How it talks:

* every setting is one row of the declaration table below (command, range, unit, resolution);
  values are checked and rounded to the instrument resolution *before* anything is sent, and
  written as exact fixed-point text (no float noise on the wire);
* set commands get no reply, so each group of sets goes out as one ``;``-joined line ending in
  ``LERR?``, and ``LERR?`` is repeated until it answers 0; a non-zero code raises
  `InstrumentError` with its meaning;
* replies are parsed strictly: a reply that is not CR LF terminated ASCII, has the wrong shape,
  or lies outside the documented range raises `ProtocolError` carrying the raw text; no reply
  within the transport timeout raises `InstrumentTimeout`;
* one lock serialises each command/reply exchange, so `disable_outputs` may be called from
  another thread (GUI stop, Ctrl-C handler) while `wait_end_of_burst` is polling.

What ``disable_outputs`` means on a DG645: there is no output-enable command. The driver sends
``TSRC 5;INHB 5``. Single-shot trigger source means no delay cycle starts unless software sends
``*TRG``, which stops a free-running internal, line or external trigger at once. ``INHB 5``
inhibits outputs AB, CD, EF and GH [M: through the inhibit input, so wire the bench interlock to
it]. Whether a burst that is already running stops is not documented; the emulator models the
inhibit as gating the remaining cycles. `enable_outputs` clears the inhibit (``INHB 0``) and
leaves the trigger source alone.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from types import TracebackType
from typing import TypeVar

import pyvisa
from pyvisa import constants as visa_constants
from pyvisa.errors import VisaIOError

from .errors import InstrumentError, InstrumentTimeout, ProtocolError, SettingOutOfRange
from .protocols import BurstStatus

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Delay channels in DLAY index order (0 = T0 ... 9 = H).
CHANNELS: tuple[str, ...] = ("T0", "T1", "A", "B", "C", "D", "E", "F", "G", "H")
#: Outputs in LAMP/LOFF/LPOL index order.
OUTPUTS: tuple[str, ...] = ("T0", "AB", "CD", "EF", "GH")


class TriggerSource(IntEnum):
    """TSRC values."""

    INTERNAL = 0
    EXTERNAL_RISING = 1
    EXTERNAL_FALLING = 2
    SINGLE_SHOT_EXTERNAL_RISING = 3
    SINGLE_SHOT_EXTERNAL_FALLING = 4
    SINGLE_SHOT = 5
    LINE = 6


class Polarity(IntEnum):
    """LPOL values."""

    NEGATIVE = 0
    POSITIVE = 1


class StatusFlag(IntFlag):
    """INSR bits; latched by the instrument and cleared when read."""

    TRIG = 1 << 0
    RATE = 1 << 1  # a trigger arrived while a delay or burst was running: it was ignored
    END_OF_DELAY = 1 << 2
    END_OF_BURST = 1 << 3
    INHIBIT = 1 << 4
    ABORT_DELAY = 1 << 5
    PLL_UNLOCK = 1 << 6
    RB_UNLOCK = 1 << 7


#: LERR? codes and their meaning (instruments.md, "Error codes").
ERROR_MEANINGS: dict[int, str] = {
    0: "no error",
    10: "illegal value",
    11: "illegal mode",
    12: "illegal delay",
    13: "illegal link",
    14: "recall failed",
    15: "not allowed (locked by another interface)",
    16: "failed self test",
    17: "failed auto-calibration",
    30: "lost data",
    32: "no listener",
    110: "illegal command",
    111: "undefined command",
    112: "illegal query",
    113: "illegal set",
    114: "null parameter",
    115: "extra parameters",
    116: "missing parameters",
    117: "parameter overflow",
    118: "invalid float",
    120: "invalid integer",
    121: "integer overflow",
    122: "invalid hex",
    126: "syntax error",
    170: "communication framing or parity error",
    171: "communication input overrun",
    254: "too many errors (error queue overflowed)",
}


def error_meaning(code: int) -> str:
    """Meaning of a LERR? code, including the self-test/calibration block 40-91."""
    if code in ERROR_MEANINGS:
        return ERROR_MEANINGS[code]
    if 40 <= code <= 91:
        return "self-test or calibration failure"
    return "unknown error code"


_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Setting:
    """One instrument setting: how it is named on the wire, its range and resolution.

    Floats travel as fixed-point text with ``decimals`` digits and are rounded to ``step`` units
    of the last digit (a delay with decimals=12, step=5 has 5 ps resolution).
    """

    command: str
    label: str
    kind: type
    minimum: float
    maximum: float
    unit: str = ""
    decimals: int = 0
    step: int = 1

    @property
    def allowed(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.minimum:g}{unit} .. {self.maximum:g}{unit}"

    def check(self, value: object, device: str = "") -> int | float:
        """Validate ``value`` and round it to the resolution; refuse before anything is sent."""
        refused = SettingOutOfRange(self.label, value, self.allowed, device=device,
                                    command=self.command)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise refused
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                raise refused
            number: int | float = int(value)
        else:
            number = float(value)
            if not math.isfinite(number):
                raise refused
        if not self.minimum <= number <= self.maximum:
            raise refused
        if self.kind is int:
            return number
        return self._units(number) / 10**self.decimals

    def encode(self, value: int | float) -> str:
        """Exact wire text of an already checked value."""
        if self.kind is int:
            return str(int(value))
        units = self._units(float(value))
        sign = "-" if units < 0 else ""
        whole, frac = divmod(abs(units), 10**self.decimals)
        return f"{sign}{whole}.{frac:0{self.decimals}d}" if self.decimals else f"{sign}{whole}"

    def decode(self, text: str, *, device: str, command: str, reply: str | None = None
               ) -> int | float:
        """Parse one field of ``reply`` (default: the field is the whole reply) strictly,
        including the documented range."""
        reply = text if reply is None else reply
        text = text.strip()
        pattern = _INTEGER if self.kind is int else _REAL
        if not pattern.fullmatch(text):
            raise ProtocolError(f"{self.label} reply is not a number", reply=reply,
                                device=device, command=command)
        number: int | float = int(text) if self.kind is int else float(text)
        slack = 0 if self.kind is int else 1e-9 * max(1.0, abs(self.maximum), abs(self.minimum))
        if not (math.isfinite(number)
                and self.minimum - slack <= number <= self.maximum + slack):
            raise ProtocolError(f"{self.label} reply outside {self.allowed}", reply=reply,
                                device=device, command=command)
        return number

    def _units(self, number: float) -> int:
        return round(number * 10**self.decimals / self.step) * self.step


# The instrument as the datasheet describes it: one row per setting.
DELAY = Setting("DLAY", "delay", float, 0.0, 2000.0, "s", decimals=12, step=5)
DELAY_READBACK = Setting("DLAY", "delay", float, -2000.0, 2000.0, "s", decimals=12, step=5)
DELAY_REFERENCE = Setting("DLAY", "delay reference", int, 0, len(CHANNELS) - 1)
AMPLITUDE = Setting("LAMP", "output amplitude", float, 0.5, 5.0, "V", decimals=2)
OFFSET = Setting("LOFF", "output offset", float, -2.0, 2.0, "V", decimals=2)
POLARITY = Setting("LPOL", "output polarity", int, 0, 1)
TRIGGER_SOURCE = Setting("TSRC", "trigger source", int, 0, 6)
TRIGGER_RATE = Setting("TRAT", "internal trigger rate", float, 100e-6, 10e6, "Hz", decimals=6)
TRIGGER_LEVEL = Setting("TLVL", "external trigger threshold", float, -3.5, 3.5, "V", decimals=2)
HOLDOFF = Setting("HOLD", "trigger holdoff", float, 0.0, 2000.0, "s", decimals=12, step=5)
ADVANCED_TRIGGERING = Setting("ADVT", "advanced triggering", int, 0, 1)
PRESCALE = Setting("PRES", "prescale factor", int, 1, 2**30 - 1)
INHIBIT = Setting("INHB", "inhibit", int, 0, 5)
BURST_MODE = Setting("BURM", "burst mode", int, 0, 1)
# [V] count 1 .. 2^32-1; period 100 ns .. 2000 s - 10 ns in 10 ns steps; delay 0 .. < 2000 s in
# 5 ps steps: the user's guide as quoted in InstrumentKit's srs/srsdg645.py
BURST_COUNT = Setting("BURC", "burst count", int, 1, 2**32 - 1)
BURST_PERIOD = Setting("BURP", "burst period", float, 100e-9, 2000.0 - 10e-9, "s",
                       decimals=12, step=10_000)
BURST_DELAY = Setting("BURD", "burst delay", float, 0.0, 2000.0, "s", decimals=12, step=5)
# DISP d,c: display mode 0..14 and delay channel 0..9 [V: InstrumentKit srs/srsdg645.py]
DISPLAY_MODE = Setting("DISP", "display mode", int, 0, 14)
DISPLAY_CHANNEL = Setting("DISP", "display channel", int, 0, len(CHANNELS) - 1)
BURST_T0 = Setting("BURT", "burst T0 configuration", int, 0, 1)
STATUS = Setting("INSR", "instrument status", int, 0, 255)
ERROR_CODE = Setting("LERR", "error code", int, 0, 255)

_MAX_QUEUED_ERRORS = 64  # the DG645 queue is much shorter; a longer run means a broken link


@dataclass(frozen=True)
class OutputLevel:
    """Level settings of one output (T0, AB, CD, EF or GH)."""

    amplitude_v: float
    offset_v: float
    polarity: Polarity


@dataclass(frozen=True)
class BurstConfig:
    """Burst settings as read back from the instrument."""

    enabled: bool
    count: int
    period_s: float
    delay_s: float
    t0_every_cycle: bool


class DG645:
    """An open connection to one DG645; also a context manager that closes it."""

    #: RS-232 settings used when the resource is a serial port.
    SERIAL_BAUD = 9600
    #: Pause between INSR? polls in `wait_end_of_burst` (an event wait, never a spin).
    BURST_POLL_S = 0.01

    def __init__(
        self, resource_name: str, *, visa_library: str = "@py", timeout_s: float = 2.0
    ) -> None:
        self.resource_name = resource_name
        self._device = f"DG645 {resource_name}"
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not (
            0 < timeout_s < math.inf
        ):
            raise SettingOutOfRange("timeout_s", timeout_s, "> 0 s", device=self._device)
        self._timeout_s = float(timeout_s)
        self._lock = threading.RLock()
        self._abort = threading.Event()
        self._resource = self._open(resource_name, visa_library)
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- connection
    def _open(self, resource_name: str, visa_library: str) -> pyvisa.resources.MessageBasedResource:
        resource = None
        try:
            manager = pyvisa.ResourceManager(visa_library)
            resource = manager.open_resource(
                resource_name,
                read_termination="\r\n",
                write_termination="\n",
                timeout=max(1, round(self._timeout_s * 1000)),
            )
            if resource.interface_type == visa_constants.InterfaceType.asrl:
                resource.baud_rate = self.SERIAL_BAUD
                resource.data_bits = 8
                resource.parity = visa_constants.Parity.none
                resource.stop_bits = visa_constants.StopBits.one
                resource.flow_control = visa_constants.VI_ASRL_FLOW_RTS_CTS
        except Exception as exc:  # pyvisa backends raise bare Exception ("could not connect")
            if resource is not None:
                resource.close()
            raise InstrumentError(f"cannot open {resource_name}: {exc}", device=self._device,
                                  meaning="open failed") from exc
        return resource

    def _connect(self) -> None:
        idn = self.identify()
        fields = [field.strip() for field in idn.split(",")]
        if len(fields) < 2 or fields[1] != "DG645":
            raise InstrumentError(f"instrument is not a DG645: {idn!r}", device=self._device,
                                  command="*IDN?", meaning="wrong instrument")
        stale = self._drain_errors()
        if stale:
            log.warning("%s: discarded stale errors at connect: %s", self._device,
                        ", ".join(f"{code} ({error_meaning(code)})" for code in stale))
        # *OPC? confirms that *CLS has been executed before the caller's first command
        if self._query("*CLS;*OPC?") != "1":
            raise InstrumentError("no completion after *CLS", device=self._device,
                                  command="*CLS;*OPC?", meaning="unexpected reply")
        log.info("%s: connected to %s", self._device, idn)

    def close(self) -> None:
        """Close the resource (idempotent). Does not change any instrument setting."""
        resource, self._resource = getattr(self, "_resource", None), None
        if resource is not None:
            try:
                resource.close()
            except (pyvisa.errors.Error, OSError) as exc:
                log.debug("%s: error while closing: %s", self._device, exc)

    def __enter__(self) -> DG645:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._resource is not None else "closed"
        return f"DG645({self.resource_name!r}, {state})"

    # ------------------------------------------------------------------ public API
    def identify(self) -> str:
        """The ``*IDN?`` string."""
        return self._query("*IDN?")

    def set_delay(self, channel: str, reference: str, seconds: float) -> None:
        """Set ``channel`` = ``reference`` + ``seconds`` (0..2000 s, rounded to 5 ps)."""
        index = self._index(channel, CHANNELS, "channel", allow_t0=False)
        ref = self._index(reference, CHANNELS, "delay reference")
        if ref == index:
            raise SettingOutOfRange("delay reference", reference,
                                    f"any channel other than {CHANNELS[index]}",
                                    device=self._device, command="DLAY")
        value = DELAY.check(seconds, self._device)
        self._apply([f"DLAY {index},{ref},{DELAY.encode(value)}"])

    def get_delay(self, channel: str) -> tuple[str, float]:
        """(reference channel name, seconds) of ``channel``."""
        index = self._index(channel, CHANNELS, "channel")
        command = f"DLAY?{index}"

        def parse(reply: str) -> tuple[str, float]:
            fields = reply.split(",")
            if len(fields) != 2:
                raise ProtocolError("delay reply is not '<reference>,<seconds>'", reply=reply,
                                    device=self._device, command=command)
            where = {"device": self._device, "command": command, "reply": reply}
            ref = DELAY_REFERENCE.decode(fields[0], **where)
            return CHANNELS[int(ref)], float(DELAY_READBACK.decode(fields[1], **where))

        return self._ask(command, parse)

    def set_output_level(
        self,
        output: str,
        *,
        amplitude_v: float | None = None,
        offset_v: float | None = None,
        polarity: Polarity | str | int | None = None,
    ) -> None:
        """Set any of amplitude (0.5..5 V), offset (±2 V) and polarity of one output."""
        index = self._index(output, OUTPUTS, "output")
        parts = []
        if amplitude_v is not None:
            value = AMPLITUDE.check(amplitude_v, self._device)
            parts.append(f"LAMP {index},{AMPLITUDE.encode(value)}")
        if offset_v is not None:
            parts.append(f"LOFF {index},{OFFSET.encode(OFFSET.check(offset_v, self._device))}")
        if polarity is not None:
            parts.append(f"LPOL {index},{int(self._enum(polarity, Polarity, POLARITY))}")
        if parts:
            self._apply(parts)

    def get_output_level(self, output: str) -> OutputLevel:
        """Amplitude, offset and polarity of one output."""
        index = self._index(output, OUTPUTS, "output")
        return OutputLevel(
            amplitude_v=float(self._query_value(AMPLITUDE, index)),
            offset_v=float(self._query_value(OFFSET, index)),
            polarity=Polarity(self._query_value(POLARITY, index)),
        )

    def set_trigger_source(self, source: TriggerSource | str | int) -> None:
        """Select the trigger source; `fire` needs ``TriggerSource.SINGLE_SHOT``."""
        value = self._enum(source, TriggerSource, TRIGGER_SOURCE)
        self._apply([f"TSRC {int(value)}"])

    def get_trigger_source(self) -> TriggerSource:
        return TriggerSource(self._query_value(TRIGGER_SOURCE))

    def set_trigger_rate(self, hz: float) -> None:
        """Internal trigger rate, 100 µHz .. 10 MHz."""
        self._apply([f"TRAT {TRIGGER_RATE.encode(TRIGGER_RATE.check(hz, self._device))}"])

    def get_trigger_rate(self) -> float:
        return float(self._query_value(TRIGGER_RATE))

    def set_trigger_level(self, volts: float) -> None:
        """External trigger threshold, -3.5 .. 3.5 V."""
        self._apply([f"TLVL {TRIGGER_LEVEL.encode(TRIGGER_LEVEL.check(volts, self._device))}"])

    def get_trigger_level(self) -> float:
        return float(self._query_value(TRIGGER_LEVEL))

    def set_holdoff(self, seconds: float) -> None:
        """Shortest time between accepted triggers, 0 .. 2000 s."""
        self._apply([f"HOLD {HOLDOFF.encode(HOLDOFF.check(seconds, self._device))}"])

    def get_holdoff(self) -> float:
        return float(self._query_value(HOLDOFF))

    def set_display(self, mode: int, channel: str = "A") -> None:
        """What the front panel shows (``DISP``): mode 0..14 (11 = a channel's delay) for a
        delay channel."""
        value = int(DISPLAY_MODE.check(mode, self._device))
        index = self._index(channel, CHANNELS, "display channel")
        self._apply([f"DISP {value},{index}"])

    def get_display(self) -> tuple[int, str]:
        """(mode, channel name) of the front panel display."""
        def parse(reply: str) -> tuple[int, str]:
            fields = reply.split(",")
            if len(fields) != 2:
                raise ProtocolError("DISP? reply is not '<mode>,<channel>'", reply=reply,
                                    device=self._device, command="DISP?")
            mode = int(DISPLAY_MODE.decode(fields[0], device=self._device, command="DISP?",
                                           reply=reply))
            channel = int(DISPLAY_CHANNEL.decode(fields[1], device=self._device,
                                                 command="DISP?", reply=reply))
            return mode, CHANNELS[channel]

        return self._ask("DISP?", parse)

    def pending_errors(self) -> list[int]:
        """Read the error queue (``LERR?`` until 0) and return its codes, oldest first."""
        return self._drain_errors()

    def outputs_disabled(self) -> bool:
        """Whether `disable_outputs` is in force: single-shot trigger source and all delay
        outputs inhibited (``TSRC 5``, ``INHB 5``)."""
        return (self.get_trigger_source() is TriggerSource.SINGLE_SHOT
                and self._query_value(INHIBIT) == 5)

    def configure_burst(
        self,
        count: int,
        period_s: float,
        *,
        delay_s: float = 0.0,
        t0_every_cycle: bool = True,
    ) -> None:
        """Enable burst mode: each trigger emits ``count`` delay cycles ``period_s`` apart."""
        count = int(BURST_COUNT.check(count, self._device))
        period = BURST_PERIOD.check(period_s, self._device)
        delay = BURST_DELAY.check(delay_s, self._device)
        self._apply([
            "BURM 1",
            f"BURC {count}",
            f"BURP {BURST_PERIOD.encode(period)}",
            f"BURD {BURST_DELAY.encode(delay)}",
            f"BURT {0 if t0_every_cycle else 1}",
        ])

    def set_burst_mode(self, enabled: bool) -> None:
        self._apply([f"BURM {1 if enabled else 0}"])

    def get_burst(self) -> BurstConfig:
        return BurstConfig(
            enabled=bool(self._query_value(BURST_MODE)),
            count=int(self._query_value(BURST_COUNT)),
            period_s=float(self._query_value(BURST_PERIOD)),
            delay_s=float(self._query_value(BURST_DELAY)),
            t0_every_cycle=self._query_value(BURST_T0) == 0,
        )

    def read_status(self) -> StatusFlag:
        """Read (and thereby clear) the latched INSR status bits."""
        return StatusFlag(int(self._query_value(STATUS)))

    def read_burst_status(self) -> BurstStatus:
        """`read_status` as a `BurstStatus` (the `LatchedStatus` capability): what the engine
        needs to know of the bits, without knowing the DG645's."""
        return self._burst_status(self.read_status(), aborted=False)

    def fire(self) -> None:
        """Fire one software trigger (``*TRG``); needs trigger source SINGLE_SHOT.

        Stale latched status bits are read away first so that `wait_end_of_burst` sees only
        this trigger's END_OF_BURST.
        """
        with self._lock:
            stale = self.read_status()
            if stale:
                log.debug("%s: stale status before *TRG: %r", self._device, stale)
            self._abort.clear()
            self._apply(["*TRG"])

    def wait_end_of_burst(self, timeout_s: float) -> BurstStatus:
        """Poll INSR? until END_OF_BURST; report ignored triggers and inhibit seen meanwhile.

        Between polls the thread waits on an event (set by `disable_outputs`), so a stop from
        another thread ends the wait at once with ``aborted=True``. Raises `InstrumentTimeout`
        when the burst has not ended within ``timeout_s``.
        """
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not (
            0 < timeout_s < math.inf
        ):
            raise SettingOutOfRange("timeout_s", timeout_s, "> 0 s", device=self._device)
        deadline = time.monotonic() + float(timeout_s)
        seen = StatusFlag(0)
        while True:
            seen |= self.read_status()
            if StatusFlag.END_OF_BURST in seen:
                return self._burst_status(seen, aborted=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstrumentTimeout(
                    f"burst did not end within {timeout_s:g} s", device=self._device,
                    command="INSR?", meaning=f"status flags seen: {seen!r}")
            if self._abort.wait(min(self.BURST_POLL_S, remaining)):
                return self._burst_status(seen, aborted=True)

    def disable_outputs(self) -> None:
        """Stop further pulses: single-shot trigger source and inhibit of all outputs.

        Safe to call from any thread; a concurrent `wait_end_of_burst` returns ``aborted``.
        """
        self._abort.set()
        self._apply([f"TSRC {int(TriggerSource.SINGLE_SHOT)}", "INHB 5"])
        log.info("%s: outputs disabled (TSRC 5, INHB 5)", self._device)

    def enable_outputs(self) -> None:
        """Clear the output inhibit set by `disable_outputs` (trigger source unchanged)."""
        self._apply(["INHB 0"])

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _burst_status(seen: StatusFlag, *, aborted: bool) -> BurstStatus:
        return BurstStatus(
            end_of_burst=StatusFlag.END_OF_BURST in seen,
            triggers_ignored=StatusFlag.RATE in seen,
            inhibited=StatusFlag.INHIBIT in seen,
            aborted=aborted,
            flags=int(seen),
        )

    def _index(self, name: object, names: tuple[str, ...], what: str,
               allow_t0: bool = True) -> int:
        allowed = names if allow_t0 else names[1:]
        key = name.strip().upper() if isinstance(name, str) else None
        if key not in allowed:
            raise SettingOutOfRange(what, name, ", ".join(allowed), device=self._device)
        return names.index(key)

    def _enum(self, value: object, enum: type[IntEnum], setting: Setting) -> IntEnum:
        if isinstance(value, str):
            try:
                return enum[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            try:
                return enum(int(value))
            except ValueError:
                pass
        raise SettingOutOfRange(setting.label, value,
                                ", ".join(member.name.lower() for member in enum),
                                device=self._device, command=setting.command)

    def _query_value(self, setting: Setting, index: int | None = None) -> int | float:
        command = f"{setting.command}?" + ("" if index is None else str(index))
        return self._ask(command, lambda reply: setting.decode(
            reply, device=self._device, command=command))

    def _error_code(self, command: str, label: str) -> int:
        return int(self._ask(command, lambda reply: ERROR_CODE.decode(
            reply, device=self._device, command=label)))

    def _apply(self, parts: list[str]) -> None:
        """Send a group of set commands and ``LERR?`` as one line, then drain the error queue.

        One line with one reply avoids a second small TCP write waiting on the first one's
        delayed ACK (Nagle; pyvisa-py cannot set TCP_NODELAY on sockets). [I] Should the unit
        stop parsing a line at an error, LERR? gets no answer: the timeout then falls back to
        reading the queue on its own so the code is still reported against this command.
        """
        line = ";".join(parts)
        with self._lock:
            try:
                first = self._error_code(f"{line};LERR?", line)
            except InstrumentTimeout:
                codes = self._drain_errors()
                if not codes:
                    raise
            else:
                codes = [first, *self._drain_errors()] if first else []
        if codes:
            code = codes[0]
            hint = " (fire() needs trigger source single_shot)" if parts == ["*TRG"] else ""
            raise InstrumentError(
                f"refused: error codes {codes}{hint}", device=self._device, command=line,
                code=code, meaning=error_meaning(code))

    def _drain_errors(self) -> list[int]:
        codes: list[int] = []
        with self._lock:
            for _ in range(_MAX_QUEUED_ERRORS):
                code = self._error_code("LERR?", "LERR?")
                if code == 0:
                    return codes
                codes.append(code)
        raise InstrumentError("error queue does not drain", device=self._device,
                              command="LERR?", code=codes[-1], meaning=error_meaning(codes[-1]))

    def _require_open(self) -> pyvisa.resources.MessageBasedResource:
        if self._resource is None:
            raise InstrumentError("connection is closed", device=self._device)
        return self._resource

    def _write(self, command: str) -> None:
        with self._lock:
            resource = self._require_open()
            log.debug("%s <- %r", self._device, command)
            try:
                resource.write(command)
            except VisaIOError as exc:
                raise self._transport_error(exc, command) from exc
            except OSError as exc:
                raise InstrumentError(f"link failure: {exc}", device=self._device,
                                      command=command, meaning="transport failure") from exc

    def _ask(self, command: str, parse: Callable[[str], _T]) -> _T:
        """Query and parse; a reply that does not parse also drops any unread input, in case
        the instrument sent more lines than one."""
        with self._lock:
            reply = self._query(command)
            try:
                return parse(reply)
            except ProtocolError:
                self._resync()
                raise

    def _query(self, command: str) -> str:
        with self._lock:
            self._write(command)
            resource = self._require_open()
            try:
                raw = resource.read_raw()
            except VisaIOError as exc:
                self._resync()
                raise self._transport_error(exc, command) from exc
            except OSError as exc:
                raise InstrumentError(f"link failure: {exc}", device=self._device,
                                      command=command, meaning="transport failure") from exc
        log.debug("%s -> %r", self._device, raw)
        text = raw.decode("ascii", errors="backslashreplace")
        if not raw.endswith(b"\r\n"):
            self._resync()
            raise ProtocolError("reply not terminated by CR LF (truncated or garbled)",
                                reply=text, device=self._device, command=command)
        body = text[:-2]
        if not raw[:-2].isascii() or not body.isprintable():
            self._resync()
            raise ProtocolError("reply contains non-ASCII or control characters", reply=text,
                                device=self._device, command=command)
        return body

    def _transport_error(self, exc: VisaIOError, command: str) -> InstrumentError:
        if exc.error_code == visa_constants.StatusCode.error_timeout:
            return InstrumentTimeout(f"no reply within {self._timeout_s:g} s",
                                     device=self._device, command=command,
                                     meaning="timeout")
        return InstrumentError(f"transport error: {exc}", device=self._device, command=command,
                               meaning="transport failure")

    def _resync(self) -> None:
        """Best effort: drop any late or partial reply so the next query reads its own."""
        resource = self._resource
        if resource is None:
            return
        try:
            resource.flush(visa_constants.BufferOperation.discard_read_buffer)
        except (pyvisa.errors.Error, NotImplementedError, OSError) as exc:
            log.debug("%s: could not discard input: %s", self._device, exc)
