"""`plumelink gui --screenshot FILE`: connect, run a short scan, save a PNG of the window.

Driven by a QTimer state machine (no waiting loops): connect the bench, load the model (if
any), start the scan, wait for it and the live transfer to finish, repaint, grab, quit.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from PySide6.QtCore import QObject, QTimer

from plumelink.pipeline.scan import example_scans, load_scan, parse_scan

from .main_window import MainWindow

SHORT_SIZE_UM = (400.0, 200.0)  # 10 x 5 spots of the demo scan


def short_scan(profile: str, out_dir: Path):
    """The shipped demo scan shrunk to 10 x 5 spots on ``profile``, writing into out_dir."""
    text = example_scans()["demo_small"].read_text(encoding="utf-8")
    text = re.sub(r'(?m)^bench = .*$', f'bench = "{profile}"', text)
    text = re.sub(r'(?m)^output = .*$', f'output = "{out_dir / "screenshot_scan.h5"}"', text)
    text = re.sub(r'(?m)^size_um = .*$', f"size_um = [{SHORT_SIZE_UM[0]}, {SHORT_SIZE_UM[1]}]",
                  text)
    return parse_scan(text, source="short screenshot scan")


class ScreenshotRun(QObject):
    """Steps: connect -> (model) -> scan -> wait -> grab. ``done`` / ``error`` when finished."""

    def __init__(self, window: MainWindow, path: str | Path, profile: str,
                 scan_path: str | None = None, model_dir: str | None = None,
                 timeout_s: float = 300.0) -> None:
        super().__init__(window)
        self.window = window
        self.path = Path(path)
        self.profile = profile
        self.scan_path = scan_path
        self.model_dir = model_dir
        self.error = ""
        self.done = False
        self._tmp = tempfile.TemporaryDirectory(prefix="plumelink-gui-")
        self._state = "connect"
        self._ticks_left = int(timeout_s / 0.05)
        self.timer = QTimer(self)
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._step)

    def start(self) -> None:
        self.timer.start()

    def _finish(self, error: str = "") -> None:
        self.error = error
        self.done = True
        self.timer.stop()
        self._tmp.cleanup()
        self.window.close()

    def _step(self) -> None:
        w = self.window
        self._ticks_left -= 1
        if self._ticks_left <= 0:
            self._finish(f"screenshot: timed out in step {self._state!r}")
            return
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
            w.refresh()
            self._state = "grab"
        elif self._state == "grab":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not w.grab().save(str(self.path)):
                self._finish(f"could not write {self.path}")
                return
            self._finish(w.controller.error)
