"""The acquisition engine: executes a raster plan on an open bench and streams paired raster
lines into a map file.

One engine owns the hardware for the whole scan and alone handles pause, resume, abort and
cleanup (STYLE.md, the Bluesky idea). Per raster line it moves the stage, arms both
spectrometers, fires DDG bursts and pairs the frames by shot (`pairing`); every finished line
is appended and flushed (`MapWriter`), then published to subscribers (`line_events`), on the
writer thread of `line_sink` while the next line is acquired.

Safety: whatever ends the scan (its end, an instrument error, `ScanHandle.abort`, Ctrl-C) the
DDG outputs are disabled first (an abort also stops the stage), then the file is closed as
complete or interrupted with the reason. Nothing already flushed is ever lost, and
`acquire(..., resume=True)` continues an interrupted map from its first unfinished line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plumelink.drivers.bench import Bench, open_bench
from plumelink.drivers.dg645 import StatusFlag
from plumelink.drivers.errors import InstrumentTimeout
from plumelink.drivers.protocols import BurstStatus, Frames

from . import map_layout as L
from .line_events import LineBroadcaster, LineEvent, ScanProgress, Subscription
from .line_sink import FinishedLine, LineSink
from .map_writer import DEFAULT_COMPRESSION, MapWriter
from .pairing import REASONS, SHOT_AMBIGUOUS, Pairer, SystemPairing
from .plan import LinePlan, RasterPlan, make_plan
from .raster_line import RasterLine, SystemLine
from .scan import ScanConfig

log = logging.getLogger(__name__)

SYSTEMS = ("primary", "secondary")
STAGE_TIMEOUT_MARGIN_S = 2.0  # beyond the planned move time
FRAME_TIMEOUT_MARGIN_S = 0.5  # beyond the burst's own duration (real seconds)
Q_SWITCH_WIDTH_S = 10e-6  # AB output pulse driving the laser Q-switch
HOME_TIMEOUT_S = 120.0
ABORT_CHECK_S = 0.25  # while the stage moves, an abort is noticed within this (real) time
# a fly scan moves to the next pass's start at the fly speed when that costs at most this much
# (simulated) time more than the stage speed: two speed commands per line saved on snakes
REPOSITION_SLACK_S = 0.02


class ScanAborted(Exception):
    """The scan was stopped on request (`ScanHandle.abort`)."""


class ScanHandle:
    """Pause, resume and abort a running scan from any thread (the GUI, a signal handler).

    Pausing takes effect between raster lines (a line in flight is finished, so its pairs stay
    complete); aborting disables the DDG outputs at once and ends the scan as interrupted.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._aborted = threading.Event()
        self.reason = ""
        self._on_abort: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def abort(self, reason: str = "aborted by the operator") -> None:
        with self._lock:
            if not self._aborted.is_set():
                self.reason = reason
                self._aborted.set()
            callbacks = tuple(self._on_abort)
        self._running.set()  # wake a paused engine so it can clean up
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("abort: safety callback failed")

    def _add_on_abort(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._on_abort.append(callback)

    def _wait_if_paused(self) -> None:
        while not self._running.wait(0.5):
            pass
        if self.aborted:
            raise ScanAborted(self.reason)

    def _check(self) -> None:
        if self.aborted:
            raise ScanAborted(self.reason)


@dataclass(frozen=True)
class AcquisitionResult:
    """How a scan ended."""

    path: Path
    status: str  # "complete" or "interrupted"
    reason: str
    lines_written: int  # by this run
    lines_total: int
    shots: int
    invalid_primary: int
    invalid_secondary: int
    elapsed_s: float
    dropped_events: int = 0


@dataclass
class _SpotShots:
    """The frames of one spot's burst after pairing."""

    pairing: dict[str, SystemPairing]
    frames: dict[str, Frames]


@dataclass
class _Counters:
    shots: int = 0
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYSTEMS, 0))
    frames_seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYSTEMS, 0))


def _speedup(bench: Bench) -> float:
    """Simulated seconds per real second on a simulated bench (1 on hardware)."""
    simulation = getattr(bench, "simulation", None)
    clock = getattr(simulation, "clock", None)
    return float(getattr(clock, "speedup", 1.0) or 1.0)


