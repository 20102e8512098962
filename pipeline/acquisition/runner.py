"""The runner: executes a raster plan on an open bench and streams its lines into a map file.

One runner owns the hardware for the whole scan and alone handles opening, pause, resume,
abort and cleanup (STYLE.md, the Bluesky idea); the raster lines themselves are shot by the
line procedure the plan names. Every finished line is appended and flushed (`MapWriter`), then
published to subscribers (`line_events`), on the writer thread of `line_sink` while the next
line is shot. Before the first line a `ScanStarted` event says what the scan will fill.

Device faults: a spectrometer or the stage that times out or drops its link costs the line in
flight, which is shot again after the device is reconnected, within the bounds of the bench
profile's [recovery] table; each step is logged in the map's device event log, and the scan
ends (interrupted, the status saying which device and why) only when the bounds are spent
(`recovery`).

Safety: whatever ends the scan (its end, an instrument error, `ScanHandle.abort`, Ctrl-C) the
DDG outputs are disabled first (an abort also stops the stage), then the stage speed is set
back and the file is closed as complete or interrupted with the reason. Nothing already
flushed is ever lost, and ``resume=True`` continues an interrupted map from its first
unfinished line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plumelink.drivers.bench import Bench, open_bench
from plumelink.drivers.protocols import ExternalTrigger

from .. import map_layout as L
from ..line_events import LineBroadcaster, LineEvent, ScanProgress, ScanStarted
from ..line_sink import LineSink
from ..map_writer import DEFAULT_COMPRESSION, MapWriter
from ..plan import RasterPlan, make_plan
from ..raster_line import RasterLine
from ..scan import ScanConfig
from .ddg_modes import DdgModes
from .fly import FlyOnDdgClock, FlyOnStageDistance
from .handle import ScanAborted, ScanHandle
from .procedures import LineProcedure, Shooting
from .readout import SYSTEMS, Readout
from .recovery import STAGE, Recovery, failed_role, watched_bench
from .stage_motion import StageMotion
from .step_and_shoot import StepAndShoot

log = logging.getLogger(__name__)

Q_SWITCH_WIDTH_S = 10e-6  # AB output pulse driving the laser Q-switch

#: the line procedures by the name a plan gives (`plan.PROCEDURES`)
PROCEDURE_CLASSES: dict[str, type[LineProcedure]] = {
    cls.name: cls for cls in (StepAndShoot, FlyOnDdgClock, FlyOnStageDistance)}


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
    device_faults: int = 0  # spectrometer or stage faults met (each logged in the map)
    retries: int = 0  # raster lines shot again after a fault
    reconnects: int = 0  # devices reconnected (failed attempts not counted)


@dataclass
class _Tally:
    """What this run has done so far: for each line's progress and for the result."""

    started: float  # time.monotonic() at the start
    lines_total: int
    shots_total: int = 0  # that this run plans
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYSTEMS, 0))

    def count(self, line: RasterLine) -> None:
        for system in SYSTEMS:
            self.invalid[system] += int((~getattr(line, system).valid).sum())

    def progress(self, lines_done: int, shots_done: int) -> ScanProgress:
        return ScanProgress(lines_done=lines_done, lines_total=self.lines_total,
                            shots_done=shots_done, shots_total=self.shots_total,
                            invalid_primary=self.invalid["primary"],
                            invalid_secondary=self.invalid["secondary"],
                            elapsed_s=time.monotonic() - self.started)


