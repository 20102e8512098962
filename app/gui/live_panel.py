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
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from plumelink.models.line_transfer import load_package_transfer
from plumelink.pipeline.line_catalogue import DEFAULT_TEMPERATURE_K
from plumelink.pipeline.peaks import peak_table

from .element_tab import ElementTab
from .lines import element_symbols
from .live_model import INVALID, LiveModel, Snapshot
from .map_view import MapView, map_levels
from .peak_dialog import PeakDialog
from .phase_tab import PhaseTab
from .spectra_plot import SpectraPlot
from .workers import Job, ScanController, read_spot


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
        self._peak_job: Job | None = None
        self.peak_dialog: PeakDialog | None = None
        self.clicked_spot: tuple[int, int] | None = None
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
            "radius": MapView("90 % interval radius (calibrated)", value_label="counts"),
        }
        for k, view in enumerate(self.maps.values()):
            grid.addWidget(view, k // 3, k % 3)
            view.spotClicked.connect(self.inspect)
        self.tabs = QTabWidget()
        self.tabs.addTab(maps, "Emission")
        self.elements = ElementTab(model)
        self.elements.spotClicked.connect(self.inspect)
        self.tabs.addTab(self.elements, "Element maps")
        self.phases = PhaseTab(model)
        self.phases.view.spotClicked.connect(self.inspect)
        self.tabs.addTab(self.phases, "Phases")
        split.addWidget(self.tabs)
        plots = QWidget()
        pl = QVBoxLayout(plots)
        ident = QHBoxLayout()
        ident.addWidget(QLabel("sticks of"))
        self.stick_elements = QLineEdit()
        self.stick_elements.setPlaceholderText("elements, e.g. Ca, Al, Si")
        self.stick_elements.editingFinished.connect(self.apply_sticks)
        ident.addWidget(self.stick_elements, 1)
        ident.addWidget(QLabel("at"))
        self.temperature = QSpinBox()
        self.temperature.setRange(3000, 30000)
        self.temperature.setSingleStep(500)
        self.temperature.setValue(int(DEFAULT_TEMPERATURE_K))
        self.temperature.setSuffix(" K")
        self.temperature.valueChanged.connect(lambda _: self.apply_sticks())
        ident.addWidget(self.temperature)
        peaks = QPushButton("Peak table…")
        peaks.setToolTip("peaks of the clicked spot (or of the map's mean spectrum) with their "
                         "candidate lines")
        peaks.clicked.connect(self.show_peak_table)
        ident.addWidget(peaks)
        pl.addLayout(ident)
        self.latest = SpectraPlot("latest spectra")
        self.spot = SpectraPlot("clicked spot")
        pl.addWidget(self.latest)
        pl.addWidget(self.spot)
        self.identified = QLabel("hover over a peak: the table lines within the resolution")
        self.identified.setWordWrap(True)
        for plot in (self.latest, self.spot):
            plot.identified.connect(self.identified.setText)
        pl.addWidget(self.identified)
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

    def apply_sticks(self) -> None:
        elements = tuple(e.strip() for e in self.stick_elements.text().replace(";", ",")
                         .split(",") if e.strip())
        unknown = [e for e in elements if e not in element_symbols()]
        if unknown:
            self.identified.setText(f"<span style='color:#c00'>not in the line table: "
                                    f"{', '.join(unknown)}</span>")
            elements = tuple(e for e in elements if e not in unknown)
        for plot in (self.latest, self.spot):
            plot.set_sticks(elements, self.temperature.value())

    def show_peak_table(self) -> None:
        """The peaks of the clicked spot's primary spectrum, or of the map's mean spectrum
        when no spot is chosen, read from the map file off the GUI thread."""
        path = self.model.snapshot().map_path
        if not path or not Path(path).exists():
            self.identified.setText("no map file yet: start or load a scan first")
            return
        self._peak_job = Job(peak_table, path, "primary", self.clicked_spot,
                             temperature_k=float(self.temperature.value()),
                             name="plumelink-peaks")

    def inspect(self, iy: int, ix: int) -> None:
        self.clicked_spot = (iy, ix)
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
        "confidence": ("confidence",), "radius": ("confidence",),
        "spectra": ("lines", "transferred")}
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
        if self.phases.refresh(snap):
            self.paints += 1
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
            self.latest.show_spectra(snap.latest, snap.latest_baseline_corrected)
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
            elif view == "radius":
                if snap.interval_radius is not None:
                    self.maps[view].show_map(snap.interval_radius, ext, bad)
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
        job = self._peak_job
        if job is not None and job.done:
            self._peak_job = None
            if job.error:
                self.identified.setText(f"<span style='color:#c00'>{job.error}</span>")
            else:
                self.peak_dialog = PeakDialog(job.result, self)
                self.peak_dialog.show()
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
            self.spot.show_spectra(spectra, baseline_corrected=r.get("baseline_corrected",
                                                                     False))
            flags = ", ".join(k for k in ("primary", "secondary") if not r[k][2])
            self.spot.setTitle(f"spot iy={r['iy']}, ix={r['ix']}"
                               + (f" (INVALID: {flags})" if flags else ""))

    @property
    def model_loading(self) -> bool:
        return self._model_job is not None
