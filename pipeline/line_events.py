"""Line events: what the acquisition engine publishes after each raster line is on disk.

Each subscriber has its own bounded queue. Publishing never blocks: when a subscriber's queue
is full its oldest event is dropped (and counted), so a slow plot or a slow live transfer
never stalls acquisition. A subscriber is either a callback, run on its own thread, or an
iterator the subscriber drains itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
    elapsed_s: float

    @property
    def shots_per_s(self) -> float:
        return self.shots_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.shots_done == 0:
            return None
        return (self.shots_total - self.shots_done) / self.shots_per_s


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


_END = object()


class Subscription:
    """One subscriber's bounded queue; iterate it, or let `LineBroadcaster` call a callback."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self.dropped = 0
        self.closed = False

    def _offer(self, item: object) -> None:
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def get(self, timeout: float | None = None) -> LineEvent | None:
        """The next event; None once the scan has ended (or on timeout)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self.closed = True
            return None
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[LineEvent]:
        while not self.closed:
            event = self.get()
            if event is None:
                return
            yield event


class LineBroadcaster:
    """Fan-out of line events to subscribers, never blocking the publisher."""

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

    def subscribe_callback(self, callback: Callable[[LineEvent], object],
                           maxsize: int | None = None) -> Subscription:
        """Call ``callback(event)`` on a thread of its own for every event."""
        sub = self.subscribe(maxsize)

        def run() -> None:
            for event in sub:
                try:
                    callback(event)
                except Exception:
                    log.exception("line subscriber %r failed; it keeps receiving events",
                                  callback)

        thread = threading.Thread(target=run, name="plumelink-line-subscriber", daemon=True)
        thread.start()
        with self._lock:
            self._threads.append(thread)
        return sub

    def publish(self, event: LineEvent) -> None:
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


__all__ = ["LineBroadcaster", "LineEvent", "ScanProgress", "Subscription"]
