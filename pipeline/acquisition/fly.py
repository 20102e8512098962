"""Fly scans: each raster line is one pass of the stage at constant speed, one shot per spot.

Both procedures share their shape (`FlyProcedure`). ``prepare``: go to the pass's start and
set the stage's distance trigger (its output 1 is wired to the DDG's external trigger input).
``shoot``: the pass; then, while the pass's frames are read out (on the simulated bench:
computed, as real instruments work while the host reads), the next pass is already prepared.
An error or an abort in that set-up is returned with the line, to be raised once the line just
shot is recorded.

- `FlyOnDdgClock`: the stage's trigger fires once, at the first spot, and starts a DDG burst
  of one shot per spot; the DDG clock at the laser rate and the fly speed space the shots one
  step apart.
- `FlyOnStageDistance`: every rising edge of the stage's trigger fires one DDG delay cycle, so
  the shots sit exactly one step apart whatever the speed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from plumelink.drivers.protocols import (
    BurstMode,
    BurstStatus,
    DistanceTrigger,
    ExternalTrigger,
    LatchedStatus,
)

from ..plan import FLY_DDG_CLOCK, FLY_STAGE_DISTANCE, LinePlan
from ..shot_pairing import reduce_pass
from .line_record import LineRecord
from .procedures import LineProcedure, Shooting, ShotLine
from .readout import FRAME_TIMEOUT_MARGIN_S

TRIGGER_OUTPUT = 1  # the stage's digital output wired to the DDG's external trigger input


class FlyProcedure(LineProcedure):
    """One pass per raster line; subclasses set the trigger up (`_arm_trigger`) and run the
    pass (`_pass`)."""

    requirement = "a stage distance trigger wired to the DDG's external trigger input"

    def __init__(self, shooting: Shooting) -> None:
        super().__init__(shooting)
        # the fast axis: along a row for horizontal orders, along a column for vertical ones
        self.axis = "x" if shooting.scan.order.endswith("horizontal") else "y"
        self._prepared: int | None = None  # the line whose pass is set up

    def needs(self) -> list[tuple[Any, type]]:
        bench = self.shooting.bench
        return [(bench.stage, DistanceTrigger), (bench.delay_generator, ExternalTrigger)]

    def prepare(self, line: LinePlan) -> None:
        """Move to the pass's start and set up the stage's distance trigger for it."""
        if self._prepared == line.index:
            return
        self._prepared = None
        fly = line.fly
        assert fly is not None
        s = self.shooting
        s.stage.reposition_speed(fly.start_um, fly.speed_um_s)
        s.stage.move_to(*fly.start_um, measure=False)
        if s.scan.stage.settle_s > 0:
            time.sleep(s.real_s(s.scan.stage.settle_s))
        self._arm_trigger(line)
        self._prepared = line.index

    def shoot(self, line: LinePlan, following: LinePlan | None) -> ShotLine:
        self._prepared = None
        status, period_s = self._pass(line)
        deferred: BaseException | None = None
        if following is not None:
            try:
                self.prepare(following)
            except BaseException as exc:  # this pass's frames are recorded first
                deferred = exc
        s = self.shooting
        burst = s.readout.read(line.n_spots, status, period_s)
        record = LineRecord(line, s.n_px)
        record.put_pass(burst, reduce_pass(burst), s.readout.first_frame,
                        s.readout.first_shot)
        return ShotLine(record.finish(), record.reasons, deferred)

    def _arm_trigger(self, line: LinePlan) -> None:
        raise NotImplementedError

    def _pass(self, line: LinePlan) -> tuple[BurstStatus, float | None]:
        """Run the pass; (the DDG's status, the shot spacing in seconds, None: the laser
        period)."""
        raise NotImplementedError

    @property
    def _stage(self) -> Any:
        return self.shooting.bench.stage


class FlyOnDdgClock(FlyProcedure):
    name = FLY_DDG_CLOCK

    def _arm_trigger(self, line: LinePlan) -> None:
        """Output low, a toggle (a rising edge) after the run-up: at the first spot. Where the
        pass is long enough, a second toggle one run-up later brings the output low again (a
        falling edge, which the DDG's rising-edge input ignores, in the burst it started):
        the stage's driver then knows the output is low and the trigger spent (it fired its
        count) once the pass has ended, and sends neither again for the next line."""
        fly = line.fly
        assert fly is not None
        k = 0 if self.axis == "x" else 1
        run_up = max(abs(float((line.x_um, line.y_um)[k][0]) - fly.start_um[k]), 1e-3)
        travel = abs(fly.end_um[k] - fly.start_um[k])
        toggles = 2 if 2 * run_up + fly.trigger_spacing_um / 2 <= travel else 1
        self._stage.set_digital_output(self.axis, TRIGGER_OUTPUT, 0)
        self._stage.configure_distance_trigger(self.axis, run_up, output=TRIGGER_OUTPUT,
                                               count=toggles)

    def _pass(self, line: LinePlan) -> tuple[BurstStatus, float | None]:
        """The DDG waits for the stage's edge (single shot, external rising: `fire` arms it),
        then fires a burst of one shot per spot at the laser period."""
        fly = line.fly
        assert fly is not None
        s = self.shooting
        n = line.n_spots
        ddg = s.bench.delay_generator
        s.ddg.set("SINGLE_SHOT_EXTERNAL_RISING", (n, s.period_s))
        s.readout.arm(n)
        ddg.fire()
        burst_s = s.real_s(n * s.period_s)
        try:
            # the burst's end is awaited from its planned end on, before the stage's run-out:
            # the DDG hands its shots on (to the spectrometers; on the simulated bench to
            # the physics) one stage poll earlier
            status = s.stage.fly(
                fly, lambda: ddg.wait_end_of_burst(burst_s + FRAME_TIMEOUT_MARGIN_S),
                s.real_s(fly.first_shot_delay_s) + burst_s)
            assert status is not None
        finally:
            self._stage.disable_distance_trigger(self.axis)
        if status.aborted:
            s.handle.check()
        return status, None


class FlyOnStageDistance(FlyProcedure):
    name = FLY_STAGE_DISTANCE
    requirement = (FlyProcedure.requirement + ", and a DDG whose burst mode can be switched off "
                   "and whose status latches")

    def needs(self) -> list[tuple[Any, type]]:
        ddg = self.shooting.bench.delay_generator
        return [*super().needs(), (ddg, BurstMode), (ddg, LatchedStatus)]

    def _arm_trigger(self, line: LinePlan) -> None:
        """Output 1 toggles every half step, starting high, so its rising edges fall one step
        apart from the pass start (one step before the first spot): on every spot, whatever
        the speed. The output is set high while the DDG still ignores its input (single-shot
        source), so that edge fires nothing."""
        fly = line.fly
        assert fly is not None
        step = fly.trigger_spacing_um
        stage = self._stage
        stage.set_digital_output(self.axis, TRIGGER_OUTPUT, 1)
        half = stage.configure_distance_trigger(self.axis, step / 2, output=TRIGGER_OUTPUT,
                                                count=2 * line.n_spots)
        if abs(2 * half - step) > 1e-6 * step:
            stage.disable_distance_trigger(self.axis)
            raise ValueError(
                f"{self.shooting.scan.source}: region.step_um = {step:g} µm is not an even "
                f"number of stage microsteps; a stage-distance trigger toggles every half step "
                f"({half:g} µm possible)")

    def _pass(self, line: LinePlan) -> tuple[BurstStatus, float | None]:
        """Every rising edge of the stage's output fires one DDG delay cycle (external
        rising-edge triggering, burst mode off; the single-shot external mode would need a
        re-arm per shot)."""
        fly = line.fly
        assert fly is not None
        s = self.shooting
        ddg: Any = s.bench.delay_generator
        s.readout.arm(line.n_spots)
        s.ddg.set("SINGLE_SHOT", None)
        ddg.read_burst_status()  # clear stale latched bits: what follows belongs to this pass
        s.ddg.set("EXTERNAL_RISING", None)
        try:
            s.stage.fly(fly)
        finally:
            s.ddg.set("SINGLE_SHOT", None)
            self._stage.disable_distance_trigger(self.axis)
        seen = ddg.read_burst_status()
        s.handle.check()
        return replace(seen, end_of_burst=True), fly.trigger_spacing_um / fly.speed_um_s


__all__ = ["FlyOnDdgClock", "FlyOnStageDistance", "FlyProcedure"]
