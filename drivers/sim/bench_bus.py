"""The simulated bench's wiring: one simulated clock, a trigger bus from the DG645 emulator's
shots to the physics and both AvaSpec fakes, a per-shot ground-truth log and per-shot faults.

* `SimClock`: scaled monotonic time, ``speedup`` simulated seconds per real second, shared by
  every emulator of a simulated bench (driver timeouts stay in real seconds).
* `TriggerBus`: subscribed to `DG645Emulator.on_shot`. For each shot it records at once the
  stage position at the shot's clock time (from the stage emulator's motion, in µm) and applies
  the shot's device faults; spectra are resolved in batches, in order, with one vectorised
  `BenchPhysics.shoot` call for the pending shots, once the burst has ended, ``batch_size``
  shots are pending or the oldest waited ``max_latency_s`` (real). The bus's physics thread
  resolves each batch as soon as it is due, as the instruments work while the host reads
  frames and talks to the other devices; a poll waits for a batch in progress, and arming or
  stopping a spectrometer first resolves every pending shot. Each fake then gets one
  ``trigger`` per shot with its own system's spectrum, its time label = its own device clock
  at the shot (the shared clock plus the fake's offset).
* Wiring: the laser fires on output ``laser_output`` (AB) and the spectrometers trigger on
  ``trigger_output`` (CD); the stage's digital output 1 drives the DDG's external trigger
  input (rising edge), so a stage distance trigger can start or pace a fly scan. A shot
  with the laser output inhibited gives dark frames; with the trigger output inhibited, no
  frames.
* `ShotRecord`: the ground truth of one shot (the DDG's shot number, clock time, x/y µm,
  frames delivered with their device time labels, mineral, faults applied);
  `TriggerBus.shot_for(role, timestamp_s)` maps a frame back to its shot.
* `FaultPlan`: shot number -> `ShotFault` (missed trigger, duplicated / late frame, garbage
  reply, timeout, disconnect, clock wrap; a spectrometer that stops answering or drops off
  the bus for a number of calls or for good), applied by the bus when that shot fires.
* `Simulation`: what `plumelink.drivers.bench.open_bench` exposes as ``bench.simulation``.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .avaspec_fake import TICK_S, AvaSpecFake
from .dg645_emulator import DG645Emulator, Shot
from .serial_link import Fault

log = logging.getLogger(__name__)

DDG = "delay_generator"
STAGE = "stage"
ALL_SPECTROMETERS = "spectrometers"
_WRAP = 1 << 32
STAGE_TRIGGER_OUTPUT = 1  # the stage's digital output wired to the DDG's external trigger
DDG_CHECK_S = 0.0005  # real seconds between unforced checks for due DDG shots


# ---------------------------------------------------------------------------- clock
class SimClock:
    """Scaled monotonic time: ``start_s + speedup * (real seconds since creation)``.

    Callable like ``time.monotonic``, so it is passed as the emulators' ``clock``. Changing
    ``speedup`` keeps the clock continuous.
    """

    def __init__(self, speedup: float = 1.0, *, start_s: float = 0.0,
                 source: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ValueError(f"speedup must be a positive number, got {speedup!r}")
        self._source = source
        self._lock = threading.Lock()
        self._real0 = source()
        self._sim0 = float(start_s)
        self._speedup = float(speedup)

    def __call__(self) -> float:
        return self._sim0 + (self._source() - self._real0) * self._speedup

    @property
    def speedup(self) -> float:
        return self._speedup

    @speedup.setter
    def speedup(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"speedup must be a positive number, got {value!r}")
        with self._lock:
            real = self._source()
            self._sim0 = self._sim0 + (real - self._real0) * self._speedup
            self._real0, self._speedup = real, float(value)

    def real_s(self, sim_s: float) -> float:
        """Real seconds that ``sim_s`` simulated seconds take."""
        return sim_s / self._speedup


# ---------------------------------------------------------------------------- faults
class FaultKind(enum.Enum):
    MISSED_TRIGGER = "missed_trigger"  # spectrometer(s): no frame for this shot
    DUPLICATE_FRAME = "duplicate_frame"  # spectrometer(s): this shot's frame arrives twice
    LATE_FRAME = "late_frame"  # spectrometer(s): this frame (and the queue behind it) is late
    GARBAGE = "garbage"  # DDG/stage: next reply is garbage; spectrometer: a corrupt frame
    TIMEOUT = "timeout"  # DDG/stage: next reply dropped; spectrometer: no more frames this arm
    DISCONNECT = "disconnect"  # the device's link drops (spectrometer: every call fails)
    CLOCK_WRAP = "clock_wrap"  # spectrometer: its u32 clock is set to wrap delay_s later
    UNRESPONSIVE = "unresponsive"  # spectrometer: its calls time out (for `calls` calls)
    UNPLUGGED = "unplugged"  # spectrometer: off the bus (for `calls` calls), session lost


_SPECTROMETER_ONLY = {FaultKind.MISSED_TRIGGER, FaultKind.DUPLICATE_FRAME, FaultKind.LATE_FRAME,
                      FaultKind.CLOCK_WRAP, FaultKind.UNRESPONSIVE, FaultKind.UNPLUGGED}
_FOR_CALLS = {FaultKind.UNRESPONSIVE, FaultKind.UNPLUGGED}


@dataclass(frozen=True)
class ShotFault:
    """One fault applied when a shot fires. ``target`` is a spectrometer role, ``"spectrometers"``
    (every spectrometer), ``"delay_generator"`` or ``"stage"``; ``delay_s`` is how late a
    LATE_FRAME arrives (real seconds), or how long after this shot a CLOCK_WRAP's counter
    wraps (simulated seconds of the device's clock); ``calls`` how many library calls an
    UNRESPONSIVE or UNPLUGGED spectrometer fails before it answers again (None: never)."""

    kind: FaultKind
    target: str = ALL_SPECTROMETERS
    delay_s: float = 0.0
    calls: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise ValueError(f"fault kind must be a FaultKind, got {self.kind!r}")
        if self.kind in _SPECTROMETER_ONLY and self.target in (DDG, STAGE):
            raise ValueError(f"{self.kind.value} applies to spectrometers, not {self.target}")
        if self.kind is FaultKind.LATE_FRAME and not self.delay_s > 0:
            raise ValueError("a late frame needs delay_s > 0")
        if self.kind is FaultKind.CLOCK_WRAP and not self.delay_s >= 0:
            raise ValueError("a clock wrap needs delay_s >= 0")
        if self.calls is not None and (self.kind not in _FOR_CALLS or self.calls < 1):
            raise ValueError(f"calls (>= 1) applies to {sorted(k.value for k in _FOR_CALLS)} "
                             f"faults, got calls={self.calls!r} for {self.kind.value}")

    @classmethod
    def missed(cls, target: str = ALL_SPECTROMETERS) -> ShotFault:
        return cls(FaultKind.MISSED_TRIGGER, target)

    @classmethod
    def duplicate(cls, target: str) -> ShotFault:
        return cls(FaultKind.DUPLICATE_FRAME, target)

    @classmethod
    def late(cls, target: str, delay_s: float) -> ShotFault:
        return cls(FaultKind.LATE_FRAME, target, delay_s)

    @classmethod
    def garbage(cls, target: str) -> ShotFault:
        return cls(FaultKind.GARBAGE, target)

    @classmethod
    def timeout(cls, target: str) -> ShotFault:
        return cls(FaultKind.TIMEOUT, target)

    @classmethod
    def disconnect(cls, target: str) -> ShotFault:
        return cls(FaultKind.DISCONNECT, target)

    @classmethod
    def unresponsive(cls, target: str, calls: int | None = None) -> ShotFault:
        """The spectrometer stops answering (its calls time out) for ``calls`` library calls,
        None: for good; the burst in progress is lost."""
        return cls(FaultKind.UNRESPONSIVE, target, calls=calls)

    @classmethod
    def unplugged(cls, target: str, calls: int | None = None) -> ShotFault:
        """The spectrometer drops off the bus for ``calls`` library calls (None: for good) and
        comes back without its session (the driver must reconnect)."""
        return cls(FaultKind.UNPLUGGED, target, calls=calls)

    @classmethod
    def clock_wrap(cls, target: str, after_s: float) -> ShotFault:
        """The unit's 32-bit time label wraps ``after_s`` of device time after this shot (the
        clock is set there at this shot, before the pairing has learnt anything of it, when
        injected on a scan's first shot)."""
        return cls(FaultKind.CLOCK_WRAP, target, after_s)


class FaultPlan:
    """Plain data: DDG shot number (1-based, `TriggerBus.next_shot_number`) -> faults."""

    def __init__(self, faults: Mapping[int, ShotFault | Sequence[ShotFault]] | None = None
                 ) -> None:
        self._faults: dict[int, list[ShotFault]] = {}
        for shot, value in (faults or {}).items():
            for fault in (value,) if isinstance(value, ShotFault) else value:
                self.add(shot, fault)

    def add(self, shot: int, fault: ShotFault) -> FaultPlan:
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot numbers are integers >= 1, got {shot!r}")
        if not isinstance(fault, ShotFault):
            raise ValueError(f"expected a ShotFault, got {fault!r}")
        self._faults.setdefault(shot, []).append(fault)
        return self

    def at(self, shot: int) -> tuple[ShotFault, ...]:
        return tuple(self._faults.get(shot, ()))

    def pop(self, shot: int) -> tuple[ShotFault, ...]:
        return tuple(self._faults.pop(shot, ()))

    def targets(self) -> set[str]:
        return {f.target for faults in self._faults.values() for f in faults}

    def items(self) -> list[tuple[int, tuple[ShotFault, ...]]]:
        return [(shot, tuple(faults)) for shot, faults in sorted(self._faults.items())]

    def __len__(self) -> int:
        return sum(len(v) for v in self._faults.values())


# ---------------------------------------------------------------------------- ground truth
@dataclass(slots=True)
class ShotRecord:
    """Ground truth of one DDG shot. ``frames`` maps each spectrometer role that got a frame to
    its device time label in seconds (u32 10-µs ticks x 1e-5, as the driver reports it before
    any wrap); ``copies`` how many frames it got (2 for a duplicate)."""

    number: int
    time_s: float
    burst_cycle: int
    x_um: float
    y_um: float
    laser_fired: bool
    triggered: bool
    faults: tuple[ShotFault, ...] = ()
    resolved: bool = False
    frames: dict[str, float] = field(default_factory=dict)
    copies: dict[str, int] = field(default_factory=dict)
    physics_shot: int | None = None
    physics_batch: int | None = None  # which `BenchPhysics.shoot` call made its spectra
    mineral: str | None = None
    mixed: bool | None = None
    received_at: float = 0.0  # real time.monotonic() when the bus saw the shot


@dataclass
class SpectrometerTap:
    """One fake on the bus: its physics system, the sensor pixel of the profile's pixel 0,
    its device clock offset and the dark level outside the profile range."""

    role: str
    fake: AvaSpecFake
    system: str | None  # physics system name, None: dark frames only
    first_pixel: int = 0
    clock_offset_s: float = 0.0
    dark_counts: int = 1000


# ---------------------------------------------------------------------------- the bus
class TriggerBus:
    """DG645 shots -> stage position -> physics -> both AvaSpec fakes (see the module doc)."""

    laser_output = "AB"
    trigger_output = "CD"

    def __init__(
        self,
        ddg: DG645Emulator,
        taps: Iterable[SpectrometerTap],
        *,
        physics: Callable[[], Any],
        stage_position: Callable[[float], tuple[float, float]] | None = None,
        stage: Any = None,
        batch_size: int = 500,
        max_latency_s: float = 0.05,
    ) -> None:
        self.ddg = ddg
        self.stage = stage
        self.taps = {tap.role: tap for tap in taps}
        self._physics = physics
        self._stage_position = stage_position or (lambda t: (0.0, 0.0))
        self.batch_size = int(batch_size)
        self.max_latency_s = float(max_latency_s)
        self._lock = threading.RLock()  # shot records, pending list, label index
        self._shots_arrived = threading.Condition(self._lock)
        self._resolving = threading.Lock()  # one batch at a time, delivered in shot order
        self._pending: list[ShotRecord] = []
        self._log: list[ShotRecord] = []
        self._by_label: dict[tuple[str, int], int] = {}
        self._plan = FaultPlan()
        self._dark_rows: dict[str, np.ndarray] = {}
        self._closed = False
        self._next_ddg_check = 0.0  # real time.monotonic()
        self._unsubscribe = ddg.on_shot(self._on_shot)
        for tap in self.taps.values():
            tap.fake.on_call = self._on_fake_call
        self._worker = threading.Thread(target=self._resolve_when_due, daemon=True,
                                        name="sim-bench-physics")
        self._worker.start()

    # --- public -------------------------------------------------------------------------

    @property
    def next_shot_number(self) -> int:
        """The DDG number the next shot will carry (1-based count since the emulator start)."""
        self.ddg.update()
        return self.ddg.shot_count + 1

    def inject(self, plan: FaultPlan | Mapping[int, ShotFault | Sequence[ShotFault]]) -> None:
        """Add faults to apply when the given shots fire (targets are checked now)."""
        plan = plan if isinstance(plan, FaultPlan) else FaultPlan(plan)
        known = {DDG, ALL_SPECTROMETERS, *self.taps} | ({STAGE} if self.stage is not None
                                                        else set())
        unknown = plan.targets() - known
        if unknown:
            raise ValueError(f"unknown fault targets {sorted(unknown)}; known: {sorted(known)}")
        with self._lock:
            for shot, faults in plan.items():
                for fault in faults:
                    self._plan.add(shot, fault)

    @property
    def pending_faults(self) -> FaultPlan:
        with self._lock:
            copy = FaultPlan()
            for shot, faults in self._plan.items():
                for fault in faults:
                    copy.add(shot, fault)
            return copy

    def flush(self) -> None:
        """Resolve every shot fired so far (physics and frames)."""
        self._resolve(force=True)

    @property
    def pending_shots(self) -> int:
        """Shots fired whose spectra are not computed yet (without resolving them)."""
        with self._lock:
            return len(self._pending)

    @property
    def shot_log(self) -> list[ShotRecord]:
        """Every shot so far, oldest first (resolved first)."""
        self.flush()
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        self.flush()
        with self._lock:
            self._log.clear()
            self._by_label.clear()

    def shot_for(self, role: str, timestamp_s: float) -> int | None:
        """The DDG shot number whose frame on ``role`` carried this device time label."""
        ticks = round(timestamp_s / TICK_S) % _WRAP
        with self._lock:
            return self._by_label.get((role, ticks))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._shots_arrived.notify_all()
        self._unsubscribe()
        if self._worker is not threading.current_thread():
            self._worker.join(5.0)
        for tap in self.taps.values():
            if tap.fake.on_call == self._on_fake_call:
                tap.fake.on_call = None

    # --- shots in -----------------------------------------------------------------------

    def _on_shot(self, shot: Shot) -> None:
        x, y = self._stage_position(shot.time)
        inhibited = shot.inhibited_outputs
        record = ShotRecord(
            number=shot.number, time_s=shot.time, burst_cycle=shot.burst_cycle,
            x_um=float(x), y_um=float(y),
            laser_fired=self.laser_output not in inhibited,
            triggered=self.trigger_output not in inhibited,
            received_at=time.monotonic(),
        )
        with self._lock:
            record.faults = self._plan.pop(shot.number)
            for fault in record.faults:
                if fault.target in (DDG, STAGE):
                    self._device_fault(fault)
            self._pending.append(record)
            self._log.append(record)
            self._shots_arrived.notify()

    def _device_fault(self, fault: ShotFault) -> None:
        emulator = self.ddg if fault.target == DDG else self.stage
        kind = {FaultKind.GARBAGE: Fault.GARBAGE, FaultKind.TIMEOUT: Fault.NO_REPLY,
                FaultKind.DISCONNECT: Fault.DISCONNECT}[fault.kind]
        emulator.inject_fault(kind)

    def _on_fake_call(self, name: str) -> None:
        if name == "AVS_PollScan":  # GetScopeData only takes what a poll found ready
            self._resolve(force=False)
        elif name in ("AVS_PrepareMeasure", "AVS_Measure", "AVS_StopMeasure", "AVS_Deactivate"):
            self._resolve(force=True)

    # --- resolution -----------------------------------------------------------------------

    def _due(self) -> bool:
        if len(self._pending) >= self.batch_size:
            return True
        if time.monotonic() - self._pending[0].received_at >= self.max_latency_s:
            return True
        return not self.ddg.burst_running

    def _resolve(self, *, force: bool) -> None:
        if self._closed:
            return
        # A frame loop polls once per frame: ask the DDG for due shots at most every
        # DDG_CHECK_S (real) unless forced, so polls cost next to nothing between shots.
        real = time.monotonic()
        if force or real >= self._next_ddg_check:
            self._next_ddg_check = real + DDG_CHECK_S
            due = self.ddg.next_event_time()
            if due is not None and due <= self.ddg.now():
                self.ddg.update()  # outside our lock: the DDG hands its shots to _on_shot
        self._resolve_pending(force=force)

    def _resolve_pending(self, *, force: bool) -> None:
        # waits for a batch the physics thread is resolving: its frames come first
        with self._resolving:
            with self._lock:
                if self._closed or not self._pending or not (force or self._due()):
                    return
                if force:
                    batch, self._pending = self._pending, []
                else:
                    batch = self._pending[: self.batch_size]
                    del self._pending[: self.batch_size]
            self._deliver(batch)

    def _resolve_when_due(self) -> None:
        """The physics thread: resolve each batch as soon as it is due."""
        while True:
            with self._lock:
                while not self._closed:
                    if self._pending:
                        if self._due():
                            break
                        waited = time.monotonic() - self._pending[0].received_at
                        self._shots_arrived.wait(max(self.max_latency_s - waited, 1e-3))
                    else:
                        self._shots_arrived.wait()
                if self._closed:
                    return
            try:
                self._resolve_pending(force=False)
            except Exception:  # the next poll resolves (and reports) it again
                log.exception("simulated bench: resolving shots failed")
                time.sleep(self.max_latency_s)

    def _deliver(self, batch: list[ShotRecord]) -> None:
        fired = [r for r in batch if r.laser_fired and r.triggered]
        spectra: dict[str, np.ndarray] = {}
        rows: dict[int, int] = {}
        if fired:
            block = self._physics().shoot(np.array([r.x_um for r in fired]),
                                          np.array([r.y_um for r in fired]))
            names = self._physics().mineral_names
            self._batches = getattr(self, "_batches", 0) + 1
            for i, record in enumerate(fired):
                rows[record.number] = i
                record.physics_shot = int(block.shot_id[i])
                record.physics_batch = self._batches - 1
                record.mineral = str(names[int(block.truth.mineral[i])])
                record.mixed = bool(block.truth.mixed[i])
            for tap in self.taps.values():
                if tap.system is not None:
                    spectra[tap.role] = self._full_sensor(tap, block.spectra[tap.system])
        for record in batch:
            record.resolved = True
            if not record.triggered:
                continue
            for tap in self.taps.values():
                copies = (self._apply_spectrometer_faults(tap, record)
                          if record.faults else 1)
                row = rows.get(record.number)
                if row is not None and tap.role in spectra:
                    spectrum = spectra[tap.role][row]
                else:
                    spectrum = self._dark_row(tap)
                label_s = record.time_s + tap.clock_offset_s
                fake = tap.fake
                if fake.trigger(spectrum, label_s):
                    ticks = (fake.start_ticks + round(label_s / TICK_S)) % _WRAP
                    with self._lock:
                        record.frames[tap.role] = ticks * TICK_S
                        record.copies[tap.role] = copies
                        self._by_label[(tap.role, ticks)] = record.number

    def _apply_spectrometer_faults(self, tap: SpectrometerTap, record: ShotRecord) -> int:
        """Set the fake up for this shot's faults; returns how many copies its frame has."""
        fake = tap.fake
        copies = 1
        for fault in record.faults:
            if fault.target not in (tap.role, ALL_SPECTROMETERS):
                continue
            if fault.kind is FaultKind.MISSED_TRIGGER:
                fake.miss_triggers(1)
            elif fault.kind is FaultKind.DUPLICATE_FRAME:
                fake.duplicate_next_frame()
                copies = 2
            elif fault.kind is FaultKind.LATE_FRAME:
                fake.delay_next_frame(fault.delay_s)
            elif fault.kind is FaultKind.GARBAGE:
                fake.garble_next_frame()
            elif fault.kind is FaultKind.TIMEOUT:
                fake.stop_frames()
            elif fault.kind is FaultKind.DISCONNECT:
                fake.disconnect()
            elif fault.kind is FaultKind.UNRESPONSIVE:
                fake.stop_answering(fault.calls)
            elif fault.kind is FaultKind.UNPLUGGED:
                fake.unplug(fault.calls)
            elif fault.kind is FaultKind.CLOCK_WRAP:
                wrap_s = _WRAP * TICK_S - fake.start_ticks * TICK_S
                tap.clock_offset_s = wrap_s - fault.delay_s - record.time_s
        return copies

    def _dark_row(self, tap: SpectrometerTap) -> np.ndarray:
        row = self._dark_rows.get(tap.role)
        if row is None:
            row = np.full(tap.fake.num_pixels, tap.dark_counts, dtype=np.uint16)
            self._dark_rows[tap.role] = row
        return row

    def _full_sensor(self, tap: SpectrometerTap, spectra: np.ndarray) -> np.ndarray:
        """The profile's spectra placed on the whole sensor; dark counts elsewhere."""
        n, width = spectra.shape
        full = np.empty((n, tap.fake.num_pixels), dtype=np.uint16)
        full[:] = self._dark_row(tap)
        stop = min(tap.first_pixel + width, tap.fake.num_pixels)
        full[:, tap.first_pixel:stop] = spectra[:, : stop - tap.first_pixel]
        full.flags.writeable = False  # the fake keeps views of its rows instead of copies
        return full


# ---------------------------------------------------------------------------- the bench side
@dataclass(frozen=True)
class SimulationSettings:
    """The ``[simulation]`` table of a bench profile."""

    seed: int = 0
    day: int = 0
    run: int = 0
    speedup: float = 1.0
    batch_size: int = 500
    max_latency_s: float = 0.05


class Simulation:
    """Everything simulated on a bench: the shared clock, the physics (built on first use,
    ~0.7 s), the emulators attached by `open_bench` and, once `start` ran, the trigger bus."""

    def __init__(self, settings: SimulationSettings | None = None) -> None:
        self.settings = settings or SimulationSettings()
        self.clock = SimClock(self.settings.speedup)
        self.bus: TriggerBus | None = None
        self.ddg: DG645Emulator | None = None
        self.stage: Any = None
        self._stage_position: Callable[[float], tuple[float, float]] | None = None
        self._taps: list[SpectrometerTap] = []
        self._physics: Any = None
        self._systems: list[str] = []
        self._physics_lock = threading.Lock()
        self._unsubscribe: list[Callable[[], None]] = []

    @property
    def physics(self) -> Any:
        """The `BenchPhysics` of this bench (seed, day, run of the settings)."""
        with self._physics_lock:
            if self._physics is None:
                from .physics import BenchPhysics

                s = self.settings
                systems = tuple(dict.fromkeys(self._systems)) or ("primary", "secondary")
                self._physics = BenchPhysics(seed=s.seed, day=s.day, run=s.run, systems=systems)
            return self._physics

    def attach_ddg(self, emulator: DG645Emulator) -> None:
        self.ddg = emulator

    def attach_zaber(self, emulator: Any, axes: Mapping[str, tuple[int, int]],
                     microstep_um: Mapping[str, float]) -> None:
        """``axes`` maps "x"/"y" to (device, axis number); positions in microsteps -> µm."""
        self.stage = emulator

        def position(t: float) -> tuple[float, float]:
            return tuple(emulator.position_at(*axes[a], t) * microstep_um[a]  # type: ignore
                         for a in ("x", "y"))

        self._stage_position = position
        self._unsubscribe.append(emulator.on_trigger(self._stage_trigger))

    def _stage_trigger(self, event: Any) -> None:
        """Wiring: the stage's digital output `STAGE_TRIGGER_OUTPUT` drives the DDG's external
        trigger input, which fires on a rising edge (fly scans)."""
        if event.output == STAGE_TRIGGER_OUTPUT and event.level == 1 and self.ddg is not None:
            self.ddg.external_trigger(at=event.time)

    def attach_pi(self, emulator: Any, axes: Mapping[str, str]) -> None:
        """``axes`` maps "x"/"y" to GCS axis identifiers; positions in mm -> µm."""
        self.stage = emulator

        def position(t: float) -> tuple[float, float]:
            return (emulator.position_at(axes["x"], t) * 1000.0,
                    emulator.position_at(axes["y"], t) * 1000.0)

        self._stage_position = position

    def attach_spectrometer(self, tap: SpectrometerTap) -> None:
        self._taps.append(tap)
        if tap.system is not None:
            self._systems.append(tap.system)

    def start(self) -> None:
        """Wire the bus (needs the DDG emulator; without one there are no shots)."""
        if self.ddg is None or self.bus is not None:
            return
        s = self.settings
        self.bus = TriggerBus(self.ddg, self._taps, physics=lambda: self.physics,
                              stage_position=self._stage_position, stage=self.stage,
                              batch_size=s.batch_size, max_latency_s=s.max_latency_s)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self.bus is not None:
            self.bus.close()

    # --- conveniences for tests and demos ------------------------------------------------

    def _need_bus(self) -> TriggerBus:
        if self.bus is None:
            raise RuntimeError("this bench has no simulated delay generator, so no trigger bus")
        return self.bus

    @property
    def shot_log(self) -> list[ShotRecord]:
        return self._need_bus().shot_log

    def inject(self, plan: FaultPlan | Mapping[int, ShotFault | Sequence[ShotFault]]) -> None:
        self._need_bus().inject(plan)

    @property
    def next_shot_number(self) -> int:
        return self._need_bus().next_shot_number


__all__ = [
    "ALL_SPECTROMETERS",
    "DDG",
    "STAGE",
    "FaultKind",
    "FaultPlan",
    "ShotFault",
    "ShotRecord",
    "SimClock",
    "Simulation",
    "SimulationSettings",
    "SpectrometerTap",
    "TriggerBus",
]
