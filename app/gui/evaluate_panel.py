"""Evaluate panel: a model package and a test map -> the metrics table of every model (the
paper's Table 1), the maps (emissivity, distance, confidence, k-means labels), spectra at the
chosen spots, and the report (`models.evaluate.evaluate_package` on a worker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .map_view import MapView
from .train_panel import _path_row
from .workers import Job

MAPS = {"emissivity (true)": "emissivity_true", "emissivity (transferred)": "emissivity_pred",
        "Euclidean distance": "euclid", "cosine distance": "cosine",
        "confidence": "confidence", "k-means labels (true)": "labels_true",
        "k-means labels (transferred)": "labels_pred"}


def evaluate(model_dir: str, test_path: str, report_dir: str, progress=None):
    from plumelink.models.evaluate import evaluate_package

    return evaluate_package(model_dir, test_path, report_dir or None, progress=progress)


def export_report(report_dir: str | Path, target: str | Path) -> Path:
    """Copy a written report folder (report.html, metrics.json, figures) to ``target``."""
    return Path(shutil.copytree(report_dir, target, dirs_exist_ok=True))


class EvaluatePanel(QWidget):
    def __init__(self, settings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.job: Job | None = None
        self.result = None
        self._progress: tuple[str, int, int] | None = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        # the model used last here, else the one loaded for live transfer, else the last trained
        self.model = QLineEdit(next((str(v) for v in (settings.value(k, "") for k in (
            "evaluate/model", "live/model", "train/out")) if v), ""))
        self.test = QLineEdit(str(settings.value("evaluate/test", "")))
        self.report = QLineEdit(str(settings.value("evaluate/report", "")))
        form.addRow("model package", _path_row(self.model, lambda: self._folder(self.model)))
        form.addRow("test map", _path_row(self.test, self._file))
        form.addRow("report folder", _path_row(self.report, lambda: self._folder(self.report)))
        layout.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.start)
        export = QPushButton("Export report…")
        export.clicked.connect(self._export)
        row.addWidget(self.run_button)
        row.addWidget(export)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row.addWidget(self.status, 1)
        layout.addLayout(row)
        split = QSplitter()
        self.table = QTableWidget()
        split.addWidget(self.table)
        right = QWidget()
        rl = QVBoxLayout(right)
        self.which = QComboBox()
        self.which.addItems(list(MAPS))
        self.which.currentTextChanged.connect(lambda _: self._show_map())
        rl.addWidget(self.which)
        self.map = MapView("", units="spot")
        rl.addWidget(self.map, 1)
        self.spectra = pg.PlotWidget(title="spectra at chosen spots (true solid, "
                                     "transferred dashed)")
        rl.addWidget(self.spectra, 1)
        split.addWidget(right)
        layout.addWidget(split, 1)

    def _folder(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder")
        if path:
            edit.setText(path)

    def _file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Test map", "", "plumelink maps (*.h5)")
        if path:
            self.test.setText(path)

    def _export(self) -> None:
        target = QFileDialog.getExistingDirectory(self, "Export the report to")
        if target and self.report.text():
            self.job = Job(export_report, self.report.text(), target, name="plumelink-export")

    def start(self) -> None:
        if self.job is not None and not self.job.done:
            return
        for key, edit in (("model", self.model), ("test", self.test), ("report", self.report)):
            self.settings.setValue(f"evaluate/{key}", edit.text())
        self.result = None
        self.job = Job(evaluate, self.model.text(), self.test.text(), self.report.text(),
                       progress=self._on_progress, name="plumelink-evaluate")

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self._progress = (stage, done, total)  # one tuple, replaced atomically

    def refresh(self) -> None:
        job = self.job
        self.run_button.setEnabled(job is None or job.done)
        if job is None:
            return
        if not job.done:
            p = self._progress
            text = "evaluating…" if p is None else f"{p[0]}: {p[1]}/{p[2]}"
            if text != self.status.text():
                self.status.setText(text)
            return
        if job.error:
            self.status.setText(f"<span style='color:#c00'>{job.error}</span>")
        elif isinstance(job.result, tuple) and job.result is not self.result:
            self.result = job.result
            from plumelink.app.evaluate_command import format_recommendation

            self.status.setText("done" + (f": report in {self.report.text()}"
                                          if self.report.text() else "")
                                + f"; {format_recommendation(job.result[0])}")
            self._show_table(job.result[0])
            self._show_map()
            self._show_spectra(job.result[1])
        elif isinstance(job.result, Path):
            self.status.setText(f"report exported to {job.result}")

    def _show_table(self, metrics: dict) -> None:
        from plumelink.models.evaluate import METRIC_KEYS

        models = metrics.get("models", {})
        self.table.setRowCount(len(models))
        self.table.setColumnCount(len(METRIC_KEYS))
        self.table.setHorizontalHeaderLabels(list(METRIC_KEYS))
        best = (metrics.get("recommended") or {}).get("model")
        self.table.setVerticalHeaderLabels(
            [f"{name} (recommended)" if name == best else name for name in models])
        for r, values in enumerate(models.values()):
            for c, key in enumerate(METRIC_KEYS):
                value = values.get(key)
                text = "–" if value is None else f"{value:.4g}"
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def _show_map(self) -> None:
        if self.result is None:
            return
        maps = self.result[1]
        data = np.asarray(getattr(maps, MAPS[self.which.currentText()]), np.float32)
        if data.dtype.kind == "f" and MAPS[self.which.currentText()].startswith("labels"):
            data = np.where(data < 0, np.nan, data)
        ny, nx = maps.shape
        self.map.show_map(data, (0.0, 0.0, float(nx), float(ny)))
        self.map.setTitle(self.which.currentText())

    def _show_spectra(self, maps) -> None:
        self.spectra.clear()
        wl = maps.primary_wavelength_nm
        for k, spot in enumerate(maps.spectra[:6]):
            colour = pg.intColor(k, hues=6)
            self.spectra.plot(wl, spot.true, pen=pg.mkPen(colour), name=spot.label)
            self.spectra.plot(wl, spot.predicted, pen=pg.mkPen(colour, style=pg.QtCore.Qt.DashLine))