def _moving(here: tuple[float, float], target: tuple[float, float]
            ) -> tuple[float | None, float | None]:
    """A move's targets with None for an axis already there (one command fewer per axis)."""
    x, y = (None if t == h else t for h, t in zip(here, target, strict=True))
    return x, y


def _travel_um(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The longer axis's travel between two positions (both axes move at the same speed)."""
    return max(abs(b[0] - a[0]), abs(b[1] - a[1]))


def _axes(targets: tuple[float | None, float | None]) -> tuple[str, ...]:
    """The axes a move commands (the others need no polling)."""
    return tuple(a for a, t in zip(("x", "y"), targets, strict=True) if t is not None)


class Engine:
    """Runs one scan. Use `acquire` (blocking) or `start_acquisition` (worker thread)."""

    def __init__(self, scan: ScanConfig, *, out: str | Path | None = None, resume: bool = False,
                 handle: ScanHandle | None = None, broadcaster: LineBroadcaster | None = None,
                 compression: str | None = DEFAULT_COMPRESSION, home: bool = True) -> None:
        missing = [s for s in SYSTEMS if s not in scan.spectrometers]
        if missing:
            raise ValueError(f"{scan.source}: the scan has no [spectrometers.{missing[0]}] "
                             f"settings; a paired scan needs settings for {list(SYSTEMS)}")
        self.scan = scan
        self.plan: RasterPlan = make_plan(scan)
        self.path = Path(out) if out is not None else scan.output_path()
        self.resume = resume
        self.handle = handle or ScanHandle()
        self.events = broadcaster or LineBroadcaster()
        self.compression = compression
        self.home = home
        self._pairer = Pairer(SYSTEMS)
        self._counters = _Counters()
        self._period_s = 1.0 / scan.rate_hz
        self._ddg_state: dict[str, Any] = {}  # what _ddg_mode last set
        self._stage_at: tuple[float, float] | None = None  # where the last move ended (µm)
        self._stage_speed: float | None = None  # what the engine last set (µm/s)
        self._prepared: int | None = None  # the fly line whose pass is set up (`_fly_prepare`)
        self._n_px: dict[str, int] = {}  # pixels of each system's spectra
        self._shots_planned = self.plan.total_shots

    # ------------------------------------------------------------------ top level
    def run(self, bench: Bench | None = None) -> AcquisitionResult:
        """Open the bench (unless given one) and execute the whole plan."""
        if bench is not None:
            return self._run_on(bench)
        with open_bench(self.scan.bench) as opened:
            return self._run_on(opened)

    def _run_on(self, bench: Bench) -> AcquisitionResult:
        missing = [s for s in SYSTEMS if s not in bench.spectrometers]
        if missing:
            raise ValueError(f"bench {bench.profile.name!r} has no {missing} spectrometer; "
                             f"a paired scan needs both {list(SYSTEMS)}")
        self.handle._add_on_abort(bench.delay_generator.disable_outputs)  # first
        self.handle._add_on_abort(bench.stage.stop)  # ends a move or homing in progress
        writer = self._open_writer(bench)
        started = time.monotonic()
        written = 0
        sink: LineSink | None = None
        status, reason = L.STATUS_COMPLETE, ""
        try:
            self._configure(bench)
            if self.home:
                # absolute moves need a reference; done with the laser still disabled
                bench.stage.home()
                self._wait_stage(bench.stage, 0.0, HOME_TIMEOUT_S)
            self.handle._check()  # an abort during homing: the outputs stay disabled
            bench.delay_generator.enable_outputs()
            done = writer.raster_lines_done
            # what this run shoots (a resumed map only its unfinished lines): shots/s and ETA
            self._shots_planned = sum(ln.n_shots for ln in self.plan.lines if not done[ln.index])
            # a vertical order's raster line is a column at fixed x of the (ny, nx) map
            append = writer.append_column if self.plan.line_axis == "x" else writer.append_line
            sink = LineSink(append, lambda finished: self._publish(finished, started))
            todo = [line for line in self.plan.lines if not done[line.index]]
            for i, line in enumerate(todo):
                self.handle._wait_if_paused()
                next_line = todo[i + 1] if i + 1 < len(todo) else None
                raster_line, reasons, deferred = self._acquire_line(bench, line, next_line)
                done[line.index] = True
                sink.put(FinishedLine(raster_line, reasons, self._progress_counts(done)))
                if deferred is not None:
                    raise deferred
            sink.close()
            sink.raise_error()
        except BaseException as exc:
            status = L.STATUS_INTERRUPTED
            reason = self.handle.reason if isinstance(exc, ScanAborted) else (
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise
        finally:
            with contextlib.suppress(Exception):
                bench.delay_generator.disable_outputs()  # first, whatever happened
            with contextlib.suppress(Exception):  # a fly scan may end at the fly speed
                self._set_speed(bench.stage, self.scan.stage.speed_um_s)
            if sink is not None:
                sink.close()  # lines already finished reach the file before it is closed
                written = sink.lines_written  # a write error was raised in the try above
            try:
                writer.close(status, reason)
            finally:
                self.events.close()
            log.info("scan %s: %s after %d lines%s", self.path, status, written,
                     f" ({reason})" if reason else "")
            self._result = AcquisitionResult(
                self.path, status, reason, written, self.plan.n_lines, self._counters.shots,
                self._counters.invalid["primary"], self._counters.invalid["secondary"],
                time.monotonic() - started)
        return self._result

    def _open_writer(self, bench: Bench) -> MapWriter:
        if self.resume:
            writer = MapWriter.resume(self.path)
            grid = (self.plan.y_um.size, self.plan.x_um.size)
            vertical = self.plan.line_axis == "x"
            if writer.shape != grid or writer.vertical != vertical:
                writer.close(L.STATUS_INTERRUPTED, "resume refused: the scan does not match")
                raise ValueError(
                    f"cannot resume {self.path}: it holds a {writer.shape[0]} x "
                    f"{writer.shape[1]} (y x x) map of "
                    f"{'columns' if writer.vertical else 'rows'} but the scan plans "
                    f"{grid[0]} x {grid[1]} of {'columns' if vertical else 'rows'} "
                    f"({self.plan.order})")
            return writer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        plan = self.plan
        axes = {s: bench.spectrometers[s].wavelength_nm() for s in SYSTEMS}
        return MapWriter.create(
            self.path, ny=plan.y_um.size, nx=plan.x_um.size,
            primary_wavelength_nm=axes["primary"], secondary_wavelength_nm=axes["secondary"],
            x_um=plan.x_um, y_um=plan.y_um, sample=self.scan.sample,
            operator=self.scan.operator, scan_config_toml=self.scan.text,
            raster_order=plan.order, settings=self._settings(bench),
            compression=self.compression)

    def _settings(self, bench: Bench) -> dict[str, Any]:
        snapshot = bench.settings_snapshot()
        scan = self.scan
        snapshot["acquisition"] = {
            "mode": scan.mode, "order": scan.order, "shots_per_spot": scan.shots_per_spot,
            "rate_hz": scan.rate_hz, "laser_delay_s": scan.ddg.laser_delay_s,
            "spectrometer_delay_s": scan.ddg.spectrometer_delay_s, "gate_s": scan.ddg.gate_s,
            "spot_spectrum": ("mean of the shots valid on both systems"
                              if scan.shots_per_spot > 1 else "one shot"),
        }
        return snapshot

    def _configure(self, bench: Bench) -> None:
        """Put the scan's DDG delays, burst and spectrometer settings on the devices."""
        ddg, d = bench.delay_generator, self.scan.ddg
        ddg.set_delay("A", "T0", d.laser_delay_s)
        ddg.set_delay("B", "A", Q_SWITCH_WIDTH_S)
        ddg.set_delay("C", "A", d.spectrometer_delay_s)
        ddg.set_delay("D", "C", d.gate_s)
        if hasattr(ddg, "set_trigger_source"):
            ddg.set_trigger_source("SINGLE_SHOT")
            self._ddg_state["source"] = "SINGLE_SHOT"
        if self.scan.mode == "step":
            ddg.configure_burst(self.scan.shots_per_spot, self._period_s)
            self._ddg_state["burst"] = (self.scan.shots_per_spot, self._period_s)
        for system in SYSTEMS:
            s = self.scan.spectrometers[system]
            bench.spectrometers[system].configure(s.integration_time_s, s.delay_s, s.averages)
            self._n_px[system] = bench.spectrometers[system].wavelength_nm().size
        self._set_speed(bench.stage, self.scan.stage.speed_um_s)

    def _set_speed(self, stage: Any, um_per_s: float) -> None:
        """Set the stage's top speed unless it is already what this engine last set."""
        if self._stage_speed != um_per_s:
            self._stage_speed = None  # unknown if the command fails
            stage.set_speed(um_per_s)
            self._stage_speed = um_per_s

    # ------------------------------------------------------------------ one line
    def _acquire_line(self, bench: Bench, line: LinePlan, next_line: LinePlan | None = None
                      ) -> tuple[RasterLine, dict, BaseException | None]:
        """One raster line; with its error to raise once it is recorded (fly scans set up the
        next pass while reading this one's frames: an error there must not lose this line)."""
        n = line.n_spots
        spectra = {s: np.zeros((n, self._n_px[s]), np.uint16) for s in SYSTEMS}
        valid = {s: np.zeros(n, bool) for s in SYSTEMS}
        frame_id = {s: np.full(n, -1, np.int64) for s in SYSTEMS}
        stamp = {s: np.full(n, np.nan) for s in SYSTEMS}
        x_meas, y_meas = np.full(n, np.nan), np.full(n, np.nan)
        shot_id = line.first_shot + line.shots_per_spot * np.arange(n, dtype=np.int64)
        reasons: dict[str, list[str]] = {s: [] for s in SYSTEMS}
        if line.fly is not None:
            shots, deferred = self._fly(bench, line, next_line)
            cols = line.storage_index
            x_meas[cols], y_meas[cols] = line.x_um, line.y_um  # from the trigger position
            self._store_fly(shots, line, spectra, valid, frame_id, stamp, reasons)
            return (*self._line(line, spectra, valid, frame_id, stamp, x_meas, y_meas,
                                shot_id, reasons), deferred)
        speedup = _speedup(bench)
        settle_s = self.scan.stage.settle_s / speedup
        for j in range(n):
            self.handle._check()
            x, y = float(line.x_um[j]), float(line.y_um[j])
            xm, ym = self._move(bench, x, y, speedup)
            if settle_s > 0:
                time.sleep(settle_s)
            shots = self._shoot(bench, line.shots_per_spot)
            if self.scan.reshoot_invalid and not all(self._spot_valid(shots).values()):
                log.info("line %d spot %d: re-shooting (%s)", line.index, j,
                         self._why(shots))
                shots = self._shoot(bench, line.shots_per_spot)
            col = int(line.storage_index[j])
            x_meas[col], y_meas[col] = xm, ym
            self._store_spot(shots, col, spectra, valid, frame_id, stamp, reasons)
        return (*self._line(line, spectra, valid, frame_id, stamp, x_meas, y_meas, shot_id,
                            reasons), None)

    def _line(self, line: LinePlan, spectra: dict, valid: dict, frame_id: dict, stamp: dict,
              x_meas: np.ndarray, y_meas: np.ndarray, shot_id: np.ndarray, reasons: dict
              ) -> tuple[RasterLine, dict]:
        systems = {s: SystemLine(spectra[s], valid[s], frame_id[s], stamp[s]) for s in SYSTEMS}
        for s in SYSTEMS:
            self._counters.invalid[s] += int((~valid[s]).sum())
        order = np.argsort(line.storage_index)
        return RasterLine(
            index=line.index, x_um=line.x_um[order].astype(np.float64),
            y_um=line.y_um[order].astype(np.float64), x_measured_um=x_meas,
            y_measured_um=y_meas, shot_id=self._storage_shot_ids(line, shot_id),
            primary=systems["primary"], secondary=systems["secondary"]), reasons

    def _fly(self, bench: Bench, line: LinePlan, next_line: LinePlan | None
             ) -> tuple[_SpotShots, BaseException | None]:
        """One constant-speed pass, then its frames. ddg-clock: the stage's distance trigger
        (output 1, wired to the DDG's external trigger input) starts a DDG burst of one shot per
        spot at the first spot; the DDG clock spaces the shots one step apart at the fly speed.
        stage-distance: `_stage_distance_pass`.

        While the pass's frames are read out (on the simulated bench: computed), the stage
        already goes to the next pass's start and its trigger is set up (`_fly_prepare`). An
        error or abort there is returned, to be raised once this line is recorded."""
        fly = line.fly
        assert fly is not None
        stage, ddg = bench.stage, bench.delay_generator
        needs = [(stage, "configure_distance_trigger"), (stage, "disable_distance_trigger"),
                 (stage, "set_digital_output"), (ddg, "set_trigger_source")]
        if fly.trigger == "stage-distance":
            needs += [(ddg, "set_burst_mode"), (ddg, "read_status")]
        for device, needed in needs:
            if not hasattr(device, needed):
                raise NotImplementedError(
                    f"{self.scan.source}: fly scans with trigger = {fly.trigger!r} need a stage "
                    f"distance trigger wired to the DDG's external trigger input; "
                    f"{type(device).__name__} has no {needed}()")
        speedup = _speedup(bench)
        axis = self._fly_axis
        if self._prepared != line.index:
            self._fly_prepare(bench, line)
        self._prepared = None
        n = line.n_spots
        if fly.trigger == "stage-distance":
            status = self._stage_distance_pass(bench, line, speedup)
            period_s: float | None = fly.trigger_spacing_um / fly.speed_um_s
        else:
            period_s = None
            self._ddg_mode(ddg, "SINGLE_SHOT_EXTERNAL_RISING", (n, self._period_s))
            for system in SYSTEMS:
                bench.spectrometers[system].arm(n, "hardware")
            ddg.fire()  # arms the single-shot external trigger
            try:
                self._pass_move(stage, line, speedup)
                status = ddg.wait_end_of_burst(n * self._period_s / speedup
                                               + FRAME_TIMEOUT_MARGIN_S)
            finally:
                stage.disable_distance_trigger(axis)
            if status.aborted:
                self.handle._check()
        deferred: BaseException | None = None
        if next_line is not None and next_line.fly is not None:
            try:
                self._fly_prepare(bench, next_line)
                self._prepared = next_line.index
            except BaseException as exc:  # this pass's frames are recorded first
                deferred = exc
        return self._collect(bench, n, status, period_s), deferred

    @property
    def _fly_axis(self) -> str:
        return "x" if self.plan.line_axis == "y" else "y"

    def _fly_prepare(self, bench: Bench, line: LinePlan) -> None:
        """Move to a pass's start and set up the stage's distance trigger for it.

        ddg-clock: output 1 low, one toggle (a rising edge) after the run-up. stage-distance:
        output 1 toggles every half step, starting high, so its rising edges fall one step
        apart from the pass start (one step before the first spot): on every spot, whatever
        the speed. The output is set high while the DDG still ignores its input (single-shot
        source), so that edge fires nothing."""
        fly = line.fly
        assert fly is not None
        stage = bench.stage
        speedup = _speedup(bench)
        axis = self._fly_axis
        self._reposition_speed(stage, fly.start_um, fly.speed_um_s)
        self._move(bench, *fly.start_um, speedup, measure=False)
        if self.scan.stage.settle_s > 0:
            time.sleep(self.scan.stage.settle_s / speedup)
        if fly.trigger == "stage-distance":
            step = fly.trigger_spacing_um
            stage.set_digital_output(axis, 1, 1)
            half = stage.configure_distance_trigger(axis, step / 2, output=1,
                                                    count=2 * line.n_spots)
            if abs(2 * half - step) > 1e-6 * step:
                stage.disable_distance_trigger(axis)
                raise ValueError(
                    f"{self.scan.source}: region.step_um = {step:g} µm is not an even number "
                    f"of stage microsteps; a stage-distance trigger toggles every half step "
                    f"({half:g} µm possible)")
        else:
            k = 0 if axis == "x" else 1
            run_up = abs(float((line.x_um, line.y_um)[k][0]) - fly.start_um[k])
            stage.set_digital_output(axis, 1, 0)
            stage.configure_distance_trigger(axis, max(run_up, 1e-3), output=1, count=1)

    def _pass_move(self, stage: Any, line: LinePlan, speedup: float) -> None:
        """The pass itself: from its start to its end at the fly speed (one axis moves)."""
        fly = line.fly
        assert fly is not None
        self._set_speed(stage, fly.speed_um_s)
        self._stage_at = None
        targets = _moving(fly.start_um, fly.end_um)
        stage.move_absolute(*targets)
        self._wait_stage(stage, fly.duration_s / speedup, axes=_axes(targets))
        self._stage_at = fly.end_um

    def _stage_distance_pass(self, bench: Bench, line: LinePlan, speedup: float
                             ) -> BurstStatus:
        """A pass whose shots the stage spaces: every rising edge of the stage's output 1 fires
        one DDG delay cycle (external rising-edge triggering, burst mode off; the single-shot
        external mode would need a re-arm per shot)."""
        fly = line.fly
        assert fly is not None
        stage, ddg = bench.stage, bench.delay_generator
        n = line.n_spots
        for system in SYSTEMS:
            bench.spectrometers[system].arm(n, "hardware")
        self._ddg_mode(ddg, "SINGLE_SHOT", None)
        ddg.read_status()  # clear stale latched bits: what follows belongs to this pass
        self._ddg_mode(ddg, "EXTERNAL_RISING", None)
        try:
            self._pass_move(stage, line, speedup)
        finally:
            self._ddg_mode(ddg, "SINGLE_SHOT", None)
            stage.disable_distance_trigger(self._fly_axis)
        seen = StatusFlag(int(ddg.read_status()))
        self.handle._check()
        return BurstStatus(end_of_burst=True, triggers_ignored=StatusFlag.RATE in seen,
                           inhibited=StatusFlag.INHIBIT in seen, flags=int(seen))

    def _ddg_mode(self, ddg: Any, source: str, burst: tuple[int, float] | None) -> None:
        """Set the DDG's trigger source and burst (count, period; None = burst mode off),
        sending only what differs from what this engine last set: fly lines repeat the same
        set-up, and every command is a round trip with an error check."""
        if self._ddg_state.get("burst", False) != burst:
            if burst is None:
                ddg.set_burst_mode(False)
            else:
                ddg.configure_burst(*burst)
            self._ddg_state["burst"] = burst
        if self._ddg_state.get("source") != source:
            ddg.set_trigger_source(source)
            self._ddg_state["source"] = source

    def _store_fly(self, shots: _SpotShots, line: LinePlan, spectra: dict, valid: dict,
                   frame_id: dict, stamp: dict, reasons: dict) -> None:
        for system in SYSTEMS:
            p, f = shots.pairing[system], shots.frames[system]
            other = [q for s, q in shots.pairing.items() if s != system]
            ok = p.valid & (np.logical_and.reduce([q.valid for q in other])
                            | ~np.logical_or.reduce([q.valid for q in other]))
            cols = line.storage_index[ok]
            frames = p.frame_of_shot[ok]
            spectra[system][cols] = f.counts[frames]
            valid[system][cols] = True
            frame_id[system][cols] = self._counters.frames_seen[system] - len(f) + frames
            stamp[system][cols] = f.timestamps_s[frames]
            for j in np.flatnonzero(~ok):
                why = REASONS[int(p.reason[j])] if p.reason[j] else "unpaired"
                reasons[system].append(f"spot {int(line.storage_index[j])}: {why}")

    @staticmethod
    def _storage_shot_ids(line: LinePlan, shot_id: np.ndarray) -> np.ndarray:
        out = np.empty_like(shot_id)
        out[line.storage_index] = shot_id
        return out

    def _reposition_speed(self, stage: Any, target: tuple[float, float], fly_speed: float
                          ) -> None:
        """Before a move to a pass's start: keep the fly speed when the move is short (a snake's
        turn), else the stage speed. The pass itself sets the fly speed."""
        if self._stage_speed == fly_speed and self._stage_at is not None:
            travel = _travel_um(self._stage_at, target)
            if travel / fly_speed - travel / self.scan.stage.speed_um_s <= REPOSITION_SLACK_S:
                return
        self._set_speed(stage, self.scan.stage.speed_um_s)

    def _move(self, bench: Bench, x: float, y: float, speedup: float, *,
              measure: bool = True) -> tuple[float, float]:
        """Move and wait; returns the measured position (``measure=False``: the target)."""
        stage = bench.stage
        # where the last completed move ended, else ask (one round trip saved per move)
        here = self._stage_at if self._stage_at is not None else stage.position()
        speed = self._stage_speed or self.scan.stage.speed_um_s
        travel_s = _travel_um(here, (x, y)) / speed
        targets = _moving(here, (x, y))
        if axes := _axes(targets):
            self._stage_at = None  # unknown until this move has completed
            stage.move_absolute(*targets)
            self._wait_stage(stage, travel_s / speedup, axes=axes)
        reached = stage.position() if measure else (x, y)
        self._stage_at = reached
        return reached

    def _wait_stage(self, stage: Any, expected_s: float, timeout_s: float | None = None,
                    axes: tuple[str, ...] = ("x", "y")) -> None:
        """Wait for a move of ``axes`` planned to take ``expected_s`` (real; ``timeout_s`` in
        all, by default the plan plus a margin): sleep through most of it first, so the stage
        is polled near the end instead of all along, and end at once on an abort (the stage is
        stopped; the abort itself already disabled the DDG)."""
        started = time.monotonic()
        timeout = expected_s + STAGE_TIMEOUT_MARGIN_S if timeout_s is None else timeout_s
        if expected_s > 0 and self.handle._aborted.wait(0.9 * expected_s):
            self._halt(stage)
        while True:
            remaining = started + timeout - time.monotonic()
            try:
                stage.wait_until_idle(max(min(remaining, ABORT_CHECK_S), 1e-3), axes=axes)
                return
            except InstrumentTimeout:
                if self.handle.aborted:
                    self._halt(stage)
                if time.monotonic() - started >= timeout:
                    raise InstrumentTimeout(f"stage still moving after {timeout:.3g} s",
                                            device=getattr(stage, "name", "stage")) from None

    def _halt(self, stage: Any) -> None:
        with contextlib.suppress(Exception):
            stage.stop()
        raise ScanAborted(self.handle.reason)

    def _shoot(self, bench: Bench, n_shots: int) -> _SpotShots:
        """One burst of ``n_shots`` at the current spot, frames paired by shot."""
        for system in SYSTEMS:
            bench.spectrometers[system].arm(n_shots, "hardware")
        ddg = bench.delay_generator
        burst_s = n_shots * self._period_s / _speedup(bench)
        ddg.fire()
        status = ddg.wait_end_of_burst(burst_s + FRAME_TIMEOUT_MARGIN_S)
        if status.aborted:
            self.handle._check()
        return self._collect(bench, n_shots, status)

    def _collect(self, bench: Bench, n_shots: int, status: Any,
                 period_s: float | None = None) -> _SpotShots:
        """Read both spectrometers' frames of a finished burst and pair them by shot (shots
        ``period_s`` apart, by default the laser period)."""
        frames = {}
        for system in SYSTEMS:
            spectrometer = bench.spectrometers[system]
            try:
                spectrometer.wait_frames(FRAME_TIMEOUT_MARGIN_S)
            except InstrumentTimeout as exc:
                log.warning("%s: %s", system, exc)
            frames[system] = spectrometer.read_frames()
            spectrometer.disarm()
            self._counters.frames_seen[system] += len(frames[system])
        self._counters.shots += n_shots
        pairing = self._pairer.pair(frames, n_shots, period_s or self._period_s)
        if status.inhibited:
            # shots may have been blocked at the laser: frames cannot be trusted either way
            for p in pairing.values():
                p.reason[:] = SHOT_AMBIGUOUS
                p.frame_of_shot[:] = -1
        return _SpotShots(pairing, frames)

    @staticmethod
    def _paired_shots(shots: _SpotShots) -> np.ndarray:
        both = np.logical_and.reduce([p.valid for p in shots.pairing.values()])
        return np.flatnonzero(both)

    def _spot_valid(self, shots: _SpotShots) -> dict[str, bool]:
        """A spot is valid for a system when it has a shot valid on both systems, or when it
        has shots and the other system has none (that spot is then unpaired anyway)."""
        both = self._paired_shots(shots)
        out = {}
        for system in SYSTEMS:
            others = [p for s, p in shots.pairing.items() if s != system]
            other_has = any(p.valid.any() for p in others)
            out[system] = both.size > 0 or (shots.pairing[system].valid.any() and not other_has)
        return out

    @staticmethod
    def _why(shots: _SpotShots) -> str:
        parts = []
        for system, p in shots.pairing.items():
            bad = [REASONS[int(r)] for r in p.reason if r]
            if bad:
                parts.append(f"{system}: {', '.join(sorted(set(bad)))}")
        return "; ".join(parts) or "ok"

    def _store_spot(self, shots: _SpotShots, col: int, spectra: dict, valid: dict,
                    frame_id: dict, stamp: dict, reasons: dict) -> None:
        both = self._paired_shots(shots)
        ok = self._spot_valid(shots)
        for system in SYSTEMS:
            p, f = shots.pairing[system], shots.frames[system]
            if not ok[system]:
                bad = sorted({REASONS[int(r)] for r in p.reason if r} or {"unpaired"})
                reasons[system].append(f"spot {col}: {', '.join(bad)}")
                continue
            use = both if both.size else np.flatnonzero(p.valid)
            frames_used = p.frame_of_shot[use]
            counts = f.counts[frames_used]
            spectra[system][col] = (counts[0] if counts.shape[0] == 1 else
                                    np.rint(counts.mean(axis=0)).astype(np.uint16))
            valid[system][col] = True
            first = int(frames_used[0])
            frame_id[system][col] = self._counters.frames_seen[system] - len(f) + first
            stamp[system][col] = float(f.timestamps_s[first])

    # ------------------------------------------------------------------ events
    def _progress_counts(self, done: np.ndarray) -> tuple[int, int, int, int]:
        """The counters as a line ends (its event is published later, by the writer)."""
        c = self._counters
        return int(done.sum()), c.shots, c.invalid["primary"], c.invalid["secondary"]

    def _publish(self, finished: FinishedLine, started: float) -> None:
        lines_done, shots, invalid_primary, invalid_secondary = finished.context
        progress = ScanProgress(
            lines_done=lines_done, lines_total=self.plan.n_lines, shots_done=shots,
            shots_total=self._shots_planned, invalid_primary=invalid_primary,
            invalid_secondary=invalid_secondary, elapsed_s=time.monotonic() - started)
        self.events.publish(LineEvent(str(self.path), finished.line, self.plan.line_axis,
                                      progress, finished.reasons))


def acquire(scan: ScanConfig, *, out: str | Path | None = None, resume: bool = False,
            on_line: Callable[[LineEvent], object] | None = None,
            handle: ScanHandle | None = None, bench: Bench | None = None,
            compression: str | None = DEFAULT_COMPRESSION) -> AcquisitionResult:
    """Run ``scan`` to the end in this thread and return how it ended.

    ``on_line(event)`` is called on a thread of its own after each line is on disk (a slow
    callback only loses events, never slows the scan). ``handle`` pauses or aborts it from
    another thread; an abort returns a result with status "interrupted". Instrument errors and
    Ctrl-C propagate after the DDG is disabled and the file closed as interrupted.
    """
    engine = Engine(scan, out=out, resume=resume, handle=handle, compression=compression)
    if on_line is not None:
        engine.events.subscribe_callback(on_line)
    try:
        return engine.run(bench)
    except ScanAborted:
        return engine._result


@dataclass
class RunningScan:
    """A scan on a worker thread: its handle, its events and, once done, its result."""

    engine: Engine
    thread: threading.Thread
    handle: ScanHandle
    events: Subscription
    result: AcquisitionResult | None = None
    error: BaseException | None = None

    def wait(self, timeout: float | None = None) -> AcquisitionResult | None:
        self.thread.join(timeout)
        if self.error is not None and not isinstance(self.error, ScanAborted):
            raise self.error
        return self.result


def start_acquisition(scan: ScanConfig, *, out: str | Path | None = None,
                      resume: bool = False, bench: Bench | None = None,
                      handle: ScanHandle | None = None,
                      compression: str | None = DEFAULT_COMPRESSION,
                      queue_size: int = 64) -> RunningScan:
    """Start ``scan`` on a worker thread (for the GUI); iterate ``.events`` for line events."""
    engine = Engine(scan, out=out, resume=resume, handle=handle, compression=compression)
    events = engine.events.subscribe(queue_size)
    running = RunningScan(engine, threading.Thread(), engine.handle, events)

    def work() -> None:
        try:
            running.result = engine.run(bench)
        except BaseException as exc:  # reported through wait()
            running.error = exc
            running.result = getattr(engine, "_result", None)

    running.thread = threading.Thread(target=work, name="plumelink-acquisition", daemon=True)
    running.thread.start()
    return running


def iter_lines(scan: ScanConfig, **kwargs: Any) -> Iterator[LineEvent]:
    """Run ``scan`` on a worker thread and yield its line events as they come."""
    running = start_acquisition(scan, **kwargs)
    yield from running.events
    running.wait()


__all__ = [
    "AcquisitionResult",
    "Engine",
    "RunningScan",
    "ScanAborted",
    "ScanHandle",
    "acquire",
    "iter_lines",
    "start_acquisition",
]
