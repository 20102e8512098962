"""One raster line of paired spectra: the unit the engine publishes and the map store appends.

Plain frozen dataclasses whose arrays are checked once at construction, so every layer after
the pairer can trust shapes and dtypes. Arrays are in storage column order (ix increasing),
whatever order the stage visited the spots in. Treat the arrays as read-only once a line is
built: lines are handed between threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .emissivity import total_emissivity


def _check(
    owner: str, name: str, value: object, dtype: str, shape: tuple[int | None, ...]
) -> None:
    """Raise ValueError unless value is an ndarray of this dtype and shape (None = any)."""
    field = f"{owner}.{name}"
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{field} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise ValueError(f"{field} must have dtype {dtype}, got {value.dtype}")
    wanted = "(" + ", ".join("any" if n is None else str(n) for n in shape) + ")"
    if value.ndim != len(shape) or any(
        n is not None and n != got for n, got in zip(shape, value.shape, strict=True)
    ):
        raise ValueError(f"{field} must have shape {wanted}, got {value.shape}")


@dataclass(frozen=True, eq=False)
class SystemLine:
    """What one spectrometer recorded along a raster line.

    spectra: (nx, n_px) uint16 raw counts (float32 for imported data that are not whole
    counts); valid: (nx,) bool, False where the shot was missed;
    frame_id: (nx,) int64, -1 = none; timestamp_s: (nx,) float64 device time, NaN = none;
    emissivity: (nx,) float32 total emissivity (NaN where invalid), computed from the spectra
    when not given.
    """

    spectra: np.ndarray
    valid: np.ndarray
    frame_id: np.ndarray
    timestamp_s: np.ndarray
    emissivity: np.ndarray | None = None

    def __post_init__(self) -> None:
        dtype = getattr(self.spectra, "dtype", None)
        _check("SystemLine", "spectra", self.spectra,
               "float32" if dtype == np.float32 else "uint16", (None, None))
        nx = self.spectra.shape[0]
        _check("SystemLine", "valid", self.valid, "bool", (nx,))
        _check("SystemLine", "frame_id", self.frame_id, "int64", (nx,))
        _check("SystemLine", "timestamp_s", self.timestamp_s, "float64", (nx,))
        if self.emissivity is None:
            object.__setattr__(self, "emissivity", total_emissivity(self.spectra, self.valid))
        _check("SystemLine", "emissivity", self.emissivity, "float32", (nx,))

    @property
    def nx(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def n_px(self) -> int:
        return int(self.spectra.shape[1])


@dataclass(frozen=True, eq=False)
class LineTruth:
    """Simulation ground truth of a line: mineral label index and composition in wt%."""

    mineral: np.ndarray
    composition: np.ndarray

    def __post_init__(self) -> None:
        _check("LineTruth", "mineral", self.mineral, "int16", (None,))
        _check(
            "LineTruth", "composition", self.composition, "float32", (self.mineral.shape[0], None)
        )

    @property
    def n_elements(self) -> int:
        return int(self.composition.shape[1])


@dataclass(frozen=True, eq=False)
class RasterLine:
    """Row `index` (iy) of a map: stage positions, shot ids and both systems' spectra.

    For a vertical raster order a raster line is column `index` (ix) instead: the arrays then
    run along y in increasing y (``x_um`` all equal to the column's x), and the map store
    writes it with `MapWriter.append_column`.
    """

    index: int
    x_um: np.ndarray
    y_um: np.ndarray
    x_measured_um: np.ndarray
    y_measured_um: np.ndarray
    shot_id: np.ndarray
    primary: SystemLine
    secondary: SystemLine
    truth: LineTruth | None = None

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int | np.integer):
            raise ValueError(f"RasterLine.index must be an int, got {type(self.index).__name__}")
        if self.index < 0:
            raise ValueError(f"RasterLine.index must be >= 0, got {self.index}")
        object.__setattr__(self, "index", int(self.index))
        _check("RasterLine", "x_um", self.x_um, "float64", (None,))
        nx = self.x_um.shape[0]
        for name in ("y_um", "x_measured_um", "y_measured_um"):
            _check("RasterLine", name, getattr(self, name), "float64", (nx,))
        _check("RasterLine", "shot_id", self.shot_id, "int64", (nx,))
        for name in ("primary", "secondary"):
            system = getattr(self, name)
            if not isinstance(system, SystemLine):
                raise ValueError(
                    f"RasterLine.{name} must be a SystemLine, got {type(system).__name__}"
                )
            if system.nx != nx:
                raise ValueError(
                    f"RasterLine.{name} has {system.nx} spots but x_um has {nx} "
                    f"(spectra {system.spectra.shape}, x_um {self.x_um.shape})"
                )
        if self.truth is not None:
            if not isinstance(self.truth, LineTruth):
                raise ValueError(
                    f"RasterLine.truth must be a LineTruth or None, "
                    f"got {type(self.truth).__name__}"
                )
            if self.truth.mineral.shape[0] != nx:
                raise ValueError(
                    f"RasterLine.truth has {self.truth.mineral.shape[0]} spots but x_um has "
                    f"{nx} (mineral {self.truth.mineral.shape}, x_um {self.x_um.shape})"
                )

    @property
    def nx(self) -> int:
        return int(self.x_um.shape[0])
