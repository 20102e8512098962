"""The engine's writer thread: lines reach the file in order, each before its event, and a
write failure stops writing and reaches the engine, with the lines written before it kept."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from plumelink.pipeline.line_events import LineEvent, ScanProgress
from plumelink.pipeline.line_sink import LineSink, LineWriteError
from plumelink.pipeline.raster_line import RasterLine


@pytest.fixture
def event(raster_line: Callable[..., RasterLine]) -> Callable[[int], LineEvent]:
    """``event(index)``: the line event of raster line ``index`` of a 10-line map."""
    def make(index: int) -> LineEvent:
        progress = ScanProgress(lines_done=index + 1, lines_total=10,
                                shots_done=4 * (index + 1), shots_total=40, invalid_primary=0,
                                invalid_secondary=0, elapsed_s=0.1 * (index + 1))
        return LineEvent("map.h5", raster_line(index), "y", progress, {})

    return make


def test_lines_are_written_in_order_each_before_its_event(event) -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()

    def append(line: RasterLine) -> None:
        gate.wait(5)  # a slow disk: the engine goes on until the queue is full
        log.append(("written", line.index))

    sink = LineSink(append, lambda f: log.append(("published", f.line.index)))
    sink.put(event(0))
    sink.put(event(1))  # queued behind the one being written
    gate.set()
    for i in range(2, 6):
        sink.put(event(i))
    sink.close()
    assert sink.error is None and sink.lines_written == 6
    assert log == [(kind, i) for i in range(6) for kind in ("written", "published")]


def test_a_write_failure_stops_writing_and_reaches_the_engine(event) -> None:
    written: list[int] = []

    def append(line: RasterLine) -> None:
        if line.index == 2:
            raise OSError("disk full")
        written.append(line.index)

    published: list[int] = []
    sink = LineSink(append, lambda f: published.append(f.line.index))
    with pytest.raises(LineWriteError, match="disk full") as info:
        # with one line queued the engine is never more than two lines ahead of the writer,
        # so a put soon after line 2 sees its failure
        for i in range(10):
            sink.put(event(i))
    assert isinstance(info.value.__cause__, OSError)
    sink.close()  # never raises: the engine closes the file either way
    assert written == [0, 1] and published == [0, 1]  # nothing written after the failure
    assert sink.lines_written == 2
    assert isinstance(sink.error, OSError)
