"""The map's device event log: rows written while the map grows are readable at once and
after closing, a wrong event is refused, and a map from before the log gets one on resume."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from plumelink.pipeline.map_writer import DEVICE_LOG, MapWriter, read_device_events
from plumelink.pipeline.raster_line import RasterLine, SystemLine

NY, NX, N_PX = 3, 4, 8


def _line(iy: int) -> RasterLine:
    def system() -> SystemLine:
        return SystemLine(np.full((NX, N_PX), 100 + iy, np.uint16), np.ones(NX, bool),
                          np.arange(NX) + iy * NX, np.arange(NX, dtype=np.float64))

    x = 10.0 * np.arange(NX)
    return RasterLine(index=iy, x_um=x, y_um=np.full(NX, 10.0 * iy), x_measured_um=x,
                      y_measured_um=np.full(NX, 10.0 * iy), shot_id=iy * NX + np.arange(NX),
                      primary=system(), secondary=system())


def _create(path: Path) -> MapWriter:
    return MapWriter.create(path, ny=NY, nx=NX, primary_wavelength_nm=np.linspace(250, 400, N_PX),
                            secondary_wavelength_nm=np.linspace(260, 370, N_PX),
                            x_um=10.0 * np.arange(NX), y_um=10.0 * np.arange(NY))


def test_events_are_readable_while_the_map_grows_and_after(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    writer = _create(path)
    writer.append_line(_line(0))
    writer.log_device_event("primary", "fault", 1, 1, "InstrumentTimeout: AVS_PollScan ü")
    assert [e["event"] for e in read_device_events(path)] == ["fault"]  # a reader meanwhile
    writer.log_device_event("primary", "reconnect", 1, 1, "x" * 600)  # cut to 512 bytes
    with pytest.raises(ValueError, match="device event must be one of"):
        writer.log_device_event("primary", "exploded", 1, 1)
    writer.close("interrupted", "test")
    events = read_device_events(path)
    assert [(e["device"], e["event"], e["line"], e["attempt"]) for e in events] == [
        ("primary", "fault", 1, 1), ("primary", "reconnect", 1, 1)]
    assert events[0]["message"].endswith("ü") and len(events[1]["message"]) == 512


def test_a_map_without_a_log_gets_one_when_resumed(tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    writer = _create(path)
    writer.append_line(_line(0))
    writer.close("interrupted", "stopped")
    with h5py.File(path, "r+") as f:  # as a map written before the log existed
        del f[DEVICE_LOG]
    assert read_device_events(path) == []
    with MapWriter.resume(path) as writer:
        writer.log_device_event("stage", "retry", 1, 1, "shot again")
        for iy in (1, 2):
            writer.append_line(_line(iy))
    assert [e["event"] for e in read_device_events(path)] == ["retry"]
