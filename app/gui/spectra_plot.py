"""A spectra plot that identifies lines: the strong lines of the table labelled without
overlap, the NIST lines of chosen elements as sticks with their LTE relative intensities at a
chosen plasma temperature, and, under the mouse or on a click, the table lines within the
resolution of that wavelength (`identified` signal). The physics lives in
`pipeline.line_catalogue`; this widget only draws."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal

from plumelink.pipeline.line_catalogue import DEFAULT_TEMPERATURE_K, candidates, sticks

from .lines import strong_lines

PENS = {"primary": "#1f77b4", "secondary": "#ff7f0e", "transferred": "#2ca02c"}
STICK_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LABEL_ROWS = (0.95, 0.80)  # alternate heights of the line labels (no two touch)
LABELS = 8
PIXELS_PER_FWHM = 2.0  # the search radius of a hover, in pixels of the shown axis


class SpectraPlot(pg.PlotWidget):
    """Spectra by name; the legend says when the measured spectra are baseline-corrected."""

    identified = Signal(str)  # candidates of the wavelength under the mouse or clicked

    def __init__(self, title: str, parent=None) -> None:
        super().__init__(parent, title=title)
        self.setLabel("bottom", "wavelength (nm)")
        self.getAxis("bottom").enableAutoSIPrefix(False)
        self.setLabel("left", "counts")
        # bottom right, small: clear of the line labels at the top
        self.legend = self.addLegend(offset=(-10, -10), labelTextSize="7pt")
        self.curves = {name: self.plot(pen=pg.mkPen(pen, width=1), name=name,
                                       autoDownsample=True, downsampleMethod="peak",
                                       clipToView=True, skipFiniteCheck=True)
                       for name, pen in PENS.items()}
        self._corrected = False
        self._labelled: tuple[float, float] | None = None
        self._counts = (0.0, 0.0)
        self.disableAutoRange()
        self._labels: list = []
        self._sticks: list = []
        self.stick_elements: tuple[str, ...] = ()
        self.temperature_k = DEFAULT_TEMPERATURE_K
        self._step_nm = 0.04
        self.scene().sigMouseMoved.connect(self._moved)
        self.scene().sigMouseClicked.connect(self._clicked)

    # -- spectra
    def show_spectra(self, spectra: dict[str, tuple[np.ndarray, np.ndarray]],
                     baseline_corrected: bool = False) -> None:
        """SPECTRA by name; baseline_corrected says the measured ones had their baseline
        removed like the transferred one (so the three are compared in one space)."""
        self._name_curves(baseline_corrected)
        for name, curve in self.curves.items():
            if name in spectra:
                wl, counts = spectra[name]
                curve.setData(wl, counts)
            else:
                curve.setData([], [])
        if spectra:
            lo = min(float(wl[0]) for wl, _ in spectra.values())
            hi = max(float(wl[-1]) for wl, _ in spectra.values())
            wl = next(iter(spectra.values()))[0]
            self._step_nm = float(np.median(np.abs(np.diff(wl)))) if len(wl) > 1 else 0.04
            if self._labelled != (lo, hi):
                self._label_lines(lo, hi)
                self.setXRange(lo, hi, padding=0.01)
            self._fit_counts(max(float(np.max(c)) for _, c in spectra.values()),
                             min(float(np.min(c)) for _, c in spectra.values()))

    def _name_curves(self, corrected: bool) -> None:
        if corrected == self._corrected:
            return
        self._corrected = corrected
        suffix = " (baseline-corrected)" if corrected else ""
        for name in ("primary", "secondary"):
            label = self.legend.getLabel(self.curves[name])
            if label is not None:
                label.setText(name + suffix)

    def legend_text(self) -> list[str]:
        return [label.text for _, label in self.legend.items]

    def _fit_counts(self, top: float, bottom: float) -> None:
        """Re-range the counts axis only when the spectra leave it or use under a third of it:
        re-ranging re-lays out the axis, the dearest part of a repaint."""
        low, high = self._counts
        if top > high or bottom < low or top - bottom < (high - low) / 3:
            margin = 0.1 * max(top - bottom, 1.0)
            self._counts = (bottom - margin, top + margin)
            self.setYRange(*self._counts, padding=0)
            self._draw_sticks()

    # -- labels and sticks
    def _label_lines(self, lo: float, hi: float) -> None:
        for item in self._labels:
            self.removeItem(item)
        self._labels = []
        gap = (hi - lo) / LABELS  # evenly spread, and on alternate rows: never touching
        for k, (wl, label) in enumerate(strong_lines(lo, hi, n=LABELS, min_gap_nm=gap)):
            line = pg.InfiniteLine(wl, angle=90, pen=pg.mkPen("#888", style=pg.QtCore.Qt.DotLine),
                                   label=label,
                                   labelOpts={"position": LABEL_ROWS[k % len(LABEL_ROWS)],
                                              "rotateAxis": (1, 0), "color": "#555"})
            self.addItem(line)
            self._labels.append(line)
        self._labelled = (lo, hi)
        self._draw_sticks()

    @property
    def label_positions(self) -> list[tuple[float, float]]:
        """(wavelength, height fraction) of each line label."""
        return [(float(line.value()), line.label.orthoPos) for line in self._labels]

    def set_sticks(self, elements: tuple[str, ...], temperature_k: float) -> None:
        """Draw the table lines of ELEMENTS as sticks, heights their LTE intensities at
        TEMPERATURE_K relative to each element's strongest line in view."""
        self.stick_elements = tuple(elements)
        self.temperature_k = float(temperature_k)
        self._draw_sticks()

    def _draw_sticks(self) -> None:
        for item in self._sticks:
            self.removeItem(item)
        self._sticks = []
        if not self.stick_elements or self._labelled is None:
            return
        lo, hi = self._labelled
        bottom, top = self._counts
        span = (top - bottom) or 1.0
        for k, element in enumerate(self.stick_elements):
            wl, rel = sticks(element, (lo, hi), self.temperature_k)
            if not wl.size:
                continue
            x = np.repeat(wl, 2)
            y = np.column_stack([np.full(wl.size, bottom), bottom + 0.85 * span * rel]).ravel()
            item = self.plot(x, y, connect="pairs",  # not in the legend: the panel says it
                             pen=pg.mkPen(STICK_COLOURS[k % len(STICK_COLOURS)], width=2))
            self._sticks.append(item)

    # -- identification
    def candidates_text(self, wavelength_nm: float) -> str:
        """The table lines within the resolution of a wavelength, strongest first."""
        radius = PIXELS_PER_FWHM * self._step_nm
        found = candidates(wavelength_nm, radius, self.temperature_k)[:5]
        if not found:
            return f"{wavelength_nm:.3f} nm: no table line within ±{radius:.3f} nm"
        return f"{wavelength_nm:.3f} nm: " + ", ".join(
            f"{c.line.label} ({c.offset_nm:+.3f})" for c in found)

    def _wavelength_at(self, scene_pos) -> float | None:
        if not self.plotItem.vb.sceneBoundingRect().contains(scene_pos):
            return None
        return float(self.plotItem.vb.mapSceneToView(scene_pos).x())

    def _moved(self, scene_pos) -> None:
        wl = self._wavelength_at(scene_pos)
        if wl is not None and self._labelled is not None:
            self.identified.emit(self.candidates_text(wl))

    def _clicked(self, event) -> None:
        self._moved(event.scenePos())
