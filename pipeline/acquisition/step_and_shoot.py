"""Step-and-shoot: per spot, move, settle and fire one DDG burst of ``shots_per_spot`` shots."""

from __future__ import annotations

import logging
import time

from ..plan import STEP_AND_SHOOT, LinePlan
from ..shot_pairing import BurstPairing, reduce_spot
from .line_record import LineRecord
from .procedures import LineProcedure, ShotLine
from .readout import FRAME_TIMEOUT_MARGIN_S

log = logging.getLogger(__name__)


class StepAndShoot(LineProcedure):
    """``prepare``: move to the line's first spot and settle; ``shoot``: a burst there, then
    move, settle and burst at every further spot. With ``reshoot_invalid`` a spot that either
    system missed is shot once more."""

    name = STEP_AND_SHOOT
    _first_at: tuple[float, float]  # where `prepare` measured the stage (the first spot)

    def configure(self) -> None:
        self.shooting.ddg.burst((self.shooting.scan.shots_per_spot, self.shooting.period_s))

    def prepare(self, line: LinePlan) -> None:
        self._first_at = self._go(line, 0)

    def shoot(self, line: LinePlan, following: LinePlan | None = None) -> ShotLine:
        s = self.shooting
        record = LineRecord(line, s.n_px)
        for j in range(line.n_spots):
            s.handle.check()
            at = self._first_at if j == 0 else self._go(line, j)
            burst = self._burst(line.shots_per_spot)
            ids = s.readout.first_shot, dict(s.readout.first_frame)
            if s.scan.reshoot_invalid and not all(burst.spot_valid().values()):
                log.info("line %d spot %d: re-shooting (%s)", line.index, j, burst.why())
                again = self._burst(line.shots_per_spot)
                if _score(again) > _score(burst):
                    burst, ids = again, (s.readout.first_shot, dict(s.readout.first_frame))
            record.put_spot(int(line.storage_index[j]), reduce_spot(burst), ids[1], at, ids[0])
        return ShotLine(record.finish(), record.reasons)

    def _go(self, line: LinePlan, j: int) -> tuple[float, float]:
        """Move to spot ``j`` (shot order) and settle; returns the measured position."""
        s = self.shooting
        at = s.stage.move_to(float(line.x_um[j]), float(line.y_um[j]))
        settle_s = s.real_s(s.scan.stage.settle_s)
        if settle_s > 0:
            time.sleep(settle_s)
        return at

    def _burst(self, n_shots: int) -> BurstPairing:
        """One burst of ``n_shots`` at the current spot, frames paired by shot."""
        s = self.shooting
        s.readout.arm(n_shots)
        ddg = s.bench.delay_generator
        ddg.fire()
        status = ddg.wait_end_of_burst(s.real_s(n_shots * s.period_s) + FRAME_TIMEOUT_MARGIN_S)
        if status.aborted:
            s.handle.check()
        return s.readout.read(n_shots, status)


def _score(burst: BurstPairing) -> tuple[bool, int]:
    """How much of a spot a burst gives: a pair first, then the systems it is valid for (a
    re-shoot replaces the first burst only when it gives more)."""
    return burst.paired().size > 0, sum(burst.spot_valid().values())


__all__ = ["StepAndShoot"]
