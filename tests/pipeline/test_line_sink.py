"""The engine's writer thread: lines reach the file in order, each before its event, and a
write failure stops writing and reaches the engine, with the lines written before it kept."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from plumelink.pipeline.line_sink import FinishedLine, LineSink, LineWriteError
from plumelink.pipeline.raster_line import RasterLine, SystemLine


def raster_line(index: int, nx: int = 4) -> RasterLine:
    def system() -> SystemLine:
        return SystemLine(np.ones((nx, 8), np.uint16), np.ones(nx, bool),
                          np.arange(nx, dtype=np.int64), np.arange(nx, dtype=np.float64))

    x = np.arange(nx, dtype=np.float64)
    y = np.full(nx, float(index))
    return RasterLine(index=index, x_um=x, y_um=y, x_measured_um=x, y_measured_um=y,
                      shot_id=np.arange(nx, dtype=np.int64), primary=system(),
                      secondary=system())


def test_lines_are_written_in_order_each_before_its_event() -> None:
    log: list[tuple[str, int]] = []
    gate = threading.Event()

    def append(line: RasterLine) -> None:
        gate.wait(5)  # a slow disk: the engine goes on until the queue is full
        log.append(("written", line.index))

    sink = LineSink(append, lambda f: log.append(("published", f.line.index)))
    sink.put(FinishedLine(raster_line(0), {}))
    sink.put(FinishedLine(raster_line(1), {}))  # queued behind the one being written
    gate.set()
    for i in range(2, 6):
        sink.put(FinishedLine(raster_line(i), {}, context=i))
    sink.close()
    assert sink.error is None and sink.lines_written == 6
    assert log == [(kind, i) for i in range(6) for kind in ("written", "published")]


def test_a_write_failure_stops_writing_and_reaches_the_engine() -> None:
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
            sink.put(FinishedLine(raster_line(i), {}))
    assert isinstance(info.value.__cause__, OSError)
    sink.close()  # never raises: the engine closes the file either way
    assert written == [0, 1] and published == [0, 1]  # nothing written after the failure
    assert sink.lines_written == 2
    assert isinstance(sink.error, OSError)
