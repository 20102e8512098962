"""The GUI on the simulated bench (pytest-qt, offscreen): scans fill the live maps, a loaded
model transfers line by line, STOP and closing leave a safe, readable file, and a scan, the
live transfer and a training run share the machine (the event loop's 100 ms bound is a timed
figure: opt-in, -m benchmark)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

import argparse
import gc
import os
import re
import warnings

from PySide6.QtCore import Qt, QTimer
from scan_files import step_scan_text

from plumelink.app import gui_command
from plumelink.app.gui.lines import strong_lines
from plumelink.app.gui.live_model import LiveModel, window_emission
from plumelink.app.gui.main_window import MainWindow
from plumelink.app.gui.settings import open_settings
from plumelink.app.gui.training import TrainRun
from plumelink.models.evaluate import PackageTransfer
from plumelink.models.package import load_package
from plumelink.pipeline.map_reader import MapReader

ROOT = Path(__file__).resolve().parents[2]


def scan_text(bench: Path, out: Path, ny: int = 4, nx: int = 8) -> str:
    return step_scan_text(bench, out, ny=ny, nx=nx, sample="gui test piece")


def connect(qtbot, w: MainWindow, profile: Path) -> None:
    w.bench_panel.profile.setCurrentText(str(profile))
    qtbot.mouseClick(w.bench_panel.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.session.status()["state"] in ("connected", "error"), timeout=20000)
    assert w.session.status()["state"] == "connected", w.session.status()["error"]


def start_scan(qtbot, w: MainWindow, text: str) -> None:
    w.scan_panel.editor.setPlainText(text)
    qtbot.mouseClick(w.scan_panel.buttons["Start"], Qt.MouseButton.LeftButton)
    assert w.controller.running is not None, w.scan_panel.estimate.text()


def load_model(qtbot, w: MainWindow, model: Path) -> None:
    w.live_panel.load_model(model)
    qtbot.waitUntil(lambda: w.controller.transfer is not None, timeout=30000)


# ---------------------------------------------------------------------------- units
def test_window_emission_and_strong_lines():
    wl = np.linspace(280, 300, 201)
    spectra = np.full((3, wl.size), 100, np.uint16)
    spectra[:, 100] = 600  # a line at 290 nm
    out = window_emission(spectra, wl, 290.0, 0.5, np.array([True, True, False]))
    np.testing.assert_allclose(out[:2], 500.0)
    assert np.isnan(out[2])
    labels = strong_lines(250.0, 400.0)
    assert labels and all(250 <= w <= 400 for w, _ in labels)
    assert any(label.startswith(("Si", "Al", "Ca", "Fe", "Mg", "Na", "Li")) for _, label in labels)


def test_live_model_grows_with_nan_for_missing_lines(tiny_gui_model):
    maps, _ = tiny_gui_model
    model = LiveModel()
    with MapReader(maps["test"]) as reader:
        axes = {s: reader.wavelength_nm(s) for s in ("primary", "secondary")}
        model.reset(reader.shape, x_um=reader.x_um, y_um=reader.y_um, wavelength=axes)
        model.add_line(reader.read_line(2))
        snap = model.snapshot()
    assert snap.lines_done == 1
    assert np.isnan(snap.emissivity["primary"][0]).all()
    assert np.isfinite(snap.emissivity["primary"][2]).any()
    assert set(snap.latest) == {"primary", "secondary"}


@pytest.mark.parametrize("two_steps", [True, False])
def test_live_transfer_fills_the_transferred_and_confidence_maps(tiny_gui_model, two_steps):
    from plumelink.app.gui.live_transfer import LiveTransfer

    maps, model_dir = tiny_gui_model
    # fp32 confidence, as load_package_transfer gives the GUI
    transfer = PackageTransfer(load_package(model_dir), confidence_precision="fp32")
    model = LiveModel()
    with MapReader(maps["test"]) as reader:
        model.reset(reader.shape, x_um=reader.x_um, y_um=reader.y_um)
        lines = [reader.read_line(iy) for iy in range(3)]
    live = LiveTransfer(transfer, model, two_steps=two_steps)
    for line in lines:
        live.submit(line)
    live.close(60.0)
    assert live.error == ""
    snap = model.snapshot()
    whole = transfer.line_transfer()
    for line in lines:
        expected = whole(line)
        valid = line.secondary.valid
        np.testing.assert_allclose(snap.transferred[line.index][valid],
                                   expected.emissivity[valid], rtol=1e-4)
        np.testing.assert_allclose(snap.confidence[line.index], expected.confidence, rtol=1e-5)
    assert np.isnan(snap.transferred[3:]).all() and snap.transferred_lines == 3


# ---------------------------------------------------------------------------- scans
def test_scan_from_the_gui_fills_the_maps(qtbot, window, bench_profile, tmp_path):
    w = window
    connect(qtbot, w, bench_profile)
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out))
    seen = set()
    qtbot.waitUntil(lambda: seen.add(w.model.snapshot().lines_done) or w.controller.finished,
                    timeout=30000)
    snap = w.model.snapshot()
    assert snap.lines_done == 4 and len(seen) > 1
    assert w.controller.running.result.status == "complete"
    for s in ("primary", "secondary"):
        assert (np.isfinite(snap.emissivity[s]) == (snap.status[s] == 1)).all()
        assert (snap.status[s] >= 0).all()
    assert np.isfinite(snap.window).any()
    qtbot.waitUntil(lambda: "complete" in w.scan_panel.status.text(), timeout=2000)
    assert str(out) in w.scan_panel.status.text()
    assert w.live_panel.maps["primary"].image.image is not None
    with MapReader(out) as reader:
        np.testing.assert_allclose(reader.emissivity("primary"), snap.emissivity["primary"])


def test_a_scan_on_its_own_bench_takes_its_axes_from_the_start_event(bench_profile, tmp_path,
                                                                     monkeypatch):
    """No bench connected: the engine opens its own, and the scan-started event brings the
    wavelength axes (the map file is not opened for them); a vertical raster fills the map's
    columns."""
    from plumelink.app.gui import workers
    from plumelink.pipeline.scan import parse_scan

    def refuse(*args, **kwargs):
        raise AssertionError("the live view opened the map file during the scan")

    model = LiveModel()
    controller = workers.ScanController(model)
    out = tmp_path / "own.h5"
    text = step_scan_text(bench_profile, out, ny=4, nx=3).replace(
        "[region]\n", '[region]\norder = "snake-vertical"\n')
    monkeypatch.setattr(workers, "MapReader", refuse)
    controller.start(parse_scan(text, source="own.toml"))
    assert controller.wait(60) and controller.running.result.status == "complete"
    monkeypatch.undo()
    snap = model.snapshot()
    assert snap.shape == (4, 3) and snap.lines_done == 3 and not controller.error
    assert np.isfinite(snap.window).all()  # the window map needs the primary axis
    with MapReader(out) as reader:
        for system in ("primary", "secondary"):
            np.testing.assert_array_equal(snap.latest[system][0], reader.wavelength_nm(system))
        np.testing.assert_allclose(reader.emissivity("primary"), snap.emissivity["primary"])


def test_fly_scan_from_the_scan_panel_fills_the_map_line_by_line(qtbot, window, bench_profile,
                                                               tmp_path):
    w = window
    connect(qtbot, w, bench_profile)
    sp = w.scan_panel
    sp.examples.setCurrentIndex(sp.examples.findText("fly_large"))
    sp._example(sp.examples.currentIndex())
    assert sp.scan is not None and sp.scan.mode == "fly", sp.estimate.text()
    out = tmp_path / "fly.h5"
    text = re.sub(r'(?m)^bench = .*$', f'bench = "{bench_profile}"', sp.editor.toPlainText())
    text = re.sub(r'(?m)^output = .*$', f'output = "{out}"', text)
    text = re.sub(r'(?m)^size_um = .*$', "size_um = [250.0, 200.0]", text)  # 10 x 8 spots
    start_scan(qtbot, w, text)
    seen = []
    qtbot.waitUntil(lambda: seen.append(w.model.snapshot().lines_done) or w.controller.finished,
                    timeout=30000)
    assert w.controller.running.result.status == "complete", w.controller.error
    snap = w.model.snapshot()
    assert snap.shape == (8, 10) and snap.lines_done == 8
    assert len(set(seen)) > 2  # the map grew line by line
    assert (snap.status["primary"] >= 0).all()
    with MapReader(out) as reader:
        np.testing.assert_allclose(reader.emissivity("primary"), snap.emissivity["primary"])


def test_loaded_model_transfers_line_by_line(qtbot, window, bench_profile, tmp_path,
                                             tiny_gui_model):
    w = window
    _, model = tiny_gui_model
    connect(qtbot, w, bench_profile)
    load_model(qtbot, w, model)
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out, ny=6))
    counts = []
    qtbot.waitUntil(lambda: counts.append(w.model.snapshot().transferred_lines)
                    or (w.controller.finished and counts[-1] == 6), timeout=30000)
    assert len(set(counts) - {0, 6}) >= 1  # seen partially transferred maps
    # every line reaches the painted transferred map
    qtbot.waitUntil(lambda: len(w.live_panel.transfer_latencies_s) == 6, timeout=2000)
    snap = w.model.snapshot()
    lines = PackageTransfer(load_package(model)).line_transfer()
    with MapReader(out) as reader:
        for iy in range(6):
            expected = lines(reader.read_line(iy)).emissivity
            np.testing.assert_allclose(snap.transferred[iy], expected, rtol=1e-4)
    # click a spot: primary, secondary and transferred spectra
    w.live_panel.inspect(1, 2)
    qtbot.waitUntil(lambda: w.live_panel.spot.curves["transferred"].xData is not None
                    and len(w.live_panel.spot.curves["transferred"].xData) > 0, timeout=5000)
    assert "iy=1, ix=2" in w.live_panel.spot.plotItem.titleLabel.text


def test_stop_disables_the_ddg_and_leaves_the_file_interrupted(qtbot, window, bench_profile,
                                                               tmp_path):
    w = window
    connect(qtbot, w, bench_profile)
    ddg = w.session.bench.emulators["delay_generator"]
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out, ny=40, nx=10))
    qtbot.waitUntil(lambda: w.model.snapshot().lines_done >= 1, timeout=20000)
    assert not ddg.outputs_inhibited
    qtbot.mouseClick(w.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ddg.outputs_inhibited, timeout=500)
    qtbot.waitUntil(lambda: w.controller.finished, timeout=10000)
    assert w.controller.running.result.status == "interrupted"
    with MapReader(out) as reader:
        assert reader.status == "interrupted"
        assert 1 <= reader.n_lines_done < 40
        assert np.isfinite(reader.emissivity("primary")[0]).any()
    assert not w.session.scan_active  # bench commands are accepted again


def test_close_during_scan_asks_then_stops_safely(qtbot, window, bench_profile, tmp_path):
    w = window
    connect(qtbot, w, bench_profile)
    ddg = w.session.bench.emulators["delay_generator"]
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out, ny=40, nx=10))
    qtbot.waitUntil(lambda: w.model.snapshot().lines_done >= 1, timeout=20000)
    asked = []
    w.confirm_close = lambda: asked.append(1) or False
    w.close()
    assert asked and w.isVisible() and w.controller.active  # "no": keep scanning
    w.confirm_close = lambda: asked.append(2) or True
    w.close()
    assert asked == [1, 2] and not w.controller.active
    assert ddg.outputs_inhibited
    with MapReader(out) as reader:
        assert reader.status == "interrupted" and reader.n_lines_done >= 1


class Watchdog:
    """A 10 ms Qt timer that records the wall time and the GUI thread's own CPU time between
    its ticks: a blocked event loop shows as a long gap."""

    def __init__(self, window: MainWindow) -> None:
        self.gaps: list[float] = []  # wall time between ticks
        self.busy: list[float] = []  # CPU time the GUI thread itself used between them
        self.steady: list[bool] = []  # after the first transferred line was painted
        self._window = window
        self._last = (time.perf_counter(), time.thread_time())
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.gaps.append(now - self._last[0])
        self.busy.append(cpu - self._last[1])
        self.steady.append(self._window.live_panel._transfer_painted > 0)
        self._last = (now, cpu)

    def start(self) -> None:
        self._last = (time.perf_counter(), time.thread_time())
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()


def scan_transfer_and_train(qtbot, w: MainWindow, bench_profile: Path, tmp_path: Path,
                            tiny_gui_model) -> Watchdog:
    """A 30-line scan with the live transfer while a training run goes on, all from the GUI;
    returns the watchdog that ticked through it."""
    maps, model = tiny_gui_model
    connect(qtbot, w, bench_profile)
    load_model(qtbot, w, model)
    tp = w.train_panel
    tp.train.setText(str(maps["train"]))
    tp.val.setText(str(maps["val"]))
    tp.out.setText(str(tmp_path / "model"))
    tp.epochs.setValue(3)
    tp.fine_tune.setChecked(False)
    tp.baselines.setChecked(False)
    w.tabs.setCurrentWidget(w.live_panel)
    gc.collect()  # the garbage of earlier tests' windows is not this scan's to collect
    watchdog = Watchdog(w)
    watchdog.start()
    qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
    start_scan(qtbot, w, scan_text(bench_profile, tmp_path / "scan.h5", ny=30, nx=10))
    assert not tp.run.done  # both run at once
    qtbot.waitUntil(lambda: w.controller.finished and tp.run.done, timeout=120000)
    watchdog.stop()
    return watchdog


def test_scan_transfer_and_training_run_at_once(qtbot, window, bench_profile, tmp_path,
                                                tiny_gui_model):
    """The three share the machine and each finishes; the event loop keeps ticking. Its
    100 ms bound is timed, so it is checked by the opt-in benchmark below."""
    w = window
    watchdog = scan_transfer_and_train(qtbot, w, bench_profile, tmp_path, tiny_gui_model)
    tp = w.train_panel
    assert tp.run.error == "", tp.run.error
    assert (tmp_path / "model" / "manifest.json").exists()
    assert w.model.snapshot().transferred_lines == 30
    with MapReader(tmp_path / "scan.h5") as reader:
        assert reader.status == "complete" and reader.n_lines_done == 30
    # a tick after the first transferred paint: the loop ran on while lines were transferred
    assert any(watchdog.steady)
    qtbot.waitUntil(lambda: "done: model package" in tp.status.text(), timeout=2000)
    assert len(tp.curves) >= 1


@pytest.mark.benchmark
def test_event_loop_never_blocks_during_scan_transfer_and_training(
        qtbot, window, bench_profile, tmp_path, tiny_gui_model):
    """The GUI's bound: no event-loop gap over 100 ms (opt-in: -m benchmark)."""
    load_before = os.getloadavg()[0]
    watchdog = scan_transfer_and_train(qtbot, window, bench_profile, tmp_path, tiny_gui_model)
    load = max(load_before, os.getloadavg()[0])
    gaps, busy, steady = watchdog.gaps, watchdog.busy, watchdog.steady
    assert len(gaps) > 50 and any(steady)
    # gaps[0] spans the test's own clicks (both start actions), not the event loop.
    worst = max(gaps[1:])
    over = sum(g > 0.100 for g in gaps[1:])
    top = sorted(range(1, len(gaps)), key=lambda i: -gaps[i])[:3]
    text = (f"event loop: longest gap {worst * 1e3:.0f} ms, {over} of {len(gaps) - 1} gaps "
            f"over 100 ms, GUI thread's longest work {max(busy[1:]) * 1e3:.0f} ms, load "
            f"average {load:.1f} on {os.cpu_count()} cores; longest (tick, gap ms, GUI-thread "
            f"CPU ms, after the first transferred paint): "
            + ", ".join(f"({i}, {gaps[i] * 1e3:.0f}, {busy[i] * 1e3:.0f}, {steady[i]})"
                        for i in top))
    print(text)
    # The GUI thread's own work between two ticks: always under 100 ms.
    assert max(busy[1:]) < 0.100, text
    if load < (os.cpu_count() or 1):
        assert worst < 0.100, text  # the bound, where the machine has CPU to spare
    else:  # other programs hold the cores: a gap also counts their time slices
        warnings.warn(f"machine overloaded, 100 ms bound checked on 99 % of gaps: {text}",
                      stacklevel=1)
        assert np.percentile(gaps[1:], 99) < 0.100, text


