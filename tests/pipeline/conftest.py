"""Fixtures shared by the acquisition tests of this folder: the simulated bench profile they
run on, and raster lines built from plain arrays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scan_files import simulated_bench_profile

from plumelink.pipeline.raster_line import RasterLine, SystemLine


@pytest.fixture
def sim_profile(tmp_path: Path) -> Path:
    """The shipped simulated bench profile, run 100 x faster than real time."""
    return simulated_bench_profile(tmp_path, 100.0)


@pytest.fixture
def raster_line() -> Callable[..., RasterLine]:
    """``raster_line(index, nx=4)``: a line of ``nx`` valid spots of 8-pixel spectra."""
    def make(index: int, nx: int = 4) -> RasterLine:
        def system() -> SystemLine:
            return SystemLine(np.ones((nx, 8), np.uint16), np.ones(nx, bool),
                              np.arange(nx, dtype=np.int64), np.arange(nx, dtype=np.float64))

        x = np.arange(nx, dtype=np.float64)
        y = np.full(nx, float(index))
        return RasterLine(index=index, x_um=x, y_um=y, x_measured_um=x, y_measured_um=y,
                          shot_id=np.arange(nx, dtype=np.int64), primary=system(),
                          secondary=system())

    return make
