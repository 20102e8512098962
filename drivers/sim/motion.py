"""Shared motion model of the stage emulators (`zaber_emulator`, `pi_gcs_emulator`): an axis
moving at constant speed from a start to a target on an injectable clock, and `ManualClock`."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar


class ManualClock:
    """A clock that only moves when told: ``clock.advance(0.5)``. Pass it as ``clock=``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class Motion:
    """A constant-speed move from ``start`` to ``target`` begun at clock time ``t0``; ``speed``
    is in position units per second (> 0)."""

    start: float
    target: float
    t0: float
    speed: float

    @property
    def direction(self) -> float:
        return 1.0 if self.target >= self.start else -1.0

    @property
    def length(self) -> float:
        """Distance the move covers (subclasses may cut it short)."""
        return abs(self.target - self.start)

    @property
    def end_time(self) -> float:
        return self.time_at(self.length)

    def time_at(self, travel: float) -> float:
        """When the axis will have covered ``travel``."""
        return self.t0 + travel / self.speed

    def travel_at(self, t: float) -> float:
        """Distance covered at ``t``, between 0 and `length`."""
        if t >= self.end_time:
            return self.length  # exact at the end, whatever the float rounding on the way
        return min(max(t - self.t0, 0.0) * self.speed, self.length)

    def position_at(self, t: float) -> float:
        """Where the axis is at ``t``: exactly ``target`` once the move is over."""
        if t >= self.end_time:
            return self.target
        return self.start + self.direction * (max(t - self.t0, 0.0) * self.speed)


M = TypeVar("M", bound=Motion)


class MovingAxis(Generic[M]):
    """An axis at ``position`` unless a `Motion` is under way."""

    position: float
    motion: M | None

    HISTORY = 64  # finished moves remembered for `position_was`

    def position_at(self, t: float) -> float:
        return self.position if self.motion is None else self.motion.position_at(t)

    def position_was(self, t: float) -> float:
        """Where the axis was at clock time ``t``, also during a move that has since ended
        (one of the last `HISTORY` moves): a simulated trigger bus may learn of a shot only
        after the stage has arrived."""
        if self.motion is not None and t >= self.motion.t0:
            return self.motion.position_at(t)
        for motion, t_end in reversed(getattr(self, "_history", ())):
            if t >= motion.t0:
                return motion.position_at(min(t, t_end))
        return self.position_at(t)

    @property
    def moving(self) -> bool:
        return self.motion is not None

    def halt(self, t: float) -> None:
        """Freeze the axis where it is at ``t``."""
        if self.motion is not None:
            history = self.__dict__.setdefault("_history", deque(maxlen=self.HISTORY))
            history.append((self.motion, t))
        self.position, self.motion = self.position_at(t), None


__all__ = ["ManualClock", "Motion", "MovingAxis"]
