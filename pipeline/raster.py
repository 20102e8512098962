"""Raster grids: which spots a map has and in which order the stage visits them.

A map is stored row by row (raster line iy, columns ix increasing); the order only decides
the sequence of shots within each line, and so the shot ids and the crater carry-over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORDERS = ("snake-horizontal", "plain-horizontal")


@dataclass(frozen=True)
class RasterGrid:
    """A rectangular grid of ny raster lines of nx spots, positions in µm."""

    ny: int
    nx: int
    step_um: float
    origin_um: tuple[float, float] = (0.0, 0.0)
    order: str = "snake-horizontal"

    def __post_init__(self) -> None:
        if self.ny < 1 or self.nx < 1:
            raise ValueError(f"a raster needs at least one spot, got {self.ny} x {self.nx}")
        if not np.isfinite(self.step_um) or self.step_um <= 0:
            raise ValueError(f"raster step must be a positive number of µm, got {self.step_um}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown raster order {self.order!r}; choose one of {ORDERS}")

    @property
    def x_um(self) -> np.ndarray:
        return self.origin_um[0] + self.step_um * np.arange(self.nx, dtype=np.float64)

    @property
    def y_um(self) -> np.ndarray:
        return self.origin_um[1] + self.step_um * np.arange(self.ny, dtype=np.float64)

    @property
    def n_spots(self) -> int:
        return self.ny * self.nx

    def columns_in_shot_order(self, iy: int) -> np.ndarray:
        """Column indices of line iy in the order the spots are shot."""
        cols = np.arange(self.nx)
        if self.order == "snake-horizontal" and iy % 2 == 1:
            return cols[::-1]
        return cols

    def first_shot_of_line(self, iy: int) -> int:
        return iy * self.nx
