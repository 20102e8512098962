"""`plumelink gui`: the bench GUI (PySide6 + pyqtgraph)."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gui", help="the bench GUI: bench, scan, live maps, training, evaluation",
        description="Open the plumelink GUI. With --screenshot, connect the bench, run a short "
                    "scan (or --scan), save a PNG of the main window and exit.")
    p.add_argument("--profile", default=None,
                   help="bench profile to connect (name or TOML path; default: the last used, "
                        "else simulated)")
    p.add_argument("--screenshot", metavar="FILE", default=None,
                   help="run a short simulated scan, write a PNG of the window, exit")
    p.add_argument("--scan", metavar="SCAN.toml", default=None, help="scan file to load")
    p.add_argument("--model", metavar="MODEL_DIR", default=None,
                   help="transfer model package for the live transferred map")
    p.add_argument("--screenshots", metavar="DIR", default=None,
                   help="with --screenshot: go on to every panel (element maps, phases, "
                        "Bench, Scan, Train, Evaluate), one PNG each in DIR")
    p.add_argument("--maps", metavar="MAPS_DIR", default=None,
                   help="with --screenshots: train.h5, val.h5 and test.h5 for the Train and "
                        "Evaluate panels")
    p.add_argument("--lines", metavar="LINE", action="append", default=None,
                   help="element lines of the Live panel (repeatable)")
    p.add_argument("--sticks", metavar="EL,EL", default="",
                   help="elements drawn as sticks in the spectra")
    p.add_argument("--check", action="store_true",
                   help="only check that Qt can start here; name the missing system "
                        "libraries and the apt-get line that installs them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plumelink.app.qt_check import check_qt

    if args.screenshot and "QT_QPA_PLATFORM" not in os.environ and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    qt = check_qt()
    if args.check or not qt.ok:  # Qt would abort with a message naming no library
        print(f"plumelink gui: {qt.problem}" if not qt.ok
              else f"plumelink gui: Qt can start (platform {qt.platform})",
              file=sys.stderr if not qt.ok else sys.stdout)
        return 0 if qt.ok else 3
    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from plumelink.app.gui.main_window import MainWindow
    from plumelink.app.gui.screenshot import ScreenshotRun

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow()
    if args.profile:
        window.bench_panel.profile.setCurrentText(args.profile)
    if args.scan:
        window.scan_panel.path.setText(args.scan)
        window.scan_panel.load_file()
    if args.screenshot:
        if args.lines:
            window.model.set_element_lines(args.lines)
        if args.sticks:
            window.live_panel.stick_elements.setText(args.sticks)
            window.live_panel.apply_sticks()
        shot = ScreenshotRun(window, args.screenshot, args.profile or "simulated",
                             args.scan, args.model, timeout_s=600.0 if args.screenshots else 180.0,
                             panels_dir=args.screenshots, maps_dir=args.maps)
        window.show()
        loop = QEventLoop()  # quits when the run ends, whatever other windows are open
        shot.finished.connect(loop.quit)
        shot.start()
        loop.exec()
        if not shot.done or shot.error:
            print(f"plumelink gui: {shot.error or 'no screenshot written'}", file=sys.stderr)
            return 1
        print("wrote " + ", ".join(str(p) for p in shot.written))
        return 0
    if args.model:
        window.live_panel.load_model(args.model)
    window.show()
    return int(app.exec())
