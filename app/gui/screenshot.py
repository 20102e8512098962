"""`plumelink gui --screenshot FILE`: connect, run a short scan, save a PNG of the window.

Driven by a QTimer state machine (no waiting loops): connect the bench, load the model (if
any), start the scan, wait for it and the live transfer to finish, show the spectra of the
middle spot, wait until every view is repainted, grab, quit.

With ``panels_dir`` (`plumelink gui --screenshots DIR --maps MAPS --model MODEL`) it goes on
to every panel: the Live panel's element maps and phases, Bench, Scan, Train during a short
training on MAPS/train.h5 and val.h5, and Evaluate after evaluating MODEL on MAPS/test.h5;
one PNG per view in DIR.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from plumelink.pipeline.scan import example_scans, load_scan, parse_scan

from .main_window import MainWindow
from .workers import describe

SHORT_SIZE_UM = (400.0, 200.0)  # 10 x 5 spots of the demo scan


def short_scan(profile: str, out_dir: Path):
    """The shipped demo scan shrunk to 10 x 5 spots on ``profile``, writing into out_dir."""
    text = example_scans()["demo_small"].read_text(encoding="utf-8")
    text = re.sub(r'(?m)^bench = .*$', f'bench = "{profile}"', text)
    text = re.sub(r'(?m)^output = .*$', f'output = "{out_dir / "screenshot_scan.h5"}"', text)
    text = re.sub(r'(?m)^size_um = .*$', f"size_um = [{SHORT_SIZE_UM[0]}, {SHORT_SIZE_UM[1]}]",
                  text)
    return parse_scan(text, source="short screenshot scan")


def render_html(page: Path, out: Path, width: int = 1100, max_height: int = 3200) -> Path:
    """The top of an HTML page (the evaluation report: tables and embedded PNGs) as a PNG,
    laid out by Qt's rich-text engine: no browser needed."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter, QTextDocument

    doc = QTextDocument()
    doc.setHtml(page.read_text(encoding="utf-8"))
    doc.setTextWidth(width)
    size = doc.size()
    image = QImage(int(size.width()), int(min(size.height(), max_height)), QImage.Format_RGB32)
    image.fill(Qt.white)
    painter = QPainter(image)
    doc.drawContents(painter)
    painter.end()
    if not image.save(str(out)):
        raise OSError(f"could not write {out}")
    return out


