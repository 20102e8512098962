"""A map image with invalid spots marked and clicks reported as (iy, ix)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from .live_model import INVALID

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

INVALID_RGBA = (255, 0, 0, 200)


class MapView(pg.PlotWidget):
    """One (ny, nx) map in stage coordinates (µm); NaN shows blank, invalid spots red."""

    spotClicked = Signal(int, int)

    def __init__(self, title: str, parent=None, units: str = "µm") -> None:
        super().__init__(parent, title=title)
        self.setAspectLocked(True)
        self.setLabel("bottom", "x", units)
        self.setLabel("left", "y", units)
        self.image = pg.ImageItem()
        self.overlay = pg.ImageItem()
        self.addItem(self.image)
        self.addItem(self.overlay)
        self.image.setColorMap(pg.colormap.get("viridis"))
        self._shape = (0, 0)
        self._extent = (0.0, 0.0, 1.0, 1.0)
        self._invalid: np.ndarray | None = None
        self.scene().sigMouseClicked.connect(self._clicked)

    def show_map(self, data: np.ndarray, extent: tuple[float, float, float, float],
                 invalid: np.ndarray | None = None, symmetric: bool = False) -> None:
        finite = data[np.isfinite(data)]
        if finite.size:
            lo, hi = (float(finite.min()), float(finite.max()))
            if symmetric:
                m = max(abs(lo), abs(hi)) or 1.0
                lo, hi = -m, m
            levels = (lo, hi if hi > lo else lo + 1.0)
        else:
            levels = (0.0, 1.0)
        self.image.setImage(data, levels=levels, autoLevels=False)
        mask = np.zeros(data.shape, bool) if invalid is None else np.asarray(invalid, bool)
        if self._invalid is None or not np.array_equal(mask, self._invalid):
            rgba = np.zeros((*data.shape, 4), np.uint8)
            rgba[mask] = INVALID_RGBA
            self.overlay.setImage(rgba, autoLevels=False, levels=(0, 255))
            self._invalid = mask
        if data.shape != self._shape or extent != self._extent:
            # a fixed view of the whole raster: growing data never re-ranges the axes
            rect = pg.QtCore.QRectF(*extent)
            self.image.setRect(rect)
            self.overlay.setRect(rect)
            self.setRange(rect, padding=0.02)
            self.disableAutoRange()
            self._shape, self._extent = data.shape, extent

    @property
    def layout(self) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
        """The (shape, extent) the axes are laid out for."""
        return self._shape, self._extent

    def lay_out(self, shape: tuple[int, int],
                extent: tuple[float, float, float, float]) -> None:
        """Show an empty map of this shape and extent: the axes are laid out (the dearest part
        of a view's first paint) before any data arrives."""
        self.show_map(np.full(shape, np.nan, np.float32), extent)

    def spot_at(self, x_um: float, y_um: float) -> tuple[int, int] | None:
        ny, nx = self._shape
        x0, y0, w, h = self._extent
        if not ny or not nx:
            return None
        ix = int((x_um - x0) / w * nx)
        iy = int((y_um - y0) / h * ny)
        return (iy, ix) if 0 <= ix < nx and 0 <= iy < ny else None

    def _clicked(self, event) -> None:
        point = self.plotItem.vb.mapSceneToView(event.scenePos())
        spot = self.spot_at(point.x(), point.y())
        if spot is not None:
            self.spotClicked.emit(*spot)


def invalid_mask(status: np.ndarray) -> np.ndarray:
    return status == INVALID
