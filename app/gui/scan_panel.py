"""Scan panel: load or edit a scan file, validate it, preview the raster path with the dry-run
estimate, start, pause, resume, abort, and follow the progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from plumelink.pipeline.plan import dry_run
from plumelink.pipeline.scan import ScanConfig, ScanError, example_scans, parse_scan

from .live_model import Snapshot
from .workers import ScanController, describe


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class ScanPanel(QWidget):
    def __init__(self, controller: ScanController, settings, parent=None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.settings = settings
        self.scan: ScanConfig | None = None
        layout = QVBoxLayout(self)

        row = QHBoxLayout()
        self.examples = QComboBox()
        self.examples.addItem("example scans…")
        for name, path in sorted(example_scans().items()):
            self.examples.addItem(name, str(path))
        self.examples.setToolTip("the scans shipped with plumelink (step and fly)")
        self.examples.activated.connect(self._example)
        row.addWidget(self.examples)
        self.path = QLineEdit(str(settings.value("scan/path", "")))
        self.path.setPlaceholderText("scan file (.toml)")
        row.addWidget(self.path)
        for label, slot in (("Browse…", self._browse), ("Load", self.load_file),
                            ("Save", self.save_file), ("Validate", self.validate)):
            b = QPushButton(label)
            b.clicked.connect(slot)
            row.addWidget(b)
        layout.addLayout(row)

        split = QSplitter()
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText("scan TOML")
        split.addWidget(self.editor)
        right = QWidget()
        rl = QVBoxLayout(right)
        self.preview = pg.PlotWidget(title="raster path (µm)")
        self.preview.setAspectLocked(True)
        self.path_curve = self.preview.plot(pen=pg.mkPen("#4a90d9", width=1))
        self.start_dot = self.preview.plot(symbol="o", symbolBrush="g", pen=None)
        rl.addWidget(self.preview, 2)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.estimate.setStyleSheet("font-family: monospace")
        rl.addWidget(self.estimate, 1)
        split.addWidget(right)
        layout.addWidget(split, 1)

        row = QHBoxLayout()
        self.out = QLineEdit(str(settings.value("scan/out", "")))
        self.out.setPlaceholderText("map file (empty: the scan's output)")
        row.addWidget(QLabel("map file"))
        row.addWidget(self.out)
        self.buttons = {}
        for label, slot in (("Start", self.start), ("Pause", controller.pause),
                            ("Resume", controller.resume), ("Abort", controller.abort)):
            b = QPushButton(label)
            b.clicked.connect(slot)
            self.buttons[label] = b
            row.addWidget(b)
        layout.addLayout(row)
        self.progress = QProgressBar()
        layout.addWidget(self.progress)
        self.status = QLabel("no scan")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        if self.path.text() and Path(self.path.text()).is_file():
            self.load_file()
        else:
            examples = example_scans()
            if "demo_small" in examples:
                self.path.setText(str(examples["demo_small"]))
                self.load_file()

    # -- actions
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Scan file", "", "TOML (*.toml)")
        if path:
            self.path.setText(path)
            self.load_file()

    def _example(self, index: int) -> None:
        path = self.examples.itemData(index)
        if path:
            self.path.setText(path)
            self.load_file()

    def load_file(self) -> None:
        try:
            self.editor.setPlainText(Path(self.path.text()).read_text(encoding="utf-8"))
        except OSError as exc:
            self.status.setText(f"<span style='color:#c00'>{describe(exc)}</span>")
            return
        self.settings.setValue("scan/path", self.path.text())
        self.validate()

    def save_file(self) -> None:
        try:
            Path(self.path.text()).write_text(self.editor.toPlainText(), encoding="utf-8")
        except OSError as exc:
            self.status.setText(f"<span style='color:#c00'>{describe(exc)}</span>")

    def validate(self) -> ScanConfig | None:
        """Parse and dry-run the editor's text; show the path and the estimate."""
        source = self.path.text() or "<editor>"
        try:
            scan = parse_scan(self.editor.toPlainText(), source=source)
            run = dry_run(scan)
        except (ScanError, ValueError) as exc:
            self.scan = None
            self.estimate.setText(f"<span style='color:#c00'>{describe(exc)}</span>")
            return None
        self.scan = scan
        xy = np.asarray(run.plan.positions(), float).reshape(-1, 2)
        self.path_curve.setData(xy[:, 0], xy[:, 1])
        self.start_dot.setData(xy[:1, 0], xy[:1, 1])
        self.estimate.setText(run.text.replace("&", "&amp;").replace("<", "&lt;")
                              .replace("\n", "<br>").replace("  ", "&nbsp;&nbsp;"))
        return scan

    def start(self) -> None:
        scan = self.validate()
        if scan is None:
            return
        out = self.out.text().strip() or None
        self.settings.setValue("scan/out", self.out.text())
        try:
            self.controller.start(scan, out)
        except Exception as exc:
            self.status.setText(f"<span style='color:#c00'>{describe(exc)}</span>")

    # -- repaint
    def refresh(self, snap: Snapshot) -> None:
        c = self.controller
        p = snap.progress
        if p is not None:
            self.progress.setMaximum(max(1, p.shots_total))
            self.progress.setValue(p.shots_done)
        state = ("running" + (" (paused)" if c.running and c.running.handle.paused else "")
                 if c.active else "no scan" if c.running is None else "finished")
        if c.running is not None and c.running.result is not None:
            r = c.running.result
            state = f"{r.status}" + (f" ({r.reason})" if r.reason else "")
        parts = [f"<b>{state}</b>"]
        if p is not None:
            parts.append(f"line {p.lines_done}/{p.lines_total}, {p.shots_per_s:.0f} shots/s, "
                         f"invalid {p.invalid_primary} primary / {p.invalid_secondary} "
                         f"secondary, ETA {_eta(p.eta_s)}")
        if snap.map_path:
            parts.append(f"map file: {snap.map_path}")
        if c.error:
            parts.append(f"<span style='color:#c00'>{c.error}</span>")
        text = "<br>".join(parts)
        if text != self.status.text():
            self.status.setText(text)
        self.buttons["Start"].setEnabled(not c.active)
        for name in ("Pause", "Resume", "Abort"):
            self.buttons[name].setEnabled(c.active)