def test_training_stops_on_request(qtbot, window, tmp_path, tiny_gui_model):
    maps, _ = tiny_gui_model
    tp = window.train_panel
    tp.train.setText(str(maps["train"]))
    tp.val.setText(str(maps["val"]))
    tp.out.setText(str(tmp_path / "stopped"))
    tp.epochs.setValue(500)
    tp.baselines.setChecked(False)
    tp.start()
    qtbot.waitUntil(lambda: len(tp.run.snapshot()) >= 1, timeout=60000)
    qtbot.mouseClick(tp.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tp.run.done, timeout=30000)
    assert tp.run.stopped and not tp.run.package_written
    assert not (tmp_path / "stopped" / "manifest.json").exists()
    qtbot.waitUntil(lambda: "no model package written" in tp.status.text(), timeout=2000)
    assert tp.start_button.isEnabled() and not tp.stop_button.isEnabled()


def test_training_that_does_not_stop_in_time_is_terminated(tmp_path, tiny_gui_model):
    maps, _ = tiny_gui_model
    run = TrainRun(maps["train"], maps["val"], tmp_path / "killed",
                   {"epochs": 500, "threads": 1, "baselines": False, "hash_inputs": False},
                   stop_grace_s=0.0)
    run.stop()  # before its first epoch: ended by terminate or at its first check
    assert run.wait(60.0)
    assert run.stopped and not run.process.is_alive()
    assert not (tmp_path / "killed" / "manifest.json").exists() and not run.package_written