class Runner:
    """Runs one scan. Use `engine.acquire` (blocking) or `engine.start_acquisition` (worker
    thread); ``result`` is set once `run` has ended, however it ended."""

    def __init__(self, scan: ScanConfig, *, out: str | Path | None = None, resume: bool = False,
                 handle: ScanHandle | None = None, broadcaster: LineBroadcaster | None = None,
                 compression: str | None = DEFAULT_COMPRESSION, home: bool = True) -> None:
        missing = [s for s in SYSTEMS if s not in scan.spectrometers]
        if missing:
            raise ValueError(f"{scan.source}: the scan has no [spectrometers.{missing[0]}] "
                             f"settings; a paired scan needs settings for {list(SYSTEMS)}")
        self.scan = scan
        self.plan: RasterPlan = make_plan(scan)
        self.procedure_class = PROCEDURE_CLASSES[self.plan.procedure]
        self.path = Path(out) if out is not None else scan.output_path()
        self.resume = resume
        self.handle = handle or ScanHandle()
        self.events = broadcaster or LineBroadcaster()
        self.compression = compression
        self.home = home
        self.result: AcquisitionResult | None = None

    def run(self, bench: Bench | None = None) -> AcquisitionResult:
        """Open the bench (unless given one) and execute the whole plan. A map to resume is
        opened first: a missing, foreign, complete or mismatched file is refused before any
        device is touched."""
        resumed = self._resume_writer() if self.resume else None
        try:
            if bench is not None:
                return self._run_on(bench, resumed)
            with open_bench(self.scan.bench) as opened:
                return self._run_on(opened, resumed)
        except BaseException as exc:
            if resumed is not None and not resumed.closed:  # ended before the scan took it
                resumed.close(L.STATUS_INTERRUPTED, f"the scan did not start: "
                              f"{type(exc).__name__}: {exc}")
            raise

    def _run_on(self, bench: Bench, writer: MapWriter | None = None) -> AcquisitionResult:
        missing = [s for s in SYSTEMS if s not in bench.spectrometers]
        if missing:
            raise ValueError(f"bench {bench.profile.name!r} has no {missing} spectrometer; "
                             f"a paired scan needs both {list(SYSTEMS)}")
        self.handle.on_abort(bench.delay_generator.disable_outputs)  # first
        self.handle.on_abort(bench.stage.stop)  # ends a move or homing in progress
        bench = watched_bench(bench)  # a device fault names the device it came from
        if writer is None:
            writer = self._open_writer(bench)
        tally = _Tally(time.monotonic(), self.plan.n_lines)
        stage = StageMotion(bench, self.handle, self.scan.stage.speed_um_s)
        recovery = Recovery(bench.profile.recovery, bench, self.handle,
                            writer.log_device_event,
                            lambda role: self._reconfigure(bench, stage, role))
        next_shot, next_frame = writer.next_ids() if self.resume else (0, None)
        readout = Readout(bench.spectrometers, 1.0 / self.scan.rate_hz, next_shot=next_shot,
                          next_frame=next_frame)
        sink: LineSink | None = None
        status, reason = L.STATUS_COMPLETE, ""
        try:
            done = writer.raster_lines_done
            if done.all():  # a writer that ended after its last line but before closing
                log.info("%s: every line is written already; closing it as complete",
                         self.path)
            else:
                procedure = self._set_up(bench, stage, readout, done, tally)
                # a vertical order's raster line is a column at fixed x of the (ny, nx) map
                append = (writer.append_column if self.plan.line_axis == "x"
                          else writer.append_line)
                sink = LineSink(append, self.events.publish)
                self._shoot(procedure, sink, done, tally, readout, recovery)
                sink.close()
                sink.raise_error()
        except BaseException as exc:
            status = L.STATUS_INTERRUPTED
            reason = self.handle.reason if isinstance(exc, ScanAborted) else (
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise
        finally:
            written = self._make_safe(bench, stage, sink, writer, status, reason)
            counts = recovery.counts
            self.result = AcquisitionResult(
                self.path, status, reason, written, self.plan.n_lines, readout.shots,
                tally.invalid["primary"], tally.invalid["secondary"],
                time.monotonic() - tally.started, device_faults=counts.faults,
                retries=counts.retries, reconnects=counts.reconnects)
        return self.result

    def _set_up(self, bench: Bench, stage: StageMotion, readout: Readout, done: np.ndarray,
                tally: _Tally) -> LineProcedure:
        """The procedure checked and configured, the scan-started event published, the stage
        homed and the DDG outputs enabled: ready for the first line."""
        n_px = {s: bench.spectrometers[s].wavelength_nm().size for s in SYSTEMS}
        shooting = Shooting(self.scan, bench, self.handle, stage,
                            DdgModes(bench.delay_generator), readout, n_px)
        procedure = self.procedure_class(shooting)
        procedure.check()
        self._configure(shooting)
        procedure.configure()
        # what this run shoots (a resumed map only its unfinished lines): shots/s and ETA
        tally.shots_total = sum(ln.n_shots for ln in self.plan.lines if not done[ln.index])
        self.events.publish(self._started(bench, int(done.sum()), tally.shots_total))
        if self.home:
            stage.home()  # absolute moves need a reference; done with the laser disabled
        self.handle.check()  # an abort during homing: the outputs stay disabled
        bench.delay_generator.enable_outputs()
        return procedure

    def _shoot(self, procedure: LineProcedure, sink: LineSink, done: np.ndarray,
               tally: _Tally, readout: Readout, recovery: Recovery) -> None:
        """Every raster line not yet done, in order: prepare, shoot, hand to the writer. A
        line whose spectrometer or stage failed is shot again from its start, within the
        profile's [recovery] bounds (`Recovery.failed` logs, reconnects or gives up)."""
        todo = [line for line in self.plan.lines if not done[line.index]]
        carried: BaseException | None = None  # a fault while the previous line set this up
        for i, line in enumerate(todo):
            self.handle.wait_if_paused()
            following = todo[i + 1] if i + 1 < len(todo) else None
            attempt = 0
            if carried is not None:
                attempt += 1
                recovery.failed(carried, line.index, attempt)
                carried = None
            while True:
                try:
                    procedure.prepare(line)
                    shot = procedure.shoot(line, following)
                    break
                except Exception as exc:  # Recovery re-raises what no retry can cure
                    attempt += 1
                    procedure.shooting.stage.forget()  # a failed move left it anywhere
                    recovery.failed(exc, line.index, attempt)
            done[line.index] = True
            tally.count(shot.line)
            progress = tally.progress(int(done.sum()), readout.shots)
            sink.put(LineEvent(str(self.path), shot.line, self.plan.line_axis, progress,
                               shot.reasons))
            if shot.deferred is not None:
                if failed_role(shot.deferred) is None:
                    raise shot.deferred
                carried = shot.deferred

    def _reconfigure(self, bench: Bench, stage: StageMotion, role: str) -> None:
        """The scan's settings on a device again after it was reconnected."""
        if role == STAGE:
            stage.forget()
            return
        s = self.scan.spectrometers[role]
        bench.spectrometers[role].configure(s.integration_time_s, s.delay_s, s.averages)

    def _make_safe(self, bench: Bench, stage: StageMotion, sink: LineSink | None,
                   writer: MapWriter, status: str, reason: str) -> int:
        """However the scan ended: DDG outputs disabled first, the stage's own speed back,
        every finished line written, the file closed with its status. Returns the lines
        written by this run."""
        with contextlib.suppress(Exception):
            bench.delay_generator.disable_outputs()  # first, whatever happened
        with contextlib.suppress(Exception):  # a fly scan may end at the fly speed
            stage.restore_speed()
        written = 0
        if sink is not None:
            sink.close()  # lines already finished reach the file before it is closed
            written = sink.lines_written  # a write error was raised in the try above
        try:
            writer.close(status, reason)
        finally:
            self.events.close()
        log.info("scan %s: %s after %d lines%s", self.path, status, written,
                 f" ({reason})" if reason else "")
        return written

    def _resume_writer(self) -> MapWriter:
        """The interrupted map reopened for its unfinished lines; no device is needed."""
        plan = self.plan
        writer = MapWriter.resume(self.path)
        grid = (plan.y_um.size, plan.x_um.size)
        vertical = plan.line_axis == "x"
        if writer.shape != grid or writer.vertical != vertical:
            writer.close(L.STATUS_INTERRUPTED, "resume refused: the scan does not match")
            raise ValueError(
                f"cannot resume {self.path}: it holds a {writer.shape[0]} x "
                f"{writer.shape[1]} (y x x) map of "
                f"{'columns' if writer.vertical else 'rows'} but the scan plans "
                f"{grid[0]} x {grid[1]} of {'columns' if vertical else 'rows'} "
                f"({plan.order})")
        return writer

    def _open_writer(self, bench: Bench) -> MapWriter:
        if self.resume:
            return self._resume_writer()
        plan = self.plan
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            "mode": scan.mode, "procedure": self.plan.procedure, "order": scan.order,
            "shots_per_spot": scan.shots_per_spot, "rate_hz": scan.rate_hz,
            "laser_delay_s": scan.ddg.laser_delay_s,
            "spectrometer_delay_s": scan.ddg.spectrometer_delay_s, "gate_s": scan.ddg.gate_s,
            "spot_spectrum": ("mean of the shots valid on both systems"
                              if scan.shots_per_spot > 1 else "one shot"),
        }
        return snapshot

    def _configure(self, shooting: Shooting) -> None:
        """Put the scan's DDG delays, trigger source and spectrometer settings on the devices,
        and the stage's speed."""
        bench, d = shooting.bench, self.scan.ddg
        ddg = bench.delay_generator
        ddg.set_delay("A", "T0", d.laser_delay_s)
        ddg.set_delay("B", "A", Q_SWITCH_WIDTH_S)
        ddg.set_delay("C", "A", d.spectrometer_delay_s)
        ddg.set_delay("D", "C", d.gate_s)
        if isinstance(ddg, ExternalTrigger):
            shooting.ddg.source("SINGLE_SHOT")
        for system in SYSTEMS:
            s = self.scan.spectrometers[system]
            bench.spectrometers[system].configure(s.integration_time_s, s.delay_s, s.averages)
        shooting.stage.restore_speed()

    def _started(self, bench: Bench, lines_done: int, shots_total: int) -> ScanStarted:
        plan = self.plan
        return ScanStarted(
            map_path=str(self.path), procedure=plan.procedure, order=plan.order,
            line_axis=plan.line_axis, x_um=plan.x_um, y_um=plan.y_um,
            wavelength_nm={s: np.asarray(bench.spectrometers[s].wavelength_nm())
                           for s in SYSTEMS},
            lines_total=plan.n_lines, lines_done=lines_done, shots_total=shots_total)


__all__ = ["PROCEDURE_CLASSES", "AcquisitionResult", "Runner"]
