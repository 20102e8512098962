"""A small map file for the CLI tests of the map commands (repack, export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster_line import RasterLine, SystemLine

NY, NX, N_PX = 3, 5, 16
PRIMARY_NM = 250.0 + 9.0 * np.arange(N_PX) + 0.05 * np.arange(N_PX) ** 2  # not evenly spaced


def make_line(iy: int) -> RasterLine:
    """Row iy; the same iy always gives the same spectra (Poisson counts around 300)."""
    rng = np.random.default_rng(iy)
    x = 10.0 * np.arange(NX)

    def system() -> SystemLine:
        return SystemLine(spectra=rng.poisson(300, (NX, N_PX)).astype(np.uint16),
                          valid=np.ones(NX, bool), frame_id=np.arange(NX),
                          timestamp_s=np.zeros(NX))

    return RasterLine(index=iy, x_um=x, y_um=np.full(NX, 10.0 * iy), x_measured_um=x,
                      y_measured_um=np.full(NX, 10.0 * iy), shot_id=iy * NX + np.arange(NX),
                      primary=system(), secondary=system())


def small_map(path: Path, compression: str | None = "gzip", rows: tuple[int, ...] = (0, 1)
              ) -> Path:
    with MapWriter.create(path, ny=NY, nx=NX, primary_wavelength_nm=PRIMARY_NM,
                          secondary_wavelength_nm=np.linspace(260, 370, N_PX),
                          x_um=10.0 * np.arange(NX), y_um=10.0 * np.arange(NY),
                          compression=compression) as writer:
        for iy in rows:
            writer.append_line(make_line(iy))
    return path
