"""The Live panel's phase map: k-means of the measured primary spectra acquired so far (as in
the report), re-clustered off the GUI thread as the map grows, in categorical colours."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from plumelink.models.clusters import DEFAULT_PHASES, phase_labels

from .live_model import INVALID, LiveModel, Snapshot
from .map_view import MapView
from .workers import Job

# matplotlib's "tab10": distinct colours for categories (no order implied)
CATEGORY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MIN_INTERVAL_S = 1.0  # re-cluster at most this often while a scan runs


def category_colormap(k: int) -> pg.ColorMap:
    """k flat colours, one per label 0..k-1 (levels -0.5 .. k-0.5)."""
    colours = [pg.mkColor(CATEGORY_COLOURS[i % len(CATEGORY_COLOURS)]) for i in range(k)]
    pos = np.repeat(np.linspace(0, 1, k + 1), 2)[1:-1]
    return pg.ColorMap(pos, [c for c in colours for _ in range(2)])


class PhaseTab(QWidget):
    def __init__(self, model: LiveModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("phases (k-means of the primary spectra)"))
        self.k = QSpinBox()
        self.k.setRange(2, len(CATEGORY_COLOURS))
        self.k.setValue(DEFAULT_PHASES)
        self.k.valueChanged.connect(lambda _: self._invalidate())
        row.addWidget(self.k)
        row.addStretch(1)
        layout.addLayout(row)
        self.view = MapView("phase map", value_label="phase")
        layout.addWidget(self.view, 1)
        self.labels: np.ndarray | None = None  # (ny, nx) int16, -1 where none
        self._job: Job | None = None
        self._done_for: tuple = ()  # (map, shape, lines done, k) last clustered
        self._started = 0.0

    def _invalidate(self) -> None:
        self._done_for = ()

    def refresh(self, snap: Snapshot) -> bool:
        """Collect a finished clustering (True: the map was repainted) and start the next one
        when lines arrived; only while the tab is shown."""
        painted = False
        job = self._job
        if job is not None and job.done:
            self._job = None
            if not job.error and job.result[0].size == snap.shape[0] * snap.shape[1]:
                labels, k = job.result
                self.labels = labels.reshape(snap.shape)
                shown = np.where(self.labels >= 0, self.labels, np.nan).astype(np.float32)
                self.view.image.setColorMap(category_colormap(k))
                self.view.colorbar.setColorMap(category_colormap(k))
                self.view.show_map(shown, snap.extent_um, snap.status["primary"] == INVALID,
                                   levels=(-0.5, k - 0.5))
                self.view.colorbar.axis.setTicks([[(i, str(i)) for i in range(k)], []])
                painted = True
        key = (snap.map_path, snap.shape, snap.lines_done, self.k.value())
        if (self._job is None and self.isVisible() and snap.lines_done
                and key != self._done_for and time.monotonic() - self._started > MIN_INTERVAL_S):
            _, features = self.model.phase_input()
            k = self.k.value()
            self._done_for = key
            self._started = time.monotonic()
            self._job = Job(lambda f=features, k=k: (phase_labels(f, k), k),
                            name="plumelink-phases")
        return painted
