"""Scan events: what the acquisition engine publishes, as typed dataclasses, to subscribers in
the same process. First a `ScanStarted` (what the scan will fill: grid, both wavelength axes,
the procedure), then a `LineEvent` after each raster line is on disk.

Each subscriber has its own bounded queue. Publishing never blocks: when a subscriber's queue
is full its oldest line event is dropped (and counted), so a slow plot or a slow live transfer
never stalls acquisition; the `ScanStarted` event is never dropped. A subscriber is either a
callback, run on its own thread, or an iterator the subscriber drains itself.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .raster_line import RasterLine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanProgress:
    """Counters after a line: for progress bars, ETA and the GUI's status line."""

    lines_done: int  # of the whole map, lines written before a resume included
    lines_total: int
    shots_done: int  # by this run
    shots_total: int  # that this run plans (a resumed map: its unfinished lines only)
    invalid_primary: int  # spots flagged invalid so far
    invalid_secondary: int
    elapsed_s: float  # from the scan's start to the end of this line

    @property
    def shots_per_s(self) -> float:
        return self.shots_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.shots_done == 0:
            return None
        return (self.shots_total - self.shots_done) / self.shots_per_s


@dataclass(frozen=True, eq=False)
class ScanStarted:
    """A scan is about to shoot its first line: what a view needs to show it from the start.

    The map is (ny, nx) = (``y_um.size``, ``x_um.size``) spots; ``line_axis`` is "y" when a
    raster line is a row (horizontal orders), "x" when it is a column (vertical orders).
    ``wavelength_nm`` holds each system's axis ("primary", "secondary"). A resumed map already
    holds ``lines_done`` of its ``lines_total`` lines.
    """

    map_path: str
    procedure: str  # the line procedure (a key of `plan.PROCEDURES`)
    order: str
    line_axis: str
    x_um: np.ndarray
    y_um: np.ndarray
    wavelength_nm: dict[str, np.ndarray]
    lines_total: int
    lines_done: int
    shots_total: int  # that this run plans

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.y_um.size), int(self.x_um.size)


@dataclass(frozen=True)
class LineEvent:
    """A raster line that has just been flushed to the map file (read-only arrays).

    ``line_axis`` is "y" when a raster line is a row of the map (horizontal orders) and "x"
    when it is a column (vertical orders); ``line.index`` is the row or column.
    """

    map_path: str
    line: RasterLine
    line_axis: str
    progress: ScanProgress
    reasons: dict[str, list[str]]  # per system, why spots were flagged (for logs, GUI)


ScanEvent = ScanStarted | LineEvent

_END = object()


class Subscription:
    """One subscriber's bounded queue of `ScanEvent`; iterate it, or let `LineBroadcaster`
    call a callback."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: collections.deque[object] = collections.deque()
        self._ready = threading.Condition()
        self.dropped = 0
        self.closed = False

    def _offer(self, item: object) -> None:
        with self._ready:
            if len(self._items) >= self._maxsize:
                self._drop_one()
            self._items.append(item)
            self._ready.notify()

    def _drop_one(self) -> None:  # under the lock: the oldest line event, never a start
        for i, queued in enumerate(self._items):
            if isinstance(queued, LineEvent):
                del self._items[i]
                self.dropped += 1
                return

    def get(self, timeout: float | None = None) -> ScanEvent | None:
        """The next event; None once the scan has ended (or on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)
            item = self._items.popleft()
        if item is _END:
            self.closed = True
            return None
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[ScanEvent]:
        while not self.closed:
            event = self.get()
            if event is None:
                return
            yield event


class LineBroadcaster:
    """Fan-out of scan events to subscribers, never blocking the publisher."""

    def __init__(self, maxsize: int = 16) -> None:
        self._maxsize = maxsize
        self._subs: list[Subscription] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        sub = Subscription(maxsize or self._maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def subscribe_callback(self, on_line: Callable[[LineEvent], object],
                           maxsize: int | None = None, *,
                           on_start: Callable[[ScanStarted], object] | None = None
                           ) -> Subscription:
        """Call ``on_line(event)`` for every line event (and ``on_start(event)`` for the
        scan-started event) on a thread of its own."""
        sub = self.subscribe(maxsize)

        def run() -> None:
            for event in sub:
                callback = on_line if isinstance(event, LineEvent) else on_start
                if callback is None:
                    continue
                try:
                    callback(event)  # type: ignore[arg-type]
                except Exception:
                    log.exception("scan subscriber %r failed; it keeps receiving events",
                                  callback)

        thread = threading.Thread(target=run, name="plumelink-line-subscriber", daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)
        return sub

    def publish(self, event: ScanEvent) -> None:
        with self._lock:
            subs = tuple(self._subs)
        for sub in subs:
            sub._offer(event)

    def close(self, join_timeout_s: float = 5.0) -> None:
        """Tell every subscriber the scan ended; wait a while for callback threads."""
        with self._lock:
            subs, threads = tuple(self._subs), tuple(self._threads)
        for sub in subs:
            sub._offer(_END)
        for thread in threads:
            thread.join(join_timeout_s)


__all__ = ["LineBroadcaster", "LineEvent", "ScanEvent", "ScanProgress", "ScanStarted",
           "Subscription"]
