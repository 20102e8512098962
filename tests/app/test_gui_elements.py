"""The Live panel's element maps and the map views as a scientist reads them: element maps
that agree with `plumelink lines` on the written file, measured and transferred maps on one
colour scale, axes in µm or mm without double prefixes, a colour bar and a value readout."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from test_gui import connect, load_model, scan_text, start_scan

from plumelink.app.gui.live_model import LiveModel
from plumelink.app.gui.map_view import MapView, map_levels, map_units
from plumelink.models.evaluate import PackageTransfer
from plumelink.models.package import load_package
from plumelink.pipeline.element_maps import element_maps
from plumelink.pipeline.map_reader import MapReader

LINES = ["Al I 309.27", "Ca II 393.37"]


def test_scan_fills_element_maps_that_agree_with_plumelink_lines(qtbot, window, bench_profile,
                                                                tmp_path, tiny_gui_model):
    w = window
    _, model = tiny_gui_model
    connect(qtbot, w, bench_profile)
    load_model(qtbot, w, model)
    w.tabs.setCurrentWidget(w.live_panel)
    w.live_panel.tabs.setCurrentWidget(w.live_panel.elements)
    w.live_panel.elements.set_lines(LINES)
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out, ny=4))
    qtbot.waitUntil(lambda: w.controller.finished
                    and w.model.snapshot().transferred_lines == 4, timeout=30000)
    snap = w.model.snapshot()
    assert [win.label for win in snap.element_windows] == LINES
    offline = element_maps(out, LINES)  # the same file, read back by the CLI's code
    assert "instrument snapshot" in offline.resolution.source
    for m in offline.maps:
        np.testing.assert_allclose(snap.elements[m.name], m.values, rtol=1e-4, atol=1e-2)
    # transferred element maps: the folded head gives what the whole decoded spectra give
    lines = PackageTransfer(load_package(model)).line_transfer()
    lines.line_weights = np.stack([win.weights for win in snap.element_windows], 1)
    with MapReader(out) as reader:
        for iy in range(4):
            expected = lines(reader.read_line(iy)).element_areas
            for k, label in enumerate(LINES):
                np.testing.assert_allclose(snap.elements_transferred[label][iy], expected[:, k],
                                           rtol=1e-3, atol=0.5)
    # the calibrated interval radius follows each spot's confidence (the validation map's bins)
    intervals = w.controller.transfer.intervals
    assert intervals is not None and snap.interval_radius is not None
    np.testing.assert_array_equal(snap.interval_radius,
                                  intervals.radius_for(snap.confidence).astype(np.float32))
    # both maps of a line are painted on one colour scale
    qtbot.waitUntil(lambda: all(label in w.live_panel.elements.views for label in LINES),
                    timeout=5000)
    qtbot.waitUntil(lambda: not w.live_panel.stale_views(w.model.snapshot()), timeout=5000)
    measured, transferred = w.live_panel.elements.views["Ca II 393.37"]
    assert measured.levels == transferred.levels
    assert measured.levels == map_levels(snap.elements["Ca II 393.37"],
                                         snap.elements_transferred["Ca II 393.37"])
    # and so are the measured and transferred emissivity maps; the difference is centred
    views = w.live_panel.maps
    assert views["primary"].levels == views["transferred"].levels
    lo, hi = views["difference"].levels
    assert lo == -hi


def test_a_line_that_is_not_on_the_axis_is_refused_and_the_lines_kept(qtbot, window,
                                                                      tiny_gui_model):
    maps, _ = tiny_gui_model
    tab = window.live_panel.elements
    with MapReader(maps["test"]) as reader:
        window.model.reset(reader.shape, wavelength={s: reader.wavelength_nm(s)
                                                     for s in ("primary", "secondary")})
    tab.set_lines(["Ca II 393.37"])
    tab.add_line("K I 766.49")
    assert "K I 766.49" not in window.model.element_lines
    assert window.model.element_lines == ("Ca II 393.37",)
    assert "K" in tab.message.text()


def test_changing_lines_drops_transferred_areas_of_the_old_lines(tiny_gui_model):
    maps, _ = tiny_gui_model
    model = LiveModel()
    with MapReader(maps["test"]) as reader:
        axes = {s: reader.wavelength_nm(s) for s in ("primary", "secondary")}
        model.reset(reader.shape, wavelength=axes)
        model.set_element_lines(["Al"])
        version, _ = model.element_weights()
        model.set_element_lines(["Ca"])
        nx = reader.shape[1]
        model.add_transferred(0, np.zeros(nx, np.float32),
                              element_areas=(version, np.ones((nx, 1), np.float32)))
    assert model.snapshot().elements_transferred == {}  # computed for Al: not shown as Ca


@pytest.mark.parametrize("extent, unit", [((0, 0, 400, 200), "µm"),
                                          ((0, 0, 40_000, 20_000), "mm")])
def test_map_axes_carry_one_unit_without_si_prefixes(qtbot, extent, unit):
    view = MapView("test", value_label="counts")
    qtbot.addWidget(view)
    data = np.arange(50, dtype=np.float32).reshape(5, 10)
    view.show_map(data, extent)
    assert map_units(extent)[0] == unit
    for side, name in (("bottom", "x"), ("left", "y")):
        axis = view.plot.getAxis(side)
        assert axis.labelText == f"{name} ({unit})" and axis.labelUnits == ""
        assert axis.autoSIPrefixScale == 1.0
    assert view.colorbar.levels() == (0.0, 49.0)
    text = view.value_text(2, 3)
    assert "23" in text and f" {unit}" in text and "iy=2, ix=3" in text


def test_map_levels_are_shared_and_symmetric_on_request() -> None:
    a = np.array([[1.0, np.nan], [3.0, 4.0]])
    b = np.array([[np.nan, 10.0]])
    assert map_levels(a, b) == (1.0, 10.0)
    assert map_levels(a - 2.0, symmetric=True) == (-2.0, 2.0)
    assert map_levels(np.full((2, 2), np.nan)) == (0.0, 1.0)


# --- line identification ----------------------------------------------------------------------

def test_line_labels_alternate_rows_so_neighbours_never_touch(qtbot) -> None:
    from plumelink.app.gui.spectra_plot import LABELS, SpectraPlot

    plot = SpectraPlot("test")
    qtbot.addWidget(plot)
    wl = np.linspace(245.0, 407.0, 4062)
    plot.show_spectra({"primary": (wl, np.ones(wl.size))})
    positions = sorted(plot.label_positions)
    assert LABELS - 2 <= len(positions) <= LABELS
    min_gap = 2 * (407.0 - 245.0) / LABELS  # neighbours alternate rows
    for row in {p for _, p in positions}:
        same = [w for w, p in positions if p == row]
        assert np.all(np.diff(same) >= min_gap * 0.999), (row, same)
    assert len({p for _, p in positions}) == 2


def test_sticks_and_hover_name_the_table_lines(qtbot) -> None:
    from plumelink.app.gui.spectra_plot import SpectraPlot
    from plumelink.drivers.sim.tables import line_table
    from plumelink.pipeline.line_catalogue import sticks

    plot = SpectraPlot("test")
    qtbot.addWidget(plot)
    wl = np.linspace(245.0, 407.0, 4062)
    plot.show_spectra({"primary": (wl, np.linspace(0, 1000, wl.size))})
    plot.set_sticks(("Ca",), 10_000)
    x, y = plot._sticks[0].getData()
    expected, rel = sticks("Ca", (245.0, 407.0), 10_000)
    np.testing.assert_allclose(x[::2], expected)
    bottom, top = plot._counts
    np.testing.assert_allclose(y[1::2], bottom + 0.85 * (top - bottom) * rel)
    assert "Ca II 393.37" in plot.candidates_text(393.37)
    table = np.sort(line_table().wavelength_nm)
    table = table[(table > 245) & (table < 407)]
    widest = int(np.argmax(np.diff(table)))
    assert "no table line" in plot.candidates_text((table[widest] + table[widest + 1]) / 2)


def test_measured_spectra_are_labelled_when_baseline_corrected(qtbot) -> None:
    from plumelink.app.gui.spectra_plot import SpectraPlot

    plot = SpectraPlot("test")
    qtbot.addWidget(plot)
    wl = np.linspace(245.0, 407.0, 100)
    plot.show_spectra({"primary": (wl, np.ones(100)), "transferred": (wl, np.ones(100))},
                      baseline_corrected=True)
    assert "primary (baseline-corrected)" in plot.legend_text()
    plot.show_spectra({"primary": (wl, np.ones(100))})
    assert "primary" in plot.legend_text()


def test_peak_table_of_a_clicked_spot_and_its_csv(qtbot, window, bench_profile, tmp_path,
                                                  tiny_gui_model):
    w = window
    _, model = tiny_gui_model
    connect(qtbot, w, bench_profile)
    load_model(qtbot, w, model)
    out = tmp_path / "scan.h5"
    start_scan(qtbot, w, scan_text(bench_profile, out, ny=2))
    qtbot.waitUntil(lambda: w.controller.finished, timeout=30000)
    panel = w.live_panel
    panel.inspect(1, 3)
    qtbot.waitUntil(lambda: "iy=1, ix=3" in panel.spot.plotItem.titleLabel.text, timeout=5000)
    assert "primary (baseline-corrected)" in panel.spot.legend_text()
    panel.show_peak_table()
    qtbot.waitUntil(lambda: panel.peak_dialog is not None, timeout=10000)
    dialog = panel.peak_dialog
    assert "iy=1, ix=3" in dialog.table.what and dialog.grid.rowCount() > 3
    first = dialog.grid.item(0, 3).text()
    assert first and first != "no table line"
    csv_path = tmp_path / "peaks.csv"
    dialog.save(str(csv_path))
    assert csv_path.read_text(encoding="utf-8").count("\n") == dialog.grid.rowCount() + 2


# --- phases -----------------------------------------------------------------------------------

def test_phase_map_of_a_simulated_map_finds_its_minerals(qtbot, window, tmp_path) -> None:
    from sklearn.metrics import adjusted_rand_score

    from plumelink.app.gui.phase_tab import CATEGORY_COLOURS, category_colormap
    from plumelink.pipeline.simulate import simulate_dataset

    small = simulate_dataset("small", tmp_path, seed=0, truth=True)["test"]
    w = window
    w.tabs.setCurrentWidget(w.live_panel)
    w.live_panel.tabs.setCurrentWidget(w.live_panel.phases)
    with MapReader(small) as reader:
        axes = {s: reader.wavelength_nm(s) for s in ("primary", "secondary")}
        w.model.reset(reader.shape, x_um=reader.x_um, y_um=reader.y_um, wavelength=axes,
                      map_path=str(small))
        mineral = []
        for iy in range(reader.shape[0]):
            line = reader.read_line(iy)
            w.model.add_line(line)
            mineral.append(line.truth.mineral)
    qtbot.waitUntil(lambda: w.live_panel.phases.labels is not None
                    and (w.live_panel.phases.labels >= 0).all(), timeout=20000)
    labels = w.live_panel.phases.labels
    assert set(np.unique(labels)) == set(range(4))
    assert adjusted_rand_score(np.concatenate(mineral), labels.ravel()) > 0.4
    # categorical colours: each label one flat colour of the table
    cmap = category_colormap(4)
    for k in range(4):
        colour = cmap.map([(k + 0.5) / 4], mode="qcolor")[0]
        assert colour.name() == CATEGORY_COLOURS[k]
