"""Wire-level emulator of the SRS DG645, so tests run the real driver code without hardware.

`DG645Emulator` is a pure state machine: ``handle(line) -> reply bytes or None`` speaks the
DG645 ASCII protocol (``reference/instruments.md`` section 2) byte for byte: several
``;``-separated commands per line, case-insensitive mnemonics, ``?`` queries with an index,
silent set commands, the ``LERR?`` error queue with the real codes, latched ``INSR?`` bits, and
the trigger/burst sequencer on an injectable clock. Every delay cycle is a `Shot`; a simulated
bench subscribes with `DG645Emulator.on_shot` to attach the physics to each one.

Three ways to reach it, all from the shared transport `serial_link` (the emulator is its
`serial_link.Peer`):

* `DG645TcpServer`: a threaded localhost socket server (``TCPIP::127.0.0.1::<port>::SOCKET``);
* `DG645PtyServer`: a pseudo-terminal pair (``ASRL/dev/pts/N::INSTR`` through real pyserial);
* the pyserial URL ``dg645sim://<name>`` (also ``ASRLdg645sim://<name>::INSTR`` in pyvisa-py):
  an in-process serial port, no threads or sockets; name an emulator with `register_emulator`.

Faults (`Fault`) are injected on the next reply or line: garbage, no reply, truncated reply,
disconnect. Choices marked [I] are our inference where the manual is silent.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .events import Clocked, Subscribers, WireRecord
from .serial_link import (
    EmulatorDisconnect,
    Fault,
    FaultQueue,
    PeerSerial,
    PtyServer,
    TcpServer,
    register_scheme,
    register_url,
    unregister_url,
)

log = logging.getLogger(__name__)

DEFAULT_IDN = "Stanford Research Systems,DG645,s/n001234,ver1.14.10E"
CHANNELS = ("T0", "T1", "A", "B", "C", "D", "E", "F", "G", "H")
OUTPUTS = ("T0", "AB", "CD", "EF", "GH")
#: Outputs gated by each INHB value while the inhibit input is asserted (1 gates triggers).
_INHIBITED_BY = {0: (), 1: (), 2: ("AB",), 3: ("AB", "CD"), 4: ("AB", "CD", "EF"),
                 5: ("AB", "CD", "EF", "GH")}
_PS = 10**12  # delays are kept as integer picoseconds on a 5 ps grid
_INTERFACE_SETTINGS = 16  # IFCF k,v: k 0..15 [M]
_MAX_DELAY_PS = 2000 * _PS
_ERROR_QUEUE_DEPTH = 20
_MAX_EVENTS_PER_ADVANCE = 100_000
_MAX_WAIT_S = 1.0  # longest a server sleeps without I/O or a scheduled shot
_GARBAGE = b"\xfe\x80#garbage?\r\n"  # a GARBAGE fault's default reply

# (links, delays, absolute ps, the shots' delay mapping) of the current delay setting
_DelayCache = tuple[list[int], list[int], list[int], Mapping[str, float]]

# INSR bits
TRIG, RATE, END_OF_DELAY, END_OF_BURST, INHIBIT = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class Shot:
    """One delay cycle: T0 fired at ``time`` on the emulator clock."""

    number: int  # 1-based count of delay cycles since the emulator was made
    time: float
    burst_cycle: int  # 0-based index within its burst (0 outside burst mode)
    t0_output: bool  # False for cycles after the first when BURT 1
    delays: Mapping[str, float] = field(hash=False)  # absolute delay of T1, A..H after T0
    inhibited_outputs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Param:
    """A plain setting: type, range, default, reply decimals, resolution, index count."""

    kind: type
    low: float
    high: float
    default: float
    decimals: int = 0
    resolution: float = 0.0
    count: int = 0  # 0 = scalar, else number of indexed instances


_PARAMS: dict[str, _Param] = {
    "TSRC": _Param(int, 0, 6, 5),  # [I] the real unit powers up in its saved state
    "TRAT": _Param(float, 100e-6, 10e6, 10_000.0, 6, 1e-6),
    "TLVL": _Param(float, -3.5, 3.5, 1.0, 2, 0.01),
    "HOLD": _Param(float, 0.0, 2000.0, 0.0, 12, 5e-12),
    "INHB": _Param(int, 0, 5, 0),
    "BURM": _Param(int, 0, 1, 0),
    "BURC": _Param(int, 1, 2**32 - 1, 2),
    # 100 ns .. 2000 s - 10 ns in 10 ns steps [V: the user's guide as quoted in InstrumentKit's
    # srs/srsdg645.py, burst_period]
    "BURP": _Param(float, 100e-9, 2000.0 - 10e-9, 1e-6, 12, 10e-9),
    "BURD": _Param(float, 0.0, 2000.0, 0.0, 12, 5e-12),
    "BURT": _Param(int, 0, 1, 0),
    "ADVT": _Param(int, 0, 1, 0),
    "INSE": _Param(int, 0, 255, 0),
    "*ESE": _Param(int, 0, 255, 0),
    "*SRE": _Param(int, 0, 255, 0),
    "LAMP": _Param(float, 0.5, 5.0, 2.5, 2, 0.01, count=len(OUTPUTS)),
    "LOFF": _Param(float, -2.0, 2.0, 0.0, 2, 0.01, count=len(OUTPUTS)),
    "LPOL": _Param(int, 0, 1, 1, count=len(OUTPUTS)),
    "PRES": _Param(int, 1, 2**30 - 1, 1, count=len(OUTPUTS)),
    "PHAS": _Param(int, 0, 2**30 - 2, 0, count=len(OUTPUTS)),  # [M] below PRES of that output
    "*PSC": _Param(int, 0, 1, 1),
    "SSDL": _Param(float, 0.0, 2000.0, 0.0, 12, 5e-12, count=len(CHANNELS)),  # delay step
    "SSLA": _Param(float, 0.0, 4.5, 0.1, 2, 0.01, count=len(OUTPUTS)),  # amplitude step
    "SSLO": _Param(float, 0.0, 4.0, 0.1, 2, 0.01, count=len(OUTPUTS)),  # offset step
    "IFCF": _Param(int, 0, 2**31 - 1, 0, count=_INTERFACE_SETTINGS),
}
#: DISP d,c: what the front panel shows (d, 0..14) and for which channel (c, 0..9)
#: [V: the display modes and channels of InstrumentKit's srs/srsdg645.py, display]
DISPLAY_MODES = 15
#: Commands that are only queries / only sets; anything else in neither table is undefined.
#: The command list is the manual's (chapter 4, "Command list") as remembered [M].
_QUERY_ONLY = {"*IDN", "*TST", "*ESR", "*STB", "*CAL", "LERR", "INSR", "EMAC", "TIMB",
               "LOCK", "UNLK"}
_SET_ONLY = {"*RST", "*CLS", "*WAI", "*TRG", "*SAV", "*RCL", "SPDL", "SPLA", "SPLO", "IFRS",
             "LCAL", "REMT", "XTRM"}
_BOTH = {"*OPC", "DLAY", "DISP", "LINK"}
_KNOWN = frozenset(_PARAMS) | _QUERY_ONLY | _SET_ONLY | _BOTH
_STORED_SETTINGS = 10  # *SAV / *RCL locations 0..9, 0 = factory defaults [M]
DEFAULT_MAC = "00:19:b3:06:00:01"  # EMAC? [I]

_UNIT = re.compile(r"(\*[A-Za-z]{3}|[A-Za-z]{4})(\?)?(.*)", re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _parse_int(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise _Refused(120)  # invalid integer
    value = int(text)
    if not -(2**31) <= value <= 2**32 - 1:
        raise _Refused(121)  # integer overflow
    return value


def _parse_real(text: str) -> float:
    if not _REAL.fullmatch(text):
        raise _Refused(118)  # invalid float
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(117)  # parameter overflow
    return value


def _format_ps(ps: int) -> str:
    whole, frac = divmod(abs(ps), _PS)
    return f"{'-' if ps < 0 else '+'}{whole}.{frac:012d}"


@dataclass
class _Run:
    """Delay cycles scheduled by one accepted trigger."""

    start: float
    period: float
    count: int
    burst: bool
    emitted: int = 0

    def next_time(self) -> float:
        return self.start + self.emitted * self.period


class DG645Emulator(Clocked, WireRecord):
    """DG645 protocol state machine; thread-safe, time from an injectable ``clock``.

    ``inhibit_input`` is the level of the inhibit input: asserted by default, as if the bench
    interlock follows the software inhibit, so ``INHB`` takes effect [I].
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        idn: str = DEFAULT_IDN,
        inhibit_input: bool = True,
        history: int = 100_000,
    ) -> None:
        self._clock = clock
        self.idn = idn
        self.inhibit_input = inhibit_input
        self._lock = threading.RLock()
        self._subscribers: Subscribers[Shot] = Subscribers(
            self._lock, log, "DG645 emulator: shot callback failed")
        self._shots: deque[Shot] = deque(maxlen=history)
        self._shot_count = 0
        self._faults = FaultQueue(garbage=_GARBAGE)
        self._transcript: deque[tuple[bytes, bytes | None]] = deque(maxlen=history)
        self._received = bytearray()
        self._errors: deque[int] = deque()
        self._insr = 0
        self._esr = 0
        self.ignored_triggers = 0
        self._delay_cache: _DelayCache | None = None
        self._stored: dict[int, tuple[object, ...]] = {}
        self._reset()

    # ------------------------------------------------------------------ protocol
    def handle(self, line: bytes) -> bytes | None:
        """Execute one line (terminator removed); return the reply with CR LF, or None."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._faults.take_disconnect():
                self._transcript.append((bytes(line), None))
                raise EmulatorDisconnect("fault injected: disconnect")
            replies: list[str] = []
            try:
                text = bytes(line).decode("ascii")
            except UnicodeDecodeError:
                self._push_error(110)
                text = ""
            for unit in text.split(";"):
                unit = unit.strip()
                if unit:
                    reply = self._execute(unit, now)
                    if reply is not None:
                        replies.append(reply)
            self._advance(now)  # cycles due at once (a *TRG without burst delay) happen now
            # [I] several queries on one line answer as one message joined by ';' (IEEE 488.2)
            out = (";".join(replies) + "\r\n").encode("ascii") if replies else None
            spoiled = self._faults.apply([out] if out is not None else [])
            out = spoiled[0] if spoiled else None
            self._transcript.append((bytes(line), out))
            log.debug("DG645 emulator %r -> %r", line, out)
        self._dispatch()
        return out

    def _execute(self, unit: str, now: float) -> str | None:
        match = _UNIT.fullmatch(unit)
        try:
            if match is None:
                raise _Refused(110)  # illegal command
            mnemonic, query, rest = match.group(1).upper(), bool(match.group(2)), match.group(3)
            if mnemonic not in _KNOWN:
                raise _Refused(111)  # undefined command
            if query and mnemonic in _SET_ONLY:
                raise _Refused(112)  # illegal query
            if not query and mnemonic in _QUERY_ONLY:
                raise _Refused(113)  # illegal set
            if query:
                return self._query(mnemonic, rest.strip())
            args = [arg.strip() for arg in rest.split(",")] if rest.strip() else []
            if any(not arg for arg in args):
                raise _Refused(114)  # null parameter
            self._set(mnemonic, args, now)
        except _Refused as refused:
            self._push_error(refused.code)
        return None

    def _query(self, mnemonic: str, index_text: str) -> str:
        param = _PARAMS.get(mnemonic)
        if param is not None:
            index = self._index(index_text, param.count)
            value = self._values[mnemonic][index]
            return str(int(value)) if param.kind is int else f"{value:+.{param.decimals}f}"
        if mnemonic == "DLAY":
            channel = self._index(index_text, len(CHANNELS))
            return f"{self._links[channel]},{_format_ps(self._delays[channel])}"
        if mnemonic == "LINK":
            return str(self._links[self._index(index_text, len(CHANNELS))])
        if index_text:
            raise _Refused(115)  # extra parameters
        if mnemonic == "*IDN":
            return self.idn
        if mnemonic == "LERR":
            return str(self._errors.popleft() if self._errors else 0)
        if mnemonic == "INSR":
            value, self._insr = self._insr, 0
            return str(value)
        if mnemonic == "*ESR":
            value, self._esr = self._esr, 0
            return str(value)
        if mnemonic == "*STB":
            return str(self._status_byte())
        if mnemonic == "DISP":
            return f"{self._display[0]},{self._display[1]}"
        if mnemonic == "EMAC":
            return DEFAULT_MAC
        if mnemonic in ("LOCK", "UNLK"):
            return "1"  # [M] the lock is granted / released: one interface only here
        # *OPC? 1; *TST? and *CAL? 0 (passed); TIMB? 0 (internal time base) [M]
        return "1" if mnemonic == "*OPC" else "0"

    def _index(self, text: str, count: int) -> int:
        if count == 0:
            if text:
                raise _Refused(115)
            return 0
        if not text:
            raise _Refused(116)  # missing parameters
        index = _parse_int(text)
        if not 0 <= index < count:
            raise _Refused(10)
        return index

    def _set(self, mnemonic: str, args: list[str], now: float) -> None:
        param = _PARAMS.get(mnemonic)
        if param is not None:
            needed = 2 if param.count else 1
            self._arity(args, needed)
            index = self._index(args[0], param.count) if param.count else 0
            raw = args[-1]
            value: float = _parse_int(raw) if param.kind is int else _parse_real(raw)
            if not param.low <= value <= param.high:
                raise _Refused(10)  # illegal value
            if param.resolution:
                value = round(value / param.resolution) * param.resolution
            self._values[mnemonic][index] = value
            self._setting_changed(mnemonic, now)
        elif mnemonic == "DLAY":
            self._arity(args, 3)
            self._set_delay(_parse_int(args[0]), _parse_int(args[1]), _parse_real(args[2]))
        elif mnemonic == "*TRG":
            self._arity(args, 0)
            self._software_trigger(now)
        elif mnemonic == "DISP":
            self._arity(args, 2)
            mode, channel = _parse_int(args[0]), _parse_int(args[1])
            if not (0 <= mode < DISPLAY_MODES and 0 <= channel < len(CHANNELS)):
                raise _Refused(10)
            self._display = (mode, channel)
        elif mnemonic == "LINK":
            self._arity(args, 2)
            channel = _parse_int(args[0])
            if not 0 <= channel < len(CHANNELS):
                raise _Refused(10)
            self._set_delay(channel, _parse_int(args[1]), self._delays[channel] / _PS)
        elif mnemonic in ("SPDL", "SPLA", "SPLO"):
            self._arity(args, 2)
            self._step(mnemonic, _parse_int(args[0]), _parse_int(args[1]))
        elif mnemonic in ("*SAV", "*RCL"):
            self._arity(args, 1)
            slot = _parse_int(args[0])
            if not 0 <= slot < _STORED_SETTINGS or (mnemonic == "*SAV" and slot == 0):
                raise _Refused(10)
            if mnemonic == "*SAV":
                self._stored[slot] = self._snapshot()
            elif slot == 0:
                self._reset()
            elif slot in self._stored:
                self._restore(self._stored[slot])
            else:
                raise _Refused(14)  # recall failed: nothing stored there [I]
        elif mnemonic in ("IFRS", "XTRM"):
            if not args or len(args) > (1 if mnemonic == "IFRS" else 3):
                raise _Refused(116 if not args else 115)
            for arg in args:
                _parse_int(arg)
        else:
            self._arity(args, 0)
            if mnemonic == "*RST":
                self._reset()
            elif mnemonic == "*CLS":
                self._errors.clear()
                self._insr = 0
                self._esr = 0
            # *WAI and *OPC: commands complete at once here; LCAL and REMT (local / remote)
            # change nothing an emulator models

    @staticmethod
    def _arity(args: list[str], needed: int) -> None:
        if len(args) < needed:
            raise _Refused(116)  # missing parameters
        if len(args) > needed:
            raise _Refused(115)  # extra parameters

    def _set_delay(self, channel: int, reference: int, seconds: float) -> None:
        if not 0 <= channel < len(CHANNELS) or not 0 <= reference < len(CHANNELS):
            raise _Refused(10)
        if channel == 0:
            raise _Refused(10)  # [I] T0 is the fixed origin
        ps = round(seconds * _PS / 5) * 5
        if abs(ps) > _MAX_DELAY_PS:
            raise _Refused(12)  # illegal delay
        links, delays = list(self._links), list(self._delays)
        links[channel], delays[channel] = reference, ps
        absolute = self._absolute_ps(links, delays)
        if absolute is None:
            raise _Refused(13)  # illegal link: a channel would refer to itself
        if any(not 0 <= t <= _MAX_DELAY_PS for t in absolute):
            raise _Refused(12)
        self._links, self._delays = links, delays

    def _step(self, mnemonic: str, index: int, up: int) -> None:
        """SPDL c,u / SPLA b,u / SPLO b,u: one step (SSDL / SSLA / SSLO) up (u=1) or down
        (u=0) [M]."""
        if up not in (0, 1):
            raise _Refused(10)
        sign = 1 if up else -1
        if mnemonic == "SPDL":
            if not 0 <= index < len(CHANNELS):
                raise _Refused(10)
            step = self._values["SSDL"][index]
            self._set_delay(index, self._links[index], self._delays[index] / _PS + sign * step)
            return
        target = {"SPLA": "LAMP", "SPLO": "LOFF"}[mnemonic]
        if not 0 <= index < len(OUTPUTS):
            raise _Refused(10)
        param = _PARAMS[target]
        value = self._values[target][index] + sign * self._values["SS" + mnemonic[2:]][index]
        if not param.low - 1e-9 <= value <= param.high + 1e-9:
            raise _Refused(10)
        self._values[target][index] = round(value / param.resolution) * param.resolution

    def _snapshot(self) -> tuple[object, ...]:
        return ({k: list(v) for k, v in self._values.items()}, list(self._links),
                list(self._delays), self._display)

    def _restore(self, saved: tuple[object, ...]) -> None:
        values, links, delays, display = saved
        self._values = {k: list(v) for k, v in values.items()}  # type: ignore[attr-defined]
        self._links, self._delays = list(links), list(delays)  # type: ignore[call-overload]
        self._display = display  # type: ignore[assignment]
        self._delay_cache = None

    @staticmethod
    def _absolute_ps(links: list[int], delays: list[int]) -> list[int] | None:
        """Absolute delay of every channel after T0, or None when the links form a loop."""
        result = []
        for channel in range(len(links)):
            total, seen = 0, set()
            while channel != 0:
                if channel in seen:
                    return None
                seen.add(channel)
                total += delays[channel]
                channel = links[channel]
            result.append(total)
        return result

    def _setting_changed(self, mnemonic: str, now: float) -> None:
        if mnemonic in ("TSRC", "TRAT"):
            self._armed = False
            self._next_internal = (now + self._trigger_period()
                                   if self._source() in (0, 6) else None)

    def _reset(self) -> None:
        self._values = {name: [p.default] * max(1, p.count) for name, p in _PARAMS.items()}
        self._links = [0] * len(CHANNELS)
        self._delays = [0] * len(CHANNELS)
        self._display = (11, 2)  # [I] the delay of channel A
        self._run: _Run | None = None
        self._busy_until = -math.inf
        self._next_internal: float | None = None
        self._armed = False

    def _push_error(self, code: int) -> None:
        if len(self._errors) >= _ERROR_QUEUE_DEPTH:
            self._errors[-1] = 254
        else:
            self._errors.append(code)
        if code >= 110:
            self._esr |= 32  # command error
        elif code >= 30:
            self._esr |= 4  # query error
        else:
            self._esr |= 16  # execution error

    def _status_byte(self) -> int:
        stb = 0
        if self._insr & int(self._values["INSE"][0]):
            stb |= 1
        if self._esr & int(self._values["*ESE"][0]):
            stb |= 32
        if stb & int(self._values["*SRE"][0]):
            stb |= 64
        return stb

    # ------------------------------------------------------------------ sequencer
    def _source(self) -> int:
        return int(self._values["TSRC"][0])

    def _trigger_period(self) -> float:
        if self._source() == 6:
            return 1 / 50.0  # [I] line trigger at 50 Hz mains
        return 1 / self._values["TRAT"][0]

    def _software_trigger(self, now: float) -> None:
        source = self._source()
        if source == 5:
            self._trigger(now)
        elif source in (3, 4):
            self._armed = True  # [M] *TRG arms the single-shot external modes
        else:
            raise _Refused(11)  # illegal mode

    def _trigger(self, t: float) -> bool:
        """A trigger edge at ``t``; True when it started delay cycles."""
        inhibit = int(self._values["INHB"][0])
        if inhibit == 1 and self.inhibit_input:
            self._insr |= INHIBIT
            return False
        if self._run is not None or t < self._busy_until:
            self._insr |= RATE
            self.ignored_triggers += 1
            return False
        self._insr |= TRIG
        if self._values["BURM"][0]:
            self._run = _Run(t + self._values["BURD"][0], self._values["BURP"][0],
                             int(self._values["BURC"][0]), burst=True)
        else:
            self._run = _Run(t, 0.0, 1, burst=False)
        return True

    def _advance(self, now: float) -> None:
        """Process triggers and delay cycles due up to ``now`` in time order."""
        for _ in range(_MAX_EVENTS_PER_ADVANCE):
            t_shot = self._run.next_time() if self._run is not None else math.inf
            t_trig = self._next_internal if self._next_internal is not None else math.inf
            if min(t_shot, t_trig) > now:
                return
            if t_shot <= t_trig:
                self._emit()
            else:
                self._trigger(t_trig)
                self._next_internal = t_trig + self._trigger_period()
        if self._next_internal is not None and self._next_internal <= now:
            log.warning("DG645 emulator fell behind; skipping internal triggers up to %.6f", now)
            self._next_internal = now + self._trigger_period()

    def _emit(self) -> None:
        run = self._run
        assert run is not None
        t, cycle = run.next_time(), run.emitted
        run.emitted += 1
        absolute, delays = self._shot_delays()
        inhibited = frozenset(_INHIBITED_BY[int(self._values["INHB"][0])]
                              if self.inhibit_input else ())
        if inhibited:
            self._insr |= INHIBIT
        self._shot_count += 1
        shot = Shot(
            number=self._shot_count,
            time=t,
            burst_cycle=cycle if run.burst else 0,
            t0_output=not run.burst or cycle == 0 or self._values["BURT"][0] == 0,
            delays=delays,
            inhibited_outputs=inhibited,
        )
        self._shots.append(shot)
        self._subscribers.post((shot,))
        self._insr |= END_OF_DELAY
        if run.emitted >= run.count:
            self._run = None
            self._busy_until = t + max(absolute) / _PS
            if run.burst:
                self._insr |= END_OF_BURST

    def _shot_delays(self) -> tuple[list[int], Mapping[str, float]]:
        """Absolute delays (ps) and the read-only mapping every shot carries, worked out once
        per delay setting (a burst of thousands of shots shares them); `_set_delay` and
        `_reset` replace the lists, which is what invalidates the cache."""
        cached = self._delay_cache
        if cached is None or cached[0] is not self._links or cached[1] is not self._delays:
            absolute = self._absolute_ps(self._links, self._delays) or [0] * len(CHANNELS)
            delays = types.MappingProxyType(
                {name: absolute[i] / _PS for i, name in enumerate(CHANNELS) if i})
            cached = self._delay_cache = (self._links, self._delays, absolute, delays)
        return cached[2], cached[3]

    def _dispatch(self) -> None:
        """Hand new shots to subscribers in order, outside the state lock."""
        self._subscribers.dispatch()

    # ------------------------------------------------------------------ bench and tests

    def next_event_time(self) -> float | None:
        """Clock time of the next scheduled shot or internal trigger, if any."""
        with self._lock:
            times = [t for t in (self._run.next_time() if self._run else None,
                                 self._next_internal) if t is not None]
            return min(times) if times else None

    def take_unsolicited(self) -> list[bytes]:
        """The DG645 never speaks unprompted."""
        return []

    def external_trigger(self, at: float | None = None) -> bool:
        """An edge on the external trigger input, now or at clock time ``at`` (a simulated bench
        forwarding a stage trigger learns of it a little late); True when it started a delay
        cycle."""
        with self._lock:
            now = self._clock() if at is None else min(float(at), self._clock())
            self._advance(now)
            source, accepted = self._source(), False
            if source in (1, 2) or (source in (3, 4) and self._armed):
                self._armed = False
                accepted = self._trigger(now)
        self._dispatch()
        return accepted

    def on_shot(self, callback: Callable[[Shot], None]) -> Callable[[], None]:
        """Call ``callback(shot)`` for every delay cycle; returns an unsubscribe function."""
        return self._subscribers.subscribe(callback)

    @property
    def shots(self) -> tuple[Shot, ...]:
        with self._lock:
            return tuple(self._shots)

    @property
    def shot_count(self) -> int:
        """Delay cycles emitted since the emulator was made (the last `Shot.number`)."""
        with self._lock:
            return self._shot_count

    @property
    def shot_times(self) -> list[float]:
        with self._lock:
            return [shot.time for shot in self._shots]

    def clear_shots(self) -> None:
        with self._lock:
            self._shots.clear()

    def inject_fault(
        self, fault: Fault, payload: bytes | None = None, *, keep: int | None = None
    ) -> None:
        """Queue a fault. GARBAGE sends ``payload`` as is when given; TRUNCATED keeps the first
        ``keep`` bytes of the reply (default half) and its CR LF."""
        with self._lock:
            self._faults.push(fault, payload if fault is Fault.GARBAGE else keep)

    @property
    def transcript(self) -> list[tuple[bytes, bytes | None]]:
        """The latest (line received, reply sent) pairs, terminators stripped from the line."""
        with self._lock:
            return list(self._transcript)

    def set_status_bits(self, bits: int) -> None:
        """Latch INSR bits as if the hardware raised them (e.g. 64 = PLL unlock)."""
        with self._lock:
            self._insr |= bits

    def setting(self, mnemonic: str, index: int = 0) -> float:
        """Current value of a plain setting, e.g. ``setting("LAMP", 1)``."""
        with self._lock:
            return self._values[mnemonic.upper()][index]

    def delay(self, channel: str) -> tuple[str, float]:
        """(reference name, seconds) of a delay channel."""
        with self._lock:
            i = CHANNELS.index(channel.upper())
            return CHANNELS[self._links[i]], self._delays[i] / _PS

    @property
    def errors(self) -> tuple[int, ...]:
        with self._lock:
            return tuple(self._errors)

    @property
    def status_bits(self) -> int:
        """INSR without clearing it."""
        with self._lock:
            return self._insr

    @property
    def trigger_source(self) -> int:
        with self._lock:
            return self._source()

    @property
    def burst_running(self) -> bool:
        with self._lock:
            return self._run is not None

    @property
    def inhibited_outputs(self) -> frozenset[str]:
        with self._lock:
            if not self.inhibit_input:
                return frozenset()
            return frozenset(_INHIBITED_BY[int(self._values["INHB"][0])])

    @property
    def outputs_inhibited(self) -> bool:
        """True when no delay output (AB..GH) can pulse: all gated, or triggers inhibited."""
        with self._lock:
            inhibit = int(self._values["INHB"][0])
            return self.inhibit_input and inhibit in (1, 5)


# ---------------------------------------------------------------------- transports
class DG645TcpServer(TcpServer[DG645Emulator]):
    """The emulator on a localhost TCP socket, like the DG645's raw socket on port 5025."""

    def __init__(self, emulator: DG645Emulator | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(emulator if emulator is not None else DG645Emulator(), host=host,
                         port=port, name="dg645-tcp-emulator", max_wait_s=_MAX_WAIT_S)

    @property
    def resource_name(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"


class DG645PtyServer(PtyServer[DG645Emulator]):
    """The emulator behind a pseudo-terminal: open ``.port`` with real pyserial or pyvisa ASRL.

    Baud rate, parity and RTS/CTS are ignored on a pty. A DISCONNECT fault closes the master
    side, so the client's next read or write fails like an unplugged cable.
    """

    def __init__(self, emulator: DG645Emulator | None = None) -> None:
        super().__init__(emulator if emulator is not None else DG645Emulator(),
                         name="dg645-pty-emulator", max_wait_s=_MAX_WAIT_S)

    @property
    def resource_name(self) -> str:
        return f"ASRL{self.port}::INSTR"


# ---------------------------------------------------------------------- pyserial URL
URL_SCHEME = "dg645sim"
EmulatorSerial = PeerSerial  # the in-process port behind dg645sim:// URLs
register_scheme(URL_SCHEME, factory=DG645Emulator)


def register_emulator(name: str, emulator: DG645Emulator) -> str:
    """Make ``emulator`` reachable as ``dg645sim://<name>``; returns that URL."""
    return register_url(URL_SCHEME, name, emulator)


def unregister_emulator(name: str) -> None:
    unregister_url(URL_SCHEME, name)


__all__: Iterable[str] = (
    "DEFAULT_IDN",
    "DG645Emulator",
    "DG645PtyServer",
    "DG645TcpServer",
    "EmulatorDisconnect",
    "EmulatorSerial",
    "Fault",
    "Shot",
    "register_emulator",
    "unregister_emulator",
)
