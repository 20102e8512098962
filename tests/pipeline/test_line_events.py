"""Scan events to subscribers: a slow subscriber loses old line events, never the scan-started
event; callbacks get the kinds they asked for; the end reaches every subscriber."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from plumelink.pipeline.line_events import (
    LineBroadcaster,
    LineEvent,
    ScanProgress,
    ScanStarted,
)
from plumelink.pipeline.raster_line import RasterLine


def started(lines: int = 6) -> ScanStarted:
    axes = {"primary": np.linspace(245, 407, 16), "secondary": np.linspace(260, 370, 12)}
    return ScanStarted(map_path="map.h5", procedure="step-and-shoot", order="snake-horizontal",
                       line_axis="y", x_um=np.arange(4.0), y_um=np.arange(float(lines)),
                       wavelength_nm=axes, lines_total=lines, lines_done=0,
                       shots_total=4 * lines)


def line_event(raster_line: Callable[..., RasterLine], index: int) -> LineEvent:
    progress = ScanProgress(index + 1, 6, 4 * (index + 1), 24, 0, 0, 0.1 * (index + 1))
    return LineEvent("map.h5", raster_line(index), "y", progress, {})


def test_a_slow_subscriber_loses_old_lines_never_the_start(raster_line) -> None:
    events = LineBroadcaster()
    slow = events.subscribe(maxsize=3)
    events.publish(started())
    for i in range(6):
        events.publish(line_event(raster_line, i))
    events.close()
    got = list(slow)  # 3 places: the start, the newest line and the end
    assert isinstance(got[0], ScanStarted) and got[0].shape == (6, 4)
    assert [e.line.index for e in got[1:]] == [5]
    assert slow.dropped == 5 and slow.closed


def test_callbacks_get_the_kinds_they_asked_for(raster_line) -> None:
    events = LineBroadcaster()
    lines: list[int] = []
    starts: list[ScanStarted] = []
    done = threading.Event()

    def on_line(event: LineEvent) -> None:
        lines.append(event.line.index)
        if event.line.index == 1:
            raise RuntimeError("a broken plot")  # logged; the subscriber keeps receiving

    events.subscribe_callback(on_line, on_start=starts.append)
    only_lines: list[object] = []
    events.subscribe_callback(only_lines.append)
    events.subscribe_callback(lambda event: done.set())
    events.publish(started())
    for i in range(3):
        events.publish(line_event(raster_line, i))
    events.close()
    assert done.is_set()
    assert lines == [0, 1, 2] and len(starts) == 1
    assert starts[0].wavelength_nm["secondary"].size == 12
    assert all(isinstance(e, LineEvent) for e in only_lines) and len(only_lines) == 3


def test_get_waits_with_a_timeout_and_ends_with_the_scan() -> None:
    events = LineBroadcaster()
    sub = events.subscribe()
    assert sub.get(timeout=0.05) is None and not sub.closed
    events.publish(started())
    assert isinstance(sub.get(timeout=1.0), ScanStarted)
    events.close()
    assert sub.get(timeout=1.0) is None and sub.closed
