"""A map image in stage coordinates with a colour bar, a value readout under the mouse, invalid
spots marked, and clicks reported as (iy, ix)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from .live_model import INVALID

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

INVALID_RGBA = (255, 0, 0, 200)
MM_FROM_UM = 5_000.0  # maps wider than this are labelled in mm


def map_units(extent_um: tuple[float, float, float, float]) -> tuple[str, float]:
    """('µm', 1) or ('mm', 1e-3): the unit a map of this extent reads best in, and the factor
    from µm. The axes carry the unit in their label, so pyqtgraph's SI prefixes stay off (they
    would read "kµm")."""
    return ("mm", 1e-3) if max(abs(extent_um[2]), abs(extent_um[3])) >= MM_FROM_UM else ("µm", 1.0)


def map_levels(*maps: np.ndarray | None, symmetric: bool = False) -> tuple[float, float]:
    """Colour levels that cover every finite value of the maps (one scale for maps compared side
    by side); centred on zero when symmetric (a difference map)."""
    finite = [m[np.isfinite(m)] for m in maps if m is not None]
    finite = [f for f in finite if f.size]
    if not finite:
        return (0.0, 1.0)
    lo = float(min(f.min() for f in finite))
    hi = float(max(f.max() for f in finite))
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return (-m, m)
    return (lo, hi if hi > lo else lo + 1.0)


class MapView(pg.GraphicsLayoutWidget):
    """One (ny, nx) map; NaN shows blank, invalid spots red; the value under the mouse is shown
    below the title."""

    spotClicked = Signal(int, int)

    def __init__(self, title: str, parent=None, value_label: str = "",
                 colormap: str = "viridis", units: str | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self._fixed_units = units  # e.g. "spot": axes in raster indices, never converted
        self.plot = self.addPlot(title=title)
        self.plot.setAspectLocked(True)
        for side in ("bottom", "left"):
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.image = pg.ImageItem()
        self.overlay = pg.ImageItem()
        self.plot.addItem(self.image)
        self.plot.addItem(self.overlay)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get(colormap), interactive=False,
                                        label=value_label, width=12)
        self.colorbar.setImageItem(self.image)
        self.addItem(self.colorbar)
        self.nextRow()
        self.readout = self.addLabel("", colspan=2, size="8pt")
        self._units = ("", 0.0)
        self._shape = (0, 0)
        self._extent = (0.0, 0.0, 1.0, 1.0)
        self._data: np.ndarray | None = None
        self._invalid: np.ndarray | None = None
        self.levels = (0.0, 1.0)
        self.scene().sigMouseClicked.connect(self._clicked)
        self.scene().sigMouseMoved.connect(self._moved)
        self._set_units(self._units_for(self._extent))

    def _units_for(self, extent: tuple[float, float, float, float]) -> tuple[str, float]:
        return (self._fixed_units, 1.0) if self._fixed_units else map_units(extent)

    def setTitle(self, title: str) -> None:
        self.title = title
        self.plot.setTitle(title)

    def _set_units(self, units: tuple[str, float]) -> None:
        if units != self._units:
            self._units = units
            self.plot.setLabel("bottom", f"x ({units[0]})")
            self.plot.setLabel("left", f"y ({units[0]})")

    def show_map(self, data: np.ndarray, extent: tuple[float, float, float, float],
                 invalid: np.ndarray | None = None, symmetric: bool = False,
                 levels: tuple[float, float] | None = None) -> None:
        """Show DATA over EXTENT (x0, y0, width, height in µm); LEVELS shared with other maps,
        else this map's own range."""
        self.levels = levels if levels is not None else map_levels(data, symmetric=symmetric)
        self._data = data
        self.image.setImage(data, levels=self.levels, autoLevels=False)
        self.colorbar.setLevels(self.levels)
        mask = np.zeros(data.shape, bool) if invalid is None else np.asarray(invalid, bool)
        if self._invalid is None or not np.array_equal(mask, self._invalid):
            rgba = np.zeros((*data.shape, 4), np.uint8)
            rgba[mask] = INVALID_RGBA
            self.overlay.setImage(rgba, autoLevels=False, levels=(0, 255))
            self._invalid = mask
        if data.shape != self._shape or extent != self._extent:
            # a fixed view of the whole raster: growing data never re-ranges the axes
            units = self._units_for(extent)
            self._set_units(units)
            f = units[1]
            rect = pg.QtCore.QRectF(extent[0] * f, extent[1] * f, extent[2] * f, extent[3] * f)
            self.image.setRect(rect)
            self.overlay.setRect(rect)
            self.plot.setRange(rect, padding=0.02)
            self.plot.disableAutoRange()
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
        ix = int(np.floor((x_um - x0) / w * nx))
        iy = int(np.floor((y_um - y0) / h * ny))
        return (iy, ix) if 0 <= ix < nx and 0 <= iy < ny else None

    def value_text(self, iy: int, ix: int) -> str:
        """What the readout says of spot (iy, ix)."""
        x0, y0, w, h = self._extent
        ny, nx = self._shape
        unit, f = self._units
        x = (x0 + (ix + 0.5) * w / nx) * f
        y = (y0 + (iy + 0.5) * h / ny) * f
        value = np.nan if self._data is None else float(self._data[iy, ix])
        state = "invalid" if self._invalid is not None and self._invalid[iy, ix] else (
            "—" if not np.isfinite(value) else f"{value:.4g}")
        return f"x = {x:.4g} {unit}, y = {y:.4g} {unit} (iy={iy}, ix={ix}): {state}"

    def _view_point(self, scene_pos) -> tuple[float, float]:
        point = self.plot.vb.mapSceneToView(scene_pos)
        f = self._units[1] or 1.0
        return point.x() / f, point.y() / f

    def _moved(self, scene_pos) -> None:
        spot = self.spot_at(*self._view_point(scene_pos))
        self.readout.setText(self.value_text(*spot) if spot is not None else "")

    def _clicked(self, event) -> None:
        spot = self.spot_at(*self._view_point(event.scenePos()))
        if spot is not None:
            self.spotClicked.emit(*spot)


def invalid_mask(status: np.ndarray) -> np.ndarray:
    return status == INVALID
