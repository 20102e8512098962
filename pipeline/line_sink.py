"""The engine's writer thread: appends and flushes finished raster lines, then publishes them.

Writing line k (compression, HDF5 write and flush, which release the GIL) overlaps the
acquisition of line k+1 instead of delaying it. The hand-over queue holds one line, so at
most two finished lines (one being written, one waiting) are not yet on disk: the same
exposure to a crash as the line still in flight, and a resume re-acquires them.

Order is kept: a line is flushed before its `LineEvent` is published, and lines reach the
file in the order the engine finished them. A write error stops the sink; the engine learns of it on
its next `put` (or at `close`) and ends the scan as interrupted, with the lines written
before the error intact.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from .line_events import LineEvent
from .raster_line import RasterLine

log = logging.getLogger(__name__)

_END = object()


class LineWriteError(RuntimeError):
    """The writer thread could not write a line; ``__cause__`` holds the original error."""


class LineSink:
    """Write lines on a thread of its own: ``append(event.line)`` then ``publish(event)``."""

    def __init__(self, append: Callable[[RasterLine], None],
                 publish: Callable[[LineEvent], None], *, depth: int = 1) -> None:
        self._append = append
        self._publish = publish
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.lines_written = 0
        self._thread = threading.Thread(target=self._run, name="plumelink-line-writer",
                                        daemon=True)
        self._thread.start()

    def put(self, event: LineEvent) -> None:
        """Hand a finished line over (waits while the previous one is still queued)."""
        self.raise_error()
        while True:
            try:
                self._queue.put(event, timeout=0.2)
                return
            except queue.Full:
                self.raise_error()
                if not self._thread.is_alive():
                    raise LineWriteError("the line writer thread has stopped") from None

    def raise_error(self) -> None:
        """Re-raise a write failure of the writer thread in the caller's thread."""
        with self._lock:
            error = self._error
        if error is not None:
            raise LineWriteError(f"writing a raster line failed: "
                                 f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        """Write every line handed over so far, then stop the thread. Does not raise: the
        caller checks `error` (it is closing the file either way)."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()

    @property
    def error(self) -> BaseException | None:
        with self._lock:
            return self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            with self._lock:
                failed = self._error is not None
            if failed:
                continue  # drain: nothing more is written after a failure
            try:
                self._append(item.line)
            except BaseException as exc:
                log.error("raster line %d not written: %s", item.line.index, exc)
                with self._lock:
                    self._error = exc
                continue
            self.lines_written += 1
            try:
                self._publish(item)
            except Exception:
                log.exception("publishing raster line %d failed", item.line.index)


__all__ = ["LineSink", "LineWriteError"]
