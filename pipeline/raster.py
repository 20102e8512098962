"""Raster grids: which spots a map has and in which order the stage visits them.

A raster *line* is what the stage shoots in one go and what the map file stores as one row:
for the horizontal orders a line is a row at fixed y (spots along x), for the vertical orders
a column at fixed x (spots along y). Within a stored line the spots are kept in increasing
coordinate; the order only decides the sequence of shots within each line ("snake": every odd
line runs backwards; "plain": every line runs forwards, with a retrace), and so the shot ids
and the crater carry-over.

`RasterGrid` is the horizontal grid used by the simulator; `pipeline.plan` builds plans for
all four orders with `line_axis`, `is_snake` and `shot_order`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HORIZONTAL_ORDERS = ("snake-horizontal", "plain-horizontal")
VERTICAL_ORDERS = ("snake-vertical", "plain-vertical")
ALL_ORDERS = HORIZONTAL_ORDERS + VERTICAL_ORDERS
DEFAULT_ORDER = "snake-horizontal"
ORDERS = HORIZONTAL_ORDERS  # the orders a RasterGrid supports


def _check_order(order: str) -> None:
    if order not in ALL_ORDERS:
        raise ValueError(f"unknown raster order {order!r}; choose one of {ALL_ORDERS}")


def line_axis(order: str) -> str:
    """The axis held fixed along one raster line: "y" for horizontal orders, "x" for vertical."""
    _check_order(order)
    return "y" if order in HORIZONTAL_ORDERS else "x"


def is_snake(order: str) -> bool:
    _check_order(order)
    return order.startswith("snake-")


def shot_order(n_spots: int, line: int, order: str) -> np.ndarray:
    """Storage positions (0 .. n_spots-1 along the line) of line ``line`` in shot order."""
    cols = np.arange(n_spots)
    if is_snake(order) and line % 2 == 1:
        return cols[::-1]
    return cols


@dataclass(frozen=True)
class RasterGrid:
    """A rectangular grid of ny raster lines (rows) of nx spots, positions in µm."""

    ny: int
    nx: int
    step_um: float
    origin_um: tuple[float, float] = (0.0, 0.0)
    order: str = DEFAULT_ORDER

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
        return shot_order(self.nx, iy, self.order)

    def first_shot_of_line(self, iy: int) -> int:
        return iy * self.nx
