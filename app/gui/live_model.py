"""What the live views show, as plain data: growing maps (NaN where nothing is acquired yet),
the latest spectra and the scan's progress.

Worker threads write (`add_line`, `add_transferred`), the GUI reads `snapshot()` on its paint
timer. Every write and read holds one lock for a few array copies only; nothing here touches
Qt or the hardware.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from plumelink.models.clusters import PHASE_FEATURES, phase_features
from plumelink.pipeline.element_maps import LineWindow, line_areas, line_window, resolution
from plumelink.pipeline.emissivity import total_emissivity
from plumelink.pipeline.line_catalogue import parse_line
from plumelink.pipeline.line_events import ScanProgress
from plumelink.pipeline.raster_line import RasterLine

SYSTEMS = ("primary", "secondary")
CHANGE_KINDS = ("lines", "transferred", "confidence", "window", "progress", "elements")
DEFAULT_ELEMENT_LINES = ("Si I 288.16", "Al I 309.27", "Ca II 393.37")
NOT_ACQUIRED, INVALID, VALID = -1, 0, 1


def window_emission(spectra: np.ndarray, wavelength_nm: np.ndarray, center_nm: float,
                    half_width_nm: float, valid: np.ndarray) -> np.ndarray:
    """Emission of one line: counts in the window above the window's edge level; NaN invalid."""
    inside = np.flatnonzero(np.abs(wavelength_nm - center_nm) <= half_width_nm)
    if inside.size == 0:
        return np.full(spectra.shape[0], np.nan, np.float32)
    block = spectra[:, inside].astype(np.float32)
    edge = np.minimum(block[:, :1], block[:, -1:])
    out = (block - edge).sum(axis=1)
    out[~valid] = np.nan
    return out.astype(np.float32)


@dataclass
class Snapshot:
    """A consistent copy of the live data for one repaint."""

    version: int
    shape: tuple[int, int]
    extent_um: tuple[float, float, float, float]  # x0, y0, width, height
    emissivity: dict[str, np.ndarray]
    status: dict[str, np.ndarray]  # NOT_ACQUIRED / INVALID / VALID per spot
    window: np.ndarray
    transferred: np.ndarray | None
    confidence: np.ndarray | None
    latest: dict[str, tuple[np.ndarray, np.ndarray]]  # system -> (wavelength, spectrum)
    progress: ScanProgress | None
    map_path: str
    lines_done: int
    transferred_lines: int
    transfer_arrivals: dict[int, float] = field(default_factory=dict)
    # True: `latest` holds one spot's measured spectra with the transfer's baseline removed,
    # beside its transferred spectrum (compared in one space)
    latest_baseline_corrected: bool = False
    interval_radius: np.ndarray | None = None  # calibrated 90 % radius, when the model has one
    # element maps of the chosen lines (label -> (ny, nx)), measured and transferred primary
    elements: dict[str, np.ndarray] = field(default_factory=dict)
    elements_transferred: dict[str, np.ndarray] = field(default_factory=dict)
    element_windows: tuple[LineWindow, ...] = ()
    # what changed, by kind ("lines", "transferred", "confidence", "window"): a view repaints
    # only when one of the kinds it shows has moved
    changes: dict[str, int] = field(default_factory=dict)


