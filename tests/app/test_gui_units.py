"""The Bench panel speaks the lab's units: delays in µs (ns resolution), integration in ms;
what reaches the instruments is in seconds."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from test_gui import connect

from plumelink.app.gui.bench_panel import delay_text


def test_delays_are_entered_in_us_and_reach_the_ddg_in_seconds(qtbot, window, bench_profile):
    w = window
    connect(qtbot, w, bench_profile)
    box, _ = w.bench_panel.delays["A"]
    assert box.suffix() == " µs" and box.value() == pytest.approx(180.0)
    box.setValue(180.125)  # 125 ns more
    w.bench_panel.set_delays()
    # the label shows what the DDG reports back (DLAY? through the driver), in µs
    qtbot.waitUntil(lambda: "A = T0 + 180.125 µs" in w.bench_panel.delays_now.text(),
                    timeout=5000)
    it, _ = w.bench_panel.spectrometers["primary"]
    assert it.suffix() == " ms"


def test_delay_text_picks_ns_or_us() -> None:
    assert delay_text(250e-9) == "250 ns"
    assert delay_text(180e-6) == "180.000 µs"
    assert delay_text(1.5e-6) == "1.500 µs"
