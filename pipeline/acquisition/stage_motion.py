"""The stage as the engine moves it: moves that wait in real time and end at once on an abort.

`StageMotion` remembers where the last completed move ended and the top speed it last set, so
a move needs no position query before it and a speed is sent only when it changes (one round
trip saved each, per spot of a step scan and per line of a fly scan). A measured move on a
stage whose idle poll carries the position (`IdlePosition`) takes the position from that poll
instead of a query after it: per step spot, a poll of the axis that did not move replaces the
read-back of both axes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from plumelink.drivers.bench import Bench
from plumelink.drivers.errors import InstrumentTimeout
from plumelink.drivers.protocols import IdlePosition

from ..plan import FlyPass
from .handle import ScanAborted, ScanHandle

STAGE_TIMEOUT_MARGIN_S = 2.0  # beyond the planned move time
HOME_TIMEOUT_S = 120.0
ABORT_CHECK_S = 0.25  # while the stage moves, an abort is noticed within this (real) time
# a fly scan moves to the next pass's start at the fly speed when that costs at most this much
# (simulated) time more than the stage speed: two speed commands per line saved on snakes
REPOSITION_SLACK_S = 0.02

Position = tuple[float, float]
_T = TypeVar("_T")


def _moving(here: Position, target: Position) -> tuple[float | None, float | None]:
    """A move's targets with None for an axis already there (one command fewer per axis)."""
    x, y = (None if t == h else t for h, t in zip(here, target, strict=True))
    return x, y


def _travel_um(a: Position, b: Position) -> float:
    """The longer axis's travel between two positions (both axes move at the same speed)."""
    return max(abs(b[0] - a[0]), abs(b[1] - a[1]))


def _axes(targets: tuple[float | None, float | None]) -> tuple[str, ...]:
    """The axes a move commands (the others need no polling)."""
    return tuple(a for a, t in zip(("x", "y"), targets, strict=True) if t is not None)


class StageMotion:
    """Moves ``bench.stage`` for one scan; ``speed_um_s`` is the scan's stage speed (moves
    between spots and lines), which `restore_speed` sets again at the end."""

    def __init__(self, bench: Bench, handle: ScanHandle, speed_um_s: float) -> None:
        self._bench = bench
        self.stage: Any = bench.stage
        self._handle = handle
        self.speed_um_s = speed_um_s
        self._at: Position | None = None  # where the last move ended (µm); None: unknown
        self._speed: float | None = None  # the top speed last set here (µm/s)
        self._idle_position = isinstance(self.stage, IdlePosition)

    def forget(self) -> None:
        """Forget the position and speed last set here (after the stage was reconnected or a
        move failed): the next move asks the stage and sends its speed again."""
        self._at = None
        self._speed = None

    def set_speed(self, um_per_s: float) -> None:
        """Set the stage's top speed unless it is already what was last set here."""
        if self._speed != um_per_s:
            self._speed = None  # unknown if the command fails
            self.stage.set_speed(um_per_s)
            self._speed = um_per_s

    def restore_speed(self) -> None:
        self.set_speed(self.speed_um_s)

    def home(self) -> None:
        """Reference both axes (absolute moves need it) and wait."""
        self.stage.home()
        self.wait(0.0, HOME_TIMEOUT_S)

    def move_to(self, x: float, y: float, *, measure: bool = True) -> Position:
        """Move and wait; returns the measured position (``measure=False``: the target)."""
        stage = self.stage
        here = self._at if self._at is not None else stage.position()
        speed = self._speed or self.speed_um_s
        targets = _moving(here, (x, y))
        reached: Position | None = None if measure else (x, y)
        if axes := _axes(targets):
            self._at = None  # unknown until this move has completed
            stage.move_absolute(*targets)
            expected_s = _travel_um(here, (x, y)) / speed / self._bench.time_scale
            if measure and self._idle_position:  # the idle polls of both axes measure it
                reached = self.wait(expected_s, axes=("x", "y"), measure=True)
            else:
                self.wait(expected_s, axes=axes)
        if reached is None:
            reached = stage.position()
        self._at = reached
        return reached

    def reposition_speed(self, target: Position, fly_speed: float) -> None:
        """Before a move to a pass's start: keep the fly speed when the move is short (a snake's
        turn), else the stage speed. The pass itself sets the fly speed."""
        if self._speed == fly_speed and self._at is not None:
            travel = _travel_um(self._at, target)
            if travel / fly_speed - travel / self.speed_um_s <= REPOSITION_SLACK_S:
                return
        self.set_speed(self.speed_um_s)

    def fly(self, fly: FlyPass, during: Callable[[], _T] | None = None,
            during_after_s: float = 0.0) -> _T | None:
        """A fly pass: from its start to its end at the fly speed (one axis moves). With
        ``during``: once the move is under way and ``during_after_s`` (real) after its start,
        ``during()`` runs before the end of the pass is awaited, and its result is returned;
        e.g. the wait for the DDG's end of burst, which hands the shots on (on the simulated
        bench: to the physics) while the stage is still in its run-out. The stage's end is
        awaited (and its faults raised) whatever ``during`` did."""
        self.set_speed(fly.speed_um_s)
        self._at = None
        targets = _moving(fly.start_um, fly.end_um)
        started = time.monotonic()
        self.stage.move_absolute(*targets)
        expected_s = fly.duration_s / self._bench.time_scale
        result = None
        if during is not None:
            try:
                if self._handle.sleep(during_after_s - (time.monotonic() - started)):
                    self._halt()
                result = during()
            except BaseException:
                with contextlib.suppress(Exception):  # the stage ends its pass first
                    self._finish(started, expected_s, _axes(targets))
                raise
        self._finish(started, expected_s, _axes(targets))
        self._at = fly.end_um
        return result

    def _finish(self, started: float, expected_s: float, axes: tuple[str, ...]) -> None:
        """Wait for the end of a move that started at ``started`` (monotonic)."""
        elapsed = time.monotonic() - started
        self.wait(max(expected_s - elapsed, 0.0),
                  max(expected_s + STAGE_TIMEOUT_MARGIN_S - elapsed, 1e-3), axes=axes)

    def wait(self, expected_s: float, timeout_s: float | None = None,
             axes: tuple[str, ...] = ("x", "y"), *, measure: bool = False) -> Any:
        """Wait for a move of ``axes`` planned to take ``expected_s`` (real; ``timeout_s`` in
        all, by default the plan plus a margin): sleep through most of it first, so the stage
        is polled near the end instead of all along, and end at once on an abort (the stage is
        stopped; the abort itself already disabled the DDG). ``measure`` (an `IdlePosition`
        stage, both axes): returns the position the idle polls carried."""
        stage = self.stage
        started = time.monotonic()
        timeout = expected_s + STAGE_TIMEOUT_MARGIN_S if timeout_s is None else timeout_s
        if expected_s > 0 and self._handle.sleep(0.9 * expected_s):
            self._halt()
        while True:
            remaining = started + timeout - time.monotonic()
            try:
                chunk = max(min(remaining, ABORT_CHECK_S), 1e-3)
                if measure:
                    return stage.wait_for_position(chunk)
                stage.wait_until_idle(chunk, axes=axes)
                return None
            except InstrumentTimeout:
                if self._handle.aborted:
                    self._halt()
                if time.monotonic() - started >= timeout:
                    raise InstrumentTimeout(f"stage still moving after {timeout:.3g} s",
                                            device=getattr(stage, "name", "stage")) from None

    def _halt(self) -> None:
        with contextlib.suppress(Exception):
            self.stage.stop()
        raise ScanAborted(self._handle.reason)


__all__ = ["StageMotion"]
