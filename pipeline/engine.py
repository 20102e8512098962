"""The acquisition engine's public face: run a scan to its end, on a worker thread, or as an
iterator of line events.

The engine itself lives in `plumelink.pipeline.acquisition`: one runner (`Runner`) that owns
the bench, pause / resume / abort, the writer and the cleanup that makes the bench safe, and
small line procedures (step-and-shoot, fly on the DDG clock, fly on the stage's distance
trigger) chosen by the plan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plumelink.drivers.bench import Bench

from .acquisition.handle import ScanAborted, ScanHandle
from .acquisition.runner import AcquisitionResult, Runner
from .line_events import LineEvent, ScanStarted, Subscription
from .map_writer import DEFAULT_COMPRESSION
from .scan import ScanConfig


def acquire(scan: ScanConfig, *, out: str | Path | None = None, resume: bool = False,
            on_line: Callable[[LineEvent], object] | None = None,
            handle: ScanHandle | None = None, bench: Bench | None = None,
            compression: str | None = DEFAULT_COMPRESSION,
            on_start: Callable[[ScanStarted], object] | None = None) -> AcquisitionResult:
    """Run ``scan`` to the end in this thread and return how it ended.

    ``on_line(event)`` is called on a thread of its own after each line is on disk (a slow
    callback only loses events, never slows the scan); ``on_start(event)``, on the same
    thread, once before the first line. ``handle`` pauses or aborts it from another thread; an
    abort returns a result with status "interrupted". Instrument errors and Ctrl-C propagate
    after the DDG is disabled and the file closed as interrupted.
    """
    runner = Runner(scan, out=out, resume=resume, handle=handle, compression=compression)
    if on_line is not None or on_start is not None:
        runner.events.subscribe_callback(on_line or (lambda event: None), on_start=on_start)
    try:
        return runner.run(bench)
    except ScanAborted:
        assert runner.result is not None
        return runner.result


@dataclass
class RunningScan:
    """A scan on a worker thread: its handle, its events (a `ScanStarted`, then a `LineEvent`
    per line) and, once done, its result."""

    runner: Runner
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
    """Start ``scan`` on a worker thread (for the GUI); iterate ``.events`` for its events."""
    runner = Runner(scan, out=out, resume=resume, handle=handle, compression=compression)
    events = runner.events.subscribe(queue_size)
    running = RunningScan(runner, threading.Thread(), runner.handle, events)

    def work() -> None:
        try:
            running.result = runner.run(bench)
        except BaseException as exc:  # reported through wait()
            running.error = exc
            running.result = runner.result

    running.thread = threading.Thread(target=work, name="plumelink-acquisition", daemon=True)
    running.thread.start()
    return running


def iter_lines(scan: ScanConfig, **kwargs: Any) -> Iterator[LineEvent]:
    """Run ``scan`` on a worker thread and yield its line events as they come."""
    running = start_acquisition(scan, **kwargs)
    for event in running.events:
        if isinstance(event, LineEvent):
            yield event
    running.wait()


__all__ = [
    "AcquisitionResult",
    "Runner",
    "RunningScan",
    "ScanAborted",
    "ScanHandle",
    "acquire",
    "iter_lines",
    "start_acquisition",
]
