"""The main window: the five panels in tabs, an always visible STOP, File > Open map, and the
paint timer that repaints every panel from the latest data (ScopeFoundry's idea)."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from pyqtgraph.util.garbage_collector import GarbageCollector
from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QToolBar,
)

from .bench_panel import BenchPanel
from .evaluate_panel import EvaluatePanel
from .live_model import LiveModel
from .live_panel import LivePanel
from .scan_panel import ScanPanel
from .settings import open_settings
from .train_panel import TrainPanel
from .workers import BenchSession, Job, ScanController, load_map

PAINT_HZ = 30
CLOSE_WAIT_S = 15.0
GC_INTERVAL_S = 0.5
_gc_windows: list[object] = []  # open windows that collect the garbage on their thread


def collect_on_gui_thread(owner: object) -> GarbageCollector:
    """Cyclic garbage collection only on the GUI thread, from a timer (pyqtgraph's
    `GarbageCollector`), over the objects made after start-up.

    A collection started by a worker thread holds the interpreter lock all the same (the
    event loop stalls) and can destroy Qt objects on the wrong thread. Everything alive now
    (PySide6, pyqtgraph, h5py, numpy: ~230,000 objects, 100-300 ms per full collection on a
    loaded 2-core machine) is moved out of the collector's sight with `gc.freeze`, so each
    collection only looks at what the session created since.
    """
    gc.collect()
    gc.freeze()
    _gc_windows.append(owner)
    return GarbageCollector(interval=GC_INTERVAL_S)


def stop_collecting(owner: object, collector: GarbageCollector) -> None:
    collector.timer.stop()
    if owner in _gc_windows:
        _gc_windows.remove(owner)
    if not _gc_windows:
        gc.enable()


class MainWindow(QMainWindow):
    def __init__(self, settings=None, paint_hz: float = PAINT_HZ) -> None:
        super().__init__()
        self.setWindowTitle("plumelink")
        self.settings = settings if settings is not None else open_settings()
        self.session = BenchSession()
        self.model = LiveModel()
        self.controller = ScanController(self.model, self.session)
        self._map_job: Job | None = None
        self._map_stop = threading.Event()
        # tests replace this to answer the "stop the scan and close?" question
        self.confirm_close = self._ask_close

        self.bench_panel = BenchPanel(self.session, self.settings)
        self.scan_panel = ScanPanel(self.controller, self.settings)
        self.live_panel = LivePanel(self.model, self.controller, self.settings)
        self.train_panel = TrainPanel(self.settings)
        self.evaluate_panel = EvaluatePanel(self.settings)
        self.tabs = QTabWidget()
        for panel, name in ((self.bench_panel, "Bench"), (self.scan_panel, "Scan"),
                            (self.live_panel, "Live"), (self.train_panel, "Train"),
                            (self.evaluate_panel, "Evaluate")):
            self.tabs.addTab(panel, name)
        self.setCentralWidget(self.tabs)

        bar = QToolBar("safety")
        bar.setMovable(False)
        self.stop_button = QPushButton("STOP")
        self.stop_button.setToolTip("Abort the scan and disable the DDG outputs now (Esc)")
        self.stop_button.setStyleSheet("background:#c00; color:white; font-weight:bold; "
                                       "padding:6px 18px")
        self.stop_button.clicked.connect(self.stop)
        bar.addWidget(self.stop_button)
        self.headline = QLabel("")
        bar.addWidget(self.headline)
        self.addToolBar(bar)
        stop_action = QAction("STOP", self)
        stop_action.setShortcut(QKeySequence("Escape"))
        stop_action.triggered.connect(self.stop)
        self.addAction(stop_action)

        menu = self.menuBar().addMenu("&File")
        open_action = QAction("&Open map…", self)
        open_action.setShortcut(QKeySequence.Open)
        open_action.triggered.connect(self._browse_map)
        menu.addAction(open_action)
        quit_action = QAction("&Quit", self)
        quit_action.triggered.connect(self.close)
        menu.addAction(quit_action)

        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)
        self.refresh_s: list[float] = []  # duration of the last paint-timer ticks
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / paint_hz))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self._gc = collect_on_gui_thread(self)

    # -- actions
    def stop(self) -> None:
        """STOP: abort the scan and disable the DDG outputs, both at once (never waits)."""
        self.controller.abort("STOP pressed")
        self.session.emergency_stop()
        self.statusBar().showMessage("STOP: scan aborted, DDG outputs disabled", 10000)

    def _browse_map(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open map", "", "plumelink maps (*.h5)")
        if path:
            self.open_map(path)

    def open_map(self, path: str | Path) -> None:
        """Browse a map file (also one still being written) in the Live panel."""
        if self.controller.active:
            self.statusBar().showMessage("a scan is running; open the map after it", 10000)
            return
        self._map_stop.set()
        self._map_stop = threading.Event()
        self._map_job = Job(load_map, path, self.model, self._map_stop, name="plumelink-open")
        self.tabs.setCurrentWidget(self.live_panel)

    # -- repaint
    def refresh(self) -> None:
        started = time.perf_counter()
        self._refresh()
        self.refresh_s.append(time.perf_counter() - started)
        del self.refresh_s[:-1000]

    def _refresh(self) -> None:
        snap = self.model.snapshot()
        current = self.tabs.currentWidget()
        self.bench_panel.refresh() if current is self.bench_panel else None
        self.scan_panel.refresh(snap)
        self.live_panel.refresh(snap)
        self.train_panel.refresh()
        self.evaluate_panel.refresh()
        job = self._map_job
        if job is not None and job.done:
            self._map_job = None
            self.statusBar().showMessage(job.error or f"{snap.map_path}: {job.result['status']}"
                                         f", {job.result['lines']} lines", 10000)
        st = self.session.status()
        text = f"bench: {st['state']}"
        if self.controller.active:
            text += " — scanning"
        if text != self.headline.text():
            self.headline.setText(text)

    # -- closing
    def _ask_close(self) -> bool:
        answer = QMessageBox.question(
            self, "plumelink", "A scan is running. Stop it safely (DDG outputs disabled, the "
            "map file closed as interrupted) and quit?")
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event) -> None:
        if self.controller.active:
            if not self.confirm_close():
                event.ignore()
                return
            self.stop()
            self.controller.wait(CLOSE_WAIT_S)  # the engine closes the file, then returns
        run = self.train_panel.run
        if run is not None and not run.done:
            run.kill()
        self._map_stop.set()
        self.timer.stop()
        self.live_panel.detach()
        stop_collecting(self, self._gc)
        self.session.close()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.sync()
        event.accept()