# ---------------------------------------------------------------------------- files, panels
def test_open_map_browses_a_file(qtbot, window, tiny_gui_model):
    maps, _ = tiny_gui_model
    window.open_map(maps["test"])
    with MapReader(maps["test"]) as reader:
        ny = reader.n_lines_done
        expected = reader.emissivity("secondary")
    qtbot.waitUntil(lambda: window.model.snapshot().lines_done == ny, timeout=10000)
    np.testing.assert_allclose(window.model.snapshot().emissivity["secondary"], expected)


def test_scan_validation_names_the_field(qtbot, window, bench_profile, tmp_path):
    text = scan_text(bench_profile, tmp_path / "x.h5").replace("step_um = 40.0", "step_um = -1")
    window.scan_panel.editor.setPlainText(text)
    window.scan_panel.start()
    assert window.controller.running is None
    assert "step_um" in window.scan_panel.estimate.text()


def test_bench_commands_and_settings_persist(qtbot, window, bench_profile, settings_file):
    w = window
    connect(qtbot, w, bench_profile)
    qtbot.waitUntil(lambda: w.session.status()["position"] is not None, timeout=5000)
    w.bench_panel.jog(1, 0)  # not homed yet: the stage's own error text is shown
    qtbot.waitUntil(lambda: "no reference position" in w.session.status()["error"],
                    timeout=20000)

    homed: list[tuple[float, float]] = []

    def home(bench) -> None:
        bench.stage.home()
        bench.stage.wait_until_idle(60.0)
        homed.append(bench.stage.position())
    assert w.session.submit(home, "home")
    qtbot.waitUntil(lambda: bool(homed) and w.session.status()["error"] == "", timeout=30000)
    x0, _y0 = homed[0]  # the status shows it a moment later, after its refresh
    w.bench_panel.jog_step.setValue(50.0)
    w.bench_panel.jog(1, 0)
    qtbot.waitUntil(lambda: abs(w.session.status()["position"][0] - (x0 + 50.0)) < 1.0,
                    timeout=20000)
    w.session.scan_active = True  # a scan owns the bench: commands are refused
    assert not w.session.submit(lambda b: None, "probe")
    assert "scan is running" in w.session.status()["error"]
    w.session.scan_active = False
    w.settings.sync()
    again = MainWindow(settings=open_settings(settings_file))
    qtbot.addWidget(again)
    assert again.bench_panel.profile.currentText() == str(bench_profile)
    again.close()


