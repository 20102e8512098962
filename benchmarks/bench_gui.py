"""GUI benchmark: latency from a raster line's arrival to the transferred map's repaint
(500-spot lines), and the GUI's frame rate while a 1 kHz simulated scan runs.

The latency is measured with the live element maps off and on (ELEMENT_LINES, their tab
shown: measured and transferred maps of each line painted as well) in the same run.

The latency is also measured for the reference design (whole-line transfer, timer repaint
only) in the same run, and the computation alone without the GUI, so that a figure taken on a
loaded machine can be judged.

Run: QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui.py [--lines 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(work: Path) -> tuple[dict[str, Path], Path]:
    """Tiny simulated maps and a 1-epoch package (cached in ``work``)."""
    from plumelink.models.train import TrainOptions, train_transfer
    from plumelink.pipeline.simulate import simulate_dataset

    maps = {n: work / "maps" / f"{n}.h5" for n in ("train", "val", "test")}
    model = work / "model"
    if not (model / "manifest.json").exists():
        simulate_dataset("tiny", work / "maps", seed=0, truth=True)
        train_transfer(maps["train"], maps["val"], model,
                       TrainOptions(epochs=1, threads=1, fine_tune=False, baselines=False,
                                    hash_inputs=False))
    return maps, model


def wide_lines(test_map: Path, nx: int, n_lines: int):
    """Raster lines of ``nx`` spots, tiled from the test map's spectra."""
    from plumelink.pipeline.map_reader import MapReader
    from plumelink.pipeline.raster_line import RasterLine, SystemLine

    with MapReader(test_map) as reader:
        src = [reader.read_line(int(i)) for i in np.flatnonzero(reader.lines_done)]
    out = []
    for iy in range(n_lines):
        base = src[iy % len(src)]
        reps = -(-nx // base.nx)

        def system(s, base=base, reps=reps):
            line = getattr(base, s)
            return SystemLine(np.tile(line.spectra, (reps, 1))[:nx].copy(),
                              np.tile(line.valid, reps)[:nx].copy(),
                              np.tile(line.frame_id, reps)[:nx].copy(),
                              np.tile(line.timestamp_s, reps)[:nx].copy())
        x = np.arange(nx, dtype=np.float64) * 40.0
        out.append(RasterLine(index=iy, x_um=x, y_um=np.full(nx, 40.0 * iy),
                              x_measured_um=x, y_measured_um=np.full(nx, 40.0 * iy),
                              shot_id=np.arange(nx, dtype=np.int64) + iy * nx,
                              primary=system("primary"), secondary=system("secondary")))
    return out


def _run_until(app, done, timeout_s: float) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    if done():
        return
    loop = QEventLoop()
    deadline = time.monotonic() + timeout_s
    check = QTimer()
    check.setInterval(20)

    def poll() -> None:
        if done() or time.monotonic() > deadline:
            check.stop()
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    loop.exec()


ELEMENT_LINES = ("Si I 288.16", "Al I 309.27", "Ca II 393.37", "Fe")


def transfer_latency(app, window, maps: dict[str, Path], model: Path, nx: int = 500,
                     n_lines: int = 10, period_s: float = 0.5,
                     reference: bool = False, elements: tuple[str, ...] = ()
                     ) -> dict[str, float]:
    """Lines of ``nx`` spots arrive every ``period_s`` (a 1 kHz scan of 500-spot lines);
    latency = arrival in the GUI process -> the transferred map repainted with that line.

    ``reference``: the reference design, measured the same way for comparison: each line
    transferred whole (emissivity and confidence together), the map repainted by the paint
    timer only.
    """
    from plumelink.app.gui.live_transfer import LiveTransfer
    from plumelink.pipeline.map_reader import MapReader

    lines = wide_lines(maps["test"], nx, n_lines)
    with MapReader(maps["test"]) as reader:
        axes = {s: reader.wavelength_nm(s) for s in ("primary", "secondary")}
    window.live_panel.load_model(model)
    _run_until(app, lambda: window.controller.transfer is not None, 60)
    window.model.reset((n_lines, nx), x_um=lines[0].x_um, y_um=np.arange(n_lines) * 40.0,
                       wavelength=axes)
    window.model.set_element_lines(elements)
    panel = window.live_panel
    panel.tabs.setCurrentWidget(panel.elements if elements else panel.tabs.widget(0))
    window.live_panel.reset_latency()
    window.live_panel.prompt_repaint = not reference
    live = LiveTransfer(window.controller.transfer, window.model, two_steps=not reference)

    def feed() -> None:  # what the scan's subscriber thread does
        for line in lines:
            window.model.add_line(line)
            live.submit(line)
            time.sleep(period_s)

    threading.Thread(target=feed, daemon=True).start()
    _run_until(app, lambda: len(window.live_panel.transfer_latencies_s) >= n_lines,
               n_lines * period_s + 60)
    live.close()
    window.live_panel.prompt_repaint = True
    if live.error or not window.live_panel.transfer_latencies_s:
        snap = window.model.snapshot()
        raise RuntimeError(live.error or f"no transferred line was painted ({snap.lines_done} "
                           f"lines, {snap.transferred_lines} transferred, "
                           f"{window.live_panel.paints} paints)")
    lat = np.asarray(window.live_panel.transfer_latencies_s) * 1e3
    return {"spots_per_line": nx, "lines": int(lat.size), "element_lines": len(elements),
            "latency_ms_median": float(
        np.median(lat)), "latency_ms_max": float(lat.max()), "latency_ms_p90": float(
        np.percentile(lat, 90))}


def transfer_compute(maps: dict[str, Path], model: Path, nx: int = 500,
                     n_lines: int = 6) -> dict[str, float]:
    """The computation alone, no GUI (median ms per ``nx``-spot line): the whole transfer
    (emissivity and confidence) and its first step (what the transferred map waits for)."""
    from plumelink.models.line_transfer import load_package_transfer

    steps = load_package_transfer(model).line_transfer()
    lines = wide_lines(maps["test"], nx, n_lines)
    whole, first, second = [], [], []
    for line in lines:
        t0 = time.perf_counter()
        steps(line)
        t1 = time.perf_counter()
        _, confidence = steps.in_two_steps(line)
        t2 = time.perf_counter()
        confidence()
        t3 = time.perf_counter()
        whole.append(t1 - t0)
        first.append(t2 - t1)
        second.append(t3 - t2)
    return {"whole_ms_median": 1e3 * float(np.median(whole)),
            "first_step_ms_median": 1e3 * float(np.median(first)),
            "confidence_step_ms_median": 1e3 * float(np.median(second)),
            "load_average_1min": os.getloadavg()[0]}


def scan_fps(app, window, work: Path, ny: int = 20, nx: int = 200) -> dict[str, float]:
    """Paint-timer ticks per second and the longest event-loop gap while a simulated fly scan
    with the laser at 1 kHz runs (resources/scans/fly_large.toml, shrunk), Live tab shown."""
    from PySide6.QtCore import QTimer

    from plumelink.drivers.bench import write_simulated_profile

    # the simulated bench in real time: shots at the laser's 1 kHz of wall-clock time
    bench = write_simulated_profile(work, 1.0)
    window.session.connect(str(bench))
    _run_until(app, lambda: window.session.status()["state"] != "connecting", 60)
    # the shipped fly scan (laser at 1 kHz on the DDG clock), shrunk to ny x nx spots
    text = (ROOT / "resources/scans/fly_large.toml").read_text(encoding="utf-8")
    text = re.sub(r'(?m)^bench = .*$', f'bench = "{bench}"', text)
    text = re.sub(r'(?m)^output = .*$', f'output = "{work / "fps_scan.h5"}"', text)
    text = re.sub(r'(?m)^size_um = .*$', f"size_um = [{25.0 * nx}, {25.0 * ny}]", text)
    from plumelink.pipeline.scan import parse_scan

    window.tabs.setCurrentWidget(window.live_panel)
    window.refresh_s.clear()
    paints0 = window.live_panel.paints
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    watchdog = QTimer()
    watchdog.setInterval(10)
    watchdog.timeout.connect(tick)
    watchdog.start()
    (work / "fps_scan.h5").unlink(missing_ok=True)  # a cached work folder's earlier scan
    started = time.perf_counter()
    window.controller.start(parse_scan(text, source="bench_gui"))
    _run_until(app, lambda: window.controller.finished, 600)
    elapsed = time.perf_counter() - started
    watchdog.stop()
    result = window.controller.running.result
    if result is None or result.status != "complete":
        raise RuntimeError(f"the 1 kHz scan did not complete: {window.controller.error or result}")
    return {"scan_shots_per_s": result.shots / result.elapsed_s if result else 0.0,
            "seconds": elapsed, "timer_fps": len(window.refresh_s) / elapsed,
            "view_paints_per_s": (window.live_panel.paints - paints0) / elapsed,
            "max_event_loop_gap_ms": 1e3 * max(gaps[1:]) if len(gaps) > 1 else 0.0}


def bench(work: Path, n_lines: int = 10, fps_lines: int = 20) -> dict[str, dict]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("PLUMELINK_GUI_SETTINGS", str(work / "gui.ini"))
    from PySide6.QtWidgets import QApplication

    from plumelink.app.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    maps, model = tiny_model(work)
    window = MainWindow()
    window.show()
    window.tabs.setCurrentWidget(window.live_panel)
    try:
        compute = transfer_compute(maps, model)
        reference = transfer_latency(app, window, maps, model, n_lines=n_lines, reference=True)
        latency = transfer_latency(app, window, maps, model, n_lines=n_lines)
        with_elements = transfer_latency(app, window, maps, model, n_lines=n_lines,
                                         elements=ELEMENT_LINES)
        fps = scan_fps(app, window, work, ny=fps_lines)
    finally:
        window.confirm_close = lambda: True
        window.close()
    return {"compute": compute, "latency_reference": reference, "latency": latency,
            "latency_with_element_maps": with_elements, "fps": fps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10, help="500-spot lines for the latency")
    parser.add_argument("--fps-lines", type=int, default=20, help="200-spot lines of the scan")
    parser.add_argument("--work", type=Path, default=None, help="cache folder (model, maps)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="plumelink-bench-gui-"))
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(bench(work, args.lines, args.fps_lines), indent=2))


if __name__ == "__main__":
    main()
