"""Live panel: latest spectra with line labels, the growing maps of both systems, the
wavelength-window map, the transferred map beside the measured one and their difference, and
the spectra of a clicked spot. Repaints from `LiveModel.snapshot()` when its version moves."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from plumelink.models.line_transfer import load_package_transfer

from .element_tab import ElementTab
from .lines import strong_lines
from .live_model import INVALID, LiveModel, Snapshot
from .map_view import MapView, map_levels
from .workers import Job, ScanController, read_spot

PENS = {"primary": "#1f77b4", "secondary": "#ff7f0e", "transferred": "#2ca02c"}


class SpectraPlot(pg.PlotWidget):
    """Spectra by name, with the strong lines of the line table labelled."""

    def __init__(self, title: str, parent=None) -> None:
        super().__init__(parent, title=title)
        self.setLabel("bottom", "wavelength", "nm")
        self.setLabel("left", "counts")
        self.addLegend(offset=(-10, 10))
        self.curves = {name: self.plot(pen=pg.mkPen(pen, width=1), name=name,
                                       autoDownsample=True, downsampleMethod="peak",
                                       clipToView=True, skipFiniteCheck=True)
                       for name, pen in PENS.items()}
        self._labelled: tuple[float, float] | None = None
        self._counts = (0.0, 0.0)
        self.disableAutoRange()
        self._labels: list = []

    def show_spectra(self, spectra: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        for name, curve in self.curves.items():
            if name in spectra:
                wl, counts = spectra[name]
                curve.setData(wl, counts)
            else:
                curve.setData([], [])
        if spectra:
            lo = min(float(wl[0]) for wl, _ in spectra.values())
            hi = max(float(wl[-1]) for wl, _ in spectra.values())
            if self._labelled != (lo, hi):
                self._label_lines(lo, hi)
                self.setXRange(lo, hi, padding=0.01)
            self._fit_counts(max(float(np.max(c)) for _, c in spectra.values()),
                             min(float(np.min(c)) for _, c in spectra.values()))

    def _fit_counts(self, top: float, bottom: float) -> None:
        """Re-range the counts axis only when the spectra leave it or use under a third of it:
        re-ranging re-lays out the axis, the dearest part of a repaint."""
        low, high = self._counts
        if top > high or bottom < low or top - bottom < (high - low) / 3:
            margin = 0.1 * max(top - bottom, 1.0)
            self._counts = (bottom - margin, top + margin)
            self.setYRange(*self._counts, padding=0)

    def _label_lines(self, lo: float, hi: float) -> None:
        for item in self._labels:
            self.removeItem(item)
        self._labels = []
        for wl, label in strong_lines(lo, hi, n=8):
            line = pg.InfiniteLine(wl, angle=90, pen=pg.mkPen("#888", style=pg.QtCore.Qt.DotLine),
                                   label=label, labelOpts={"position": 0.92, "rotateAxis": (1, 0),
                                                           "color": "#555"})
            self.addItem(line)
            self._labels.append(line)
        self._labelled = (lo, hi)


class LivePanel(QWidget):
    # a transferred line has arrived (emitted on the transfer's thread, delivered queued)
    transferArrived = Signal()

    def __init__(self, model: LiveModel, controller: ScanController, settings,
                 parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.controller = controller
        self.settings = settings
        self._view_key: dict[str, tuple[int, ...]] = {}
        self._view_painted_at: dict[str, float] = {}
        self._transfer_painted = 0
        self._painted_transfer: set[int] = set()
        self.transfer_latencies_s: list[float] = []  # line arrival -> transferred map repaint
        self.paints = 0
        self._model_job: Job | None = None
        self._spot_job: Job | None = None
        self.model_dir = ""
        self.prompt_repaint = True  # False: the paint timer alone (the benchmark's reference)
        self._prompt_pending = threading.Event()
        self.transferArrived.connect(self._paint_transferred_now, Qt.QueuedConnection)
        model.on_transferred.append(self._notify_transferred)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        load = QPushButton("Load transfer model…")
        load.clicked.connect(self._browse_model)
        row.addWidget(load)
        self.model_label = QLabel("no transfer model")
        row.addWidget(self.model_label, 1)
        row.addWidget(QLabel("window line (nm)"))
        self.center = QDoubleSpinBox()
        self.center.setRange(100.0, 1100.0)
        self.center.setDecimals(2)
        self.center.setValue(model.window_nm[0])
        self.half = QDoubleSpinBox()
        self.half.setRange(0.01, 20.0)
        self.half.setValue(model.window_nm[1])
        for w in (self.center, QLabel("±"), self.half):
            row.addWidget(w)
        apply = QPushButton("Set window")
        apply.clicked.connect(lambda: model.set_window(self.center.value(), self.half.value()))
        row.addWidget(apply)
        layout.addLayout(row)

        split = QSplitter()
        maps = QWidget()
        grid = QGridLayout(maps)
        self.maps = {
            "primary": MapView("primary emissivity (measured)", value_label="counts"),
            "secondary": MapView("secondary emissivity", value_label="counts"),
            "window": MapView("window map (primary)", value_label="counts"),
            "transferred": MapView("transferred primary emissivity", value_label="counts"),
            "difference": MapView("measured − transferred", value_label="counts",
                                  colormap="CET-D1"),
            "confidence": MapView("transfer confidence", value_label="0 … 1"),
        }
        for k, view in enumerate(self.maps.values()):
            grid.addWidget(view, k // 3, k % 3)
            view.spotClicked.connect(self.inspect)
        self.tabs = QTabWidget()
        self.tabs.addTab(maps, "Emission")
        self.elements = ElementTab(model)
        self.elements.spotClicked.connect(self.inspect)
        self.tabs.addTab(self.elements, "Element maps")
        split.addWidget(self.tabs)
        plots = QWidget()
        pl = QVBoxLayout(plots)
        self.latest = SpectraPlot("latest spectra")
        self.spot = SpectraPlot("clicked spot")
        pl.addWidget(self.latest)
        pl.addWidget(self.spot)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        pl.addWidget(self.message)
        split.addWidget(plots)
        split.setSizes([960, 440])  # maps : spectra
        layout.addWidget(split, 1)

    # -- actions
    def _browse_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model package",
                                                str(self.settings.value("live/model", "")))
        if path:
            self.load_model(path)

    def load_model(self, model_dir: str | Path) -> None:
        """Load a model package off the GUI thread; it transfers the lines of the next scan
        (and of the running one, from its next line)."""
        self.model_dir = str(model_dir)
        self.settings.setValue("live/model", self.model_dir)
        self.model_label.setText(f"loading {model_dir}…")
        self._model_job = Job(load_package_transfer, model_dir, name="plumelink-load-model")

    def inspect(self, iy: int, ix: int) -> None:
        path = self.model.snapshot().map_path
        if path:
            self._spot_job = Job(read_spot, path, iy, ix, self.controller.transfer,
                                 name="plumelink-spot")

    # -- repaint
    def _notify_transferred(self) -> None:
        """On the transfer's thread: ask for one prompt repaint of the transferred map, so its
        latency does not include waiting for the paint timer's next tick."""
        if self.prompt_repaint and not self._prompt_pending.is_set():
            self._prompt_pending.set()
            with contextlib.suppress(RuntimeError):  # the panel is gone (window closed)
                self.transferArrived.emit()

    def detach(self) -> None:
        """Stop following the model's transferred lines (the window is closing)."""
        if self._notify_transferred in self.model.on_transferred:
            self.model.on_transferred.remove(self._notify_transferred)

    def _paint_transferred_now(self) -> None:
        self._prompt_pending.clear()
        snap = self.model.snapshot()
        if snap.transferred is not None and snap.transferred_lines != self._transfer_painted:
            self._paint("transferred", snap)
            self._view_key["transferred"] = self._key("transferred", snap)
            self._view_painted_at["transferred"] = time.perf_counter()
            self.paints += 1

    # the kinds of change (`Snapshot.changes`) each view shows
    DEPENDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "transferred": ("transferred",), "primary": ("lines", "transferred"),
        "secondary": ("lines",),
        "window": ("lines", "window"), "difference": ("lines", "transferred"),
        "confidence": ("confidence",), "spectra": ("lines", "transferred")}
    VIEWS = tuple(DEPENDS)
    ELEMENT = "element:"  # prefix of an element map's view (one per chosen line)
    # one view per tick: at 30 Hz each of the 7 views still repaints several times a second,
    # while two views in one tick (e.g. the spectra re-ranged with the first transferred line)
    # could keep the event loop over 100 ms on 2 cores busy with a scan, transfer and training
    VIEWS_PER_TICK = 1

    def _key(self, view: str, snap: Snapshot) -> tuple[int, ...]:
        kinds = ("elements",) if view.startswith(self.ELEMENT) else self.DEPENDS[view]
        return tuple(snap.changes.get(kind, 0) for kind in kinds)

    def views(self, snap: Snapshot) -> tuple[str, ...]:
        """Every view of this snapshot: the fixed ones and one per element line shown."""
        return self.VIEWS + tuple(self.ELEMENT + label for label in self.elements.views)

    def stale_views(self, snap: Snapshot) -> list[str]:
        """The views not yet showing ``snap`` (and a spot still being read)."""
        stale = [v for v in self.views(snap) if self._view_key.get(v) != self._key(v, snap)]
        return stale + (["spot"] if self._spot_job is not None else [])

    def refresh(self, snap: Snapshot) -> None:
        """Repaint at most VIEWS_PER_TICK views whose data changed (the transferred map first
        when it has new lines, then the longest unpainted), so that no tick of the event loop
        repaints everything at once."""
        self._poll_jobs()
        self.elements.sync(snap)
        budget = self.VIEWS_PER_TICK - self._lay_out_next(snap)
        stale = [v for v in self.views(snap) if self._view_key.get(v) != self._key(v, snap)]
        for _ in range(min(budget, len(stale))):
            if "transferred" in stale and snap.transferred_lines != self._transfer_painted:
                view = "transferred"
            else:
                view = min(stale, key=lambda v: self._view_painted_at.get(v, 0.0))
            stale.remove(view)
            self._paint(view, snap)
            self._view_key[view] = self._key(view, snap)
            self._view_painted_at[view] = time.perf_counter()
            self.paints += 1
        error = self.controller.live_transfer.error if self.controller.live_transfer else ""
        if error and error != self.message.text():
            self.message.setText(error)

    def _lay_out_next(self, snap: Snapshot) -> bool:
        """Lay out one map view not yet laid out for this map's shape and extent (an empty map
        with its axes), one per tick from the start of a scan: the transferred, difference
        and confidence maps are then ready before their first line, which would otherwise
        pay the axes' layout while the scan, the transfer and training all run."""
        layout = (snap.shape, snap.extent_um)
        for view in self.maps.values():
            if view.layout != layout:
                view.lay_out(*layout)
                return True
        return False

    def _paint(self, view: str, snap: Snapshot) -> None:
        ext = snap.extent_um
        if view.startswith(self.ELEMENT):
            self.elements.paint(view[len(self.ELEMENT):], snap)
        elif view == "spectra":
            self.latest.show_spectra(snap.latest)
        elif view == "primary":  # on the transferred map's scale: the two are compared
            self.maps[view].show_map(snap.emissivity[view], ext, snap.status[view] == INVALID,
                                     levels=map_levels(snap.emissivity[view], snap.transferred))
        elif view == "secondary":
            self.maps[view].show_map(snap.emissivity[view], ext, snap.status[view] == INVALID)
        elif view == "window":
            self.maps[view].show_map(snap.window, ext, snap.status["primary"] == INVALID)
        elif snap.transferred is not None:
            bad = snap.status["secondary"] == INVALID
            if view == "transferred":
                self._transfer_painted = snap.transferred_lines
                self.maps[view].show_map(snap.transferred, ext, bad, levels=map_levels(
                    snap.emissivity["primary"], snap.transferred))
                self._record_latency(snap)
            elif view == "difference":
                self.maps[view].show_map(snap.emissivity["primary"] - snap.transferred, ext,
                                         bad, symmetric=True)
            else:
                self.maps[view].show_map(snap.confidence, ext, bad)

    def _record_latency(self, snap: Snapshot) -> None:
        now = time.perf_counter()
        rows = np.flatnonzero(np.isfinite(snap.transferred).any(axis=1))
        for iy in rows:
            iy = int(iy)
            if iy not in self._painted_transfer and iy in snap.transfer_arrivals:
                self._painted_transfer.add(iy)
                self.transfer_latencies_s.append(now - snap.transfer_arrivals[iy])

    def reset_latency(self) -> None:
        self._painted_transfer.clear()
        self.transfer_latencies_s.clear()

    def _poll_jobs(self) -> None:
        job = self._model_job
        if job is not None and job.done:
            self._model_job = None
            if job.error:
                self.model_label.setText(f"<span style='color:#c00'>{job.error}</span>")
            else:
                self.controller.set_transfer(job.result)
                gc.freeze()  # torch's objects, imported with the model, are here to stay
                self.model_label.setText(f"transfer model: {self.model_dir}")
        job = self._spot_job
        if job is not None and job.done:
            self._spot_job = None
            if job.error:
                self.message.setText(job.error)
                return
            r = job.result
            spectra = {k: (r[k][0], r[k][1]) for k in ("primary", "secondary") if r[k][2]}
            if "transferred" in r:
                spectra["transferred"] = r["transferred"]
            self.spot.show_spectra(spectra)
            flags = ", ".join(k for k in ("primary", "secondary") if not r[k][2])
            self.spot.setTitle(f"spot iy={r['iy']}, ix={r['ix']}"
                               + (f" (INVALID: {flags})" if flags else ""))

    @property
    def model_loading(self) -> bool:
        return self._model_job is not None