def test_evaluate_panel_shows_the_metrics_table(qtbot, window, tmp_path, tiny_gui_model):
    maps, model = tiny_gui_model
    ep = window.evaluate_panel
    ep.model.setText(str(model))
    ep.test.setText(str(maps["test"]))
    ep.report.setText(str(tmp_path / "report"))
    ep.start()
    qtbot.waitUntil(lambda: ep.job.done, timeout=120000)
    assert ep.job.error == "", ep.job.error
    qtbot.waitUntil(lambda: ep.result is not None, timeout=2000)
    assert ep.table.rowCount() >= 1 and ep.table.item(0, 0).text() != "–"
    best = ep.result[0]["recommended"]["model"]  # no baselines in this package: vae_mlp
    assert best == "vae_mlp" and f"recommended model: {best}" in ep.status.text()
    rows = [ep.table.verticalHeaderItem(r).text() for r in range(ep.table.rowCount())]
    assert rows.count(f"{best} (recommended)") == 1
    assert (tmp_path / "report" / "report.html").exists()
    ep.which.setCurrentIndex(5)  # k-means labels
    assert ep.map.image.image is not None


# ---------------------------------------------------------------------------- the command
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plumelink")
    sub = parser.add_subparsers(dest="command", required=True)
    gui_command.register(sub)
    return parser


def test_gui_options_parse():
    args = _parser().parse_args(["gui", "--profile", "simulated", "--screenshot", "w.png",
                                 "--scan", "s.toml", "--model", "m"])
    assert (args.profile, args.screenshot, args.scan, args.model) == (
        "simulated", "w.png", "s.toml", "m")
    assert args.func is gui_command.run
    assert _parser().parse_args(["gui"]).screenshot is None


def test_screenshot_after_a_short_simulated_scan(qapp, tmp_path, monkeypatch, bench_profile,
                                                 tiny_gui_model):
    monkeypatch.chdir(tmp_path)
    _, model = tiny_gui_model
    png = tmp_path / "shots" / "window.png"
    args = _parser().parse_args(["gui", "--profile", str(bench_profile), "--screenshot",
                                 str(png), "--model", str(model)])
    assert args.func(args) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