class ScreenshotRun(QObject):
    """Steps: connect -> (model) -> scan -> wait -> grab. ``done`` / ``error`` when finished,
    and ``finished`` is emitted (run it in an event loop that quits on it)."""

    finished = Signal()

    def __init__(self, window: MainWindow, path: str | Path, profile: str,
                 scan_path: str | None = None, model_dir: str | None = None,
                 timeout_s: float = 180.0, panels_dir: str | Path | None = None,
                 maps_dir: str | Path | None = None) -> None:
        super().__init__(window)
        self.window = window
        self.path = Path(path)
        self.panels_dir = Path(panels_dir) if panels_dir else None
        self.maps_dir = Path(maps_dir) if maps_dir else None
        self.written: list[Path] = []
        self._shots: list = []
        self.profile = profile
        self.scan_path = scan_path
        self.model_dir = model_dir
        self.error = ""
        self.done = False
        self._tmp = tempfile.TemporaryDirectory(prefix="plumelink-gui-")
        self._state = "connect"
        self._deadline = time.monotonic() + timeout_s
        self.timer = QTimer(self)
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._step)

    def start(self) -> None:
        self.timer.start()

    def _finish(self, error: str = "") -> None:
        if self.done:
            return
        run = self.window.train_panel.run
        if run is not None and not run.done:
            run.stop()
        self.error = error
        self.done = True
        self.timer.stop()
        # no question on closing: a scan still running (a timeout) is stopped safely
        self.window.confirm_close = lambda: True
        self.window.close()
        self._tmp.cleanup()
        self.finished.emit()

    def _step(self) -> None:
        if time.monotonic() > self._deadline:
            w = self.window
            self._finish(f"screenshot: timed out in step {self._state!r} (bench "
                         f"{w.session.status()['state']}, model loading "
                         f"{w.live_panel.model_loading}, scan finished "
                         f"{w.controller.finished}, views to repaint "
                         f"{w.live_panel.stale_views(w.model.snapshot())})")
            return
        try:
            self._advance()
        except Exception as exc:  # one message and an end, never the same failure each tick
            self._finish(f"screenshot, step {self._state!r}: {describe(exc)}")

    def _advance(self) -> None:
        w = self.window
        status = w.session.status()
        if self._state == "connect":
            w.session.connect(self.profile)
            if self.model_dir:
                w.live_panel.load_model(self.model_dir)
            self._state = "connecting"
        elif self._state == "connecting":
            if status["state"] == "error":
                self._finish(status["error"])
            elif status["state"] == "connected" and not w.live_panel.model_loading:
                if self.model_dir and w.controller.transfer is None:
                    self._finish(f"model {self.model_dir}: {w.live_panel.model_label.text()}")
                    return
                scan = (load_scan(self.scan_path) if self.scan_path
                        else short_scan(self.profile, Path(self._tmp.name)))
                w.tabs.setCurrentWidget(w.live_panel)
                w.controller.start(scan)
                self._state = "scanning"
        elif self._state == "scanning" and w.controller.finished:
            ny, nx = w.model.shape
            w.live_panel.inspect(ny // 2, nx // 2)  # a spot's spectra beside the latest
            self._state = "settling"
        elif self._state == "settling" and not w.live_panel.stale_views(w.model.snapshot()):
            self._state = "grab"
        elif self._state == "grab":
            self._save(self.path)
            if self.panels_dir is None or w.controller.error:
                self._finish(w.controller.error)
                return
            self._shots = self._panel_shots()
            self._state = "panels"
        elif self._state == "panels":
            self._next_panel()

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.window.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        self.written.append(path)

    def _panel_shots(self) -> list:
        """(file name, prepare, ready) of each panel view, shot in this order."""
        w = self.window
        live = w.live_panel
        snap = w.model.snapshot
        shots = [
            ("gui_live_elements.png", lambda: live.tabs.setCurrentWidget(live.elements),
             lambda: len(live.elements.views) == len(snap().element_windows)
             and not live.stale_views(snap())),
            ("gui_live_phases.png", lambda: live.tabs.setCurrentWidget(live.phases),
             lambda: live.phases.labels is not None),
            ("gui_bench.png", lambda: w.tabs.setCurrentWidget(w.bench_panel), lambda: True),
            ("gui_scan.png", lambda: w.tabs.setCurrentWidget(w.scan_panel), lambda: True),
        ]
        if self.maps_dir is not None:
            out = Path(self._tmp.name) / "trained"
            shots.append(("gui_train.png", lambda: self._start_training(out),
                          lambda: len(w.train_panel.run.snapshot()) >= 3))
            if self.model_dir:
                shots.append(("gui_evaluate.png", self._start_evaluation,
                              lambda: w.evaluate_panel.result is not None))
        return shots

    def _start_training(self, out: Path) -> None:
        w = self.window
        panel = w.train_panel
        panel.train.setText(str(self.maps_dir / "train.h5"))
        panel.val.setText(str(self.maps_dir / "val.h5"))
        panel.out.setText(str(out))
        panel.epochs.setValue(40)
        panel.baselines.setChecked(False)
        w.tabs.setCurrentWidget(panel)
        panel.start()

    def _start_evaluation(self) -> None:
        w = self.window
        if w.train_panel.run is not None:
            w.train_panel.stop()
        panel = w.evaluate_panel
        panel.model.setText(str(self.model_dir))
        panel.test.setText(str(self.maps_dir / "test.h5"))
        panel.report.setText(str(self.panels_dir / "report"))
        w.tabs.setCurrentWidget(panel)
        panel.start()

    def _render_report(self) -> None:
        report = self.panels_dir / "report" / "report.html"
        self.written.append(render_html(report, self.panels_dir / "report.png"))

    def _next_panel(self) -> None:
        """Prepare the next shot once, grab it when ready (the panels repaint on their own
        timer meanwhile)."""
        if not self._shots:
            if self.window.evaluate_panel.result is not None:
                self._render_report()
            self._finish(self.window.controller.error)
            return
        name, prepare, ready = self._shots[0]
        if not getattr(self, "_prepared", False):
            prepare()
            self._prepared = True
            self._ready_at = None
            return
        if ready():  # a few ticks more for the last repaint of what just arrived
            self._ready_at = self._ready_at or time.monotonic()
            if time.monotonic() - self._ready_at > 0.5:
                self._save(self.panels_dir / name)
                self._shots.pop(0)
                self._prepared = False