class LiveModel:
    """Maps of one raster (one map file), filled line by line from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # called on the writer's thread after each transferred line; keep them short
        self.on_transferred: list[Callable[[], None]] = []
        self.window_nm = (288.16, 0.3)  # Si I 288.16 nm, half width
        self.element_lines: tuple[str, ...] = DEFAULT_ELEMENT_LINES
        self._settings: dict = {}
        self.reset((1, 1))

    def reset(self, shape: tuple[int, int], *, x_um: np.ndarray | None = None,
              y_um: np.ndarray | None = None, wavelength: dict | None = None,
              map_path: str = "") -> None:
        ny, nx = shape
        with self._lock:
            self._version = getattr(self, "_version", 0) + 1
            self._shape = (ny, nx)
            x = np.asarray(x_um if x_um is not None else np.arange(nx), float)
            y = np.asarray(y_um if y_um is not None else np.arange(ny), float)
            dx = float(x[1] - x[0]) if x.size > 1 else 1.0
            dy = float(y[1] - y[0]) if y.size > 1 else 1.0
            self._extent = (float(x[0]) - dx / 2, float(y[0]) - dy / 2, dx * nx, dy * ny)
            self._emissivity = {s: np.full(shape, np.nan, np.float32) for s in SYSTEMS}
            self._status = {s: np.full(shape, NOT_ACQUIRED, np.int8) for s in SYSTEMS}
            self._window = np.full(shape, np.nan, np.float32)
            self._transferred: np.ndarray | None = None
            self._confidence: np.ndarray | None = None
            self._radius: np.ndarray | None = None  # calibrated interval radius per spot
            self._wavelength = dict(wavelength or {})
            self._latest: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            self._latest_corrected = False
            self._progress: ScanProgress | None = None
            self._map_path = map_path
            self._lines_done = 0
            self._transferred_lines = 0
            self._arrivals: dict[int, float] = {}
            self._changes = {k: self._version for k in CHANGE_KINDS}
            # per-spot features of the measured primary spectra for the live phase map
            self._features = np.full((ny, nx, PHASE_FEATURES), np.nan, np.float32)
            self._windows: tuple[LineWindow, ...] = ()
            self._elements: dict[str, np.ndarray] = {}
            self._elements_transferred: dict[str, np.ndarray] = {}
            self._layout_elements()

    # ------------------------------------------------------------------ writers
    def set_wavelengths(self, wavelength: Mapping[str, np.ndarray],
                        settings: Mapping | None = None) -> None:
        """The wavelength axes of the systems (nm), e.g. from a scan-started event, and the
        instrument settings that hold the spectrometers' resolution (a map file's snapshot,
        or the bench profile's spectrometers): lines added from now have their element maps,
        window emission and latest spectra."""
        with self._lock:
            self._wavelength.update({s: np.asarray(a) for s, a in wavelength.items()})
            if settings is not None:
                self._settings = dict(settings)
            self._layout_elements()

    def set_element_lines(self, names: tuple[str, ...] | list[str]) -> None:
        """Choose the lines of the element maps (names as `plumelink lines` takes them). A
        name that is not a line of the primary axis raises ValueError and changes nothing.
        Maps restart empty: lines added from now fill them."""
        names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
        wl = self._wavelength.get("primary")
        if wl is not None:
            self._windows_for(names, wl)  # raises before anything changes
        with self._lock:
            self.element_lines = names
            self._layout_elements()

    def _windows_for(self, names: tuple[str, ...], wl: np.ndarray,
                     skip_bad: bool = False) -> tuple[LineWindow, ...]:
        axis = np.asarray(wl, np.float64)
        res = resolution(self._settings, "primary", axis)
        span = (float(axis[0]), float(axis[-1]))
        windows = []
        for name in names:
            try:
                windows.append(line_window(parse_line(name, span), axis, res))
            except ValueError:
                if not skip_bad:
                    raise
        return tuple({w.label: w for w in windows}.values())

    def _layout_elements(self) -> None:  # under the lock
        """Windows of the chosen lines on the primary axis (lines not on this axis are left
        out: a map of another range keeps the lines it has) and empty maps for them."""
        wl = self._wavelength.get("primary")
        self._windows = (self._windows_for(self.element_lines, wl, skip_bad=True)
                         if wl is not None else ())
        self._elements = {w.label: np.full(self._shape, np.nan, np.float32)
                          for w in self._windows}
        self._elements_transferred = {}
        self._weights = (np.stack([w.weights for w in self._windows], 1).astype(np.float32)
                         if self._windows else None)
        self._element_set = getattr(self, "_element_set", 0) + 1
        self._changed("elements")

    def element_weights(self) -> tuple[int, np.ndarray | None]:
        """(version, weights (n_primary_px, n_lines) or None): what the live transfer needs to
        give each transferred line's element areas; the version tells stale results apart."""
        with self._lock:
            return self._element_set, self._weights

    def add_line(self, line: RasterLine, progress: ScanProgress | None = None,
                 line_axis: str = "y") -> None:
        """A measured raster line (row ``line.index`` for horizontal orders)."""
        index = (line.index, slice(None)) if line_axis == "y" else (slice(None), line.index)
        prim = line.primary
        wl = self._wavelength.get("primary")
        center, half = self.window_nm
        window = (window_emission(prim.spectra, wl, center, half, prim.valid)
                  if wl is not None else None)
        windows = self._windows
        areas = line_areas(prim.spectra, list(windows)) if windows else None
        features = phase_features(prim.spectra)
        features[~np.asarray(prim.valid, bool)] = np.nan
        if areas is not None:
            areas[~np.asarray(prim.valid, bool)] = np.nan
        with self._lock:
            for s in SYSTEMS:
                sysline = getattr(line, s)
                self._emissivity[s][index] = sysline.emissivity
                self._status[s][index] = np.where(sysline.valid, VALID, INVALID)
                valid = np.flatnonzero(sysline.valid)
                if valid.size and s in self._wavelength and not self._latest_corrected:
                    self._latest[s] = (self._wavelength[s], sysline.spectra[valid[-1]].copy())
            if window is not None:
                self._window[index] = window
            self._features[index] = features
            if areas is not None and windows is self._windows:  # not changed meanwhile
                for k, w in enumerate(windows):
                    self._elements[w.label][index] = areas[:, k]
                self._changed("elements")
            if progress is not None:
                self._progress = progress
            self._lines_done += 1
            self._arrivals[line.index] = time.perf_counter()
            self._changed("lines")

    def add_transferred(self, index: int, emissivity: np.ndarray,
                        confidence: np.ndarray | None = None,
                        spectrum: tuple[np.ndarray, np.ndarray] | None = None,
                        element_areas: tuple[int, np.ndarray] | None = None,
                        measured: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                        ) -> None:
        """The transferred primary emissivity (and, when known, confidence) of raster line
        ``index``; then each ``on_transferred`` callback (a prompt repaint).
        ``element_areas`` = (version of `element_weights`, areas (nx, n_lines)); ``measured``:
        the same spot's measured spectra, baseline-corrected like the transferred one."""
        with self._lock:
            if self._transferred is None:
                self._transferred = np.full(self._shape, np.nan, np.float32)
                self._confidence = np.full(self._shape, np.nan, np.float32)
            self._transferred[index] = emissivity
            if confidence is not None:
                self._confidence[index] = confidence
            if spectrum is not None:
                self._latest = {"transferred": spectrum, **(measured or {})}
                self._latest_corrected = measured is not None
            if element_areas is not None and element_areas[0] == self._element_set:
                for k, w in enumerate(self._windows):
                    grid = self._elements_transferred.setdefault(
                        w.label, np.full(self._shape, np.nan, np.float32))
                    grid[index] = element_areas[1][:, k]
                self._changed("elements")
            self._transferred_lines += 1
            self._changed("transferred")
            if confidence is not None:
                self._changed("confidence")
            callbacks = tuple(self.on_transferred)
        for callback in callbacks:
            callback()

    def add_confidence(self, index: int, confidence: np.ndarray,
                       radius: np.ndarray | None = None) -> None:
        """The transfer confidence of raster line ``index`` (computed after its emissivity),
        and its calibrated prediction-interval radius when the model has intervals."""
        with self._lock:
            if self._confidence is not None:
                self._confidence[index] = confidence
                if radius is not None:
                    if self._radius is None:
                        self._radius = np.full(self._shape, np.nan, np.float32)
                    self._radius[index] = radius
                self._changed("confidence")

    def set_progress(self, progress: ScanProgress) -> None:
        with self._lock:
            self._progress = progress
            self._changed("progress")

    def set_window(self, center_nm: float, half_width_nm: float) -> None:
        """Choose the line of the wavelength-window map (applies to lines added from now)."""
        with self._lock:
            self.window_nm = (float(center_nm), float(half_width_nm))
            self._window[:] = np.nan
            self._changed("window")

    def _changed(self, kind: str) -> None:  # under the lock
        self._version += 1
        self._changes[kind] = self._version

    # ------------------------------------------------------------------ reader
    @property
    def version(self) -> int:
        return self._version

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def phase_input(self) -> tuple[int, np.ndarray]:
        """(lines done, features (ny * nx, PHASE_FEATURES), NaN where not acquired or
        invalid): what the live phase map clusters."""
        with self._lock:
            return self._lines_done, self._features.reshape(-1, PHASE_FEATURES).copy()

    def snapshot_axes(self) -> dict[str, np.ndarray]:
        """The systems' wavelength axes (nm) known so far."""
        with self._lock:
            return dict(self._wavelength)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                version=self._version, shape=self._shape, extent_um=self._extent,
                emissivity={s: a.copy() for s, a in self._emissivity.items()},
                status={s: a.copy() for s, a in self._status.items()},
                window=self._window.copy(),
                transferred=None if self._transferred is None else self._transferred.copy(),
                confidence=None if self._confidence is None else self._confidence.copy(),
                interval_radius=None if self._radius is None else self._radius.copy(),
                latest=dict(self._latest), progress=self._progress, map_path=self._map_path,
                elements={k: a.copy() for k, a in self._elements.items()},
                elements_transferred={k: a.copy() for k, a in self._elements_transferred.items()},
                element_windows=self._windows,
                latest_baseline_corrected=self._latest_corrected,
                lines_done=self._lines_done, transferred_lines=self._transferred_lines,
                transfer_arrivals=dict(self._arrivals), changes=dict(self._changes))


__all__ = ["INVALID", "NOT_ACQUIRED", "VALID", "LiveModel", "Snapshot", "total_emissivity",
           "window_emission"]
