"""The Live panel's element maps: choose lines from the line table (any number), and see each
line's map from the measured primary spectra beside the one from the transferred spectra, on
one colour scale. The maps are `LiveModel`'s; this widget only lays them out and paints."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .lines import strong_lines
from .live_model import INVALID, LiveModel, Snapshot
from .map_view import MapView, map_levels

PRIMARY_RANGE_NM = (245.0, 407.0)


class ElementTab(QWidget):
    """Line chooser and one row (measured | transferred) per chosen line."""

    spotClicked = Signal(int, int)

    def __init__(self, model: LiveModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("line"))
        self.choice = QComboBox()
        self.choice.setEditable(True)
        self.choice.setMinimumContentsLength(16)
        self.choice.addItems([label for _, label in strong_lines(*PRIMARY_RANGE_NM, n=60,
                                                                  min_gap_nm=0.3)])
        self.choice.setToolTip("a line of the NIST table: 'Ca II 393.37', a wavelength "
                               "('309.42') or an element ('Ca': its strongest line)")
        row.addWidget(self.choice, 1)
        add = QPushButton("Add")
        add.clicked.connect(lambda: self.add_line(self.choice.currentText()))
        row.addWidget(add)
        clear = QPushButton("Clear")
        clear.clicked.connect(lambda: self.set_lines([]))
        row.addWidget(clear)
        layout.addLayout(row)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self._grid_host = QWidget()
        self._grid = QGridLayout(self._grid_host)
        scroll.setWidget(self._grid_host)
        layout.addWidget(scroll, 1)
        self.views: dict[str, tuple[MapView, MapView]] = {}

    # -- choosing lines (thin calls into the model)
    def add_line(self, name: str) -> None:
        self.set_lines([*self.model.element_lines, name])

    def set_lines(self, names: list[str]) -> None:
        try:
            self.model.set_element_lines(names)
        except ValueError as exc:
            self.message.setText(f"<span style='color:#c00'>{exc}</span>")
            return
        self.message.setText("maps fill from the next raster line"
                             if names else "no lines chosen")

    # -- painting
    def sync(self, snap: Snapshot) -> None:
        """Rows of views for the snapshot's lines: rows of lines no longer chosen go at once,
        new rows come one per call and only while the tab is shown (a map view costs tens of
        ms to build: never all at the start of a scan, when the event loop is busiest)."""
        labels = [w.label for w in snap.element_windows]
        for label in [k for k in self.views if k not in labels]:
            for view in self.views.pop(label):
                self._grid.removeWidget(view)
                view.deleteLater()
        missing = [w for w in snap.element_windows if w.label not in self.views]
        if not missing or not self.isVisible():
            return
        w = missing[0]
        others = ", ".join(f"{c.line.label} ({c.strength:.2g}×)" for c in w.interferences[:4])
        measured = MapView(f"{w.label} nm, measured" + (" *" if others else ""),
                           value_label="counts·nm")
        transferred = MapView(f"{w.label} nm, transferred", value_label="counts·nm")
        if others:
            note = f"* {w.label}: also in its window {others}"
            measured.setToolTip(note)
            self.message.setText("<br>".join(filter(None, [self.message.text(), note])))
        row = labels.index(w.label)
        for c, view in enumerate((measured, transferred)):
            view.setMinimumHeight(260)
            view.spotClicked.connect(self.spotClicked)
            self._grid.addWidget(view, row, c)
        self.views[w.label] = (measured, transferred)

    def paint(self, label: str, snap: Snapshot) -> None:
        """Both maps of one line on one colour scale (so a darker transferred map means lower
        values, not another scale)."""
        if label not in self.views:
            return
        measured = snap.elements.get(label)
        transferred = snap.elements_transferred.get(label)
        levels = map_levels(measured, transferred)
        views = self.views[label]
        ext = snap.extent_um
        views[0].show_map(measured, ext, snap.status["primary"] == INVALID, levels=levels)
        empty = np.full(snap.shape, np.nan, np.float32)
        views[1].show_map(transferred if transferred is not None else empty, ext,
                          snap.status["secondary"] == INVALID, levels=levels)
