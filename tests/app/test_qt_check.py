"""`plumelink gui --check` / `make gui`: the Qt system libraries named before Qt aborts."""

from __future__ import annotations

import ctypes
import sys

import pytest

from plumelink.app import qt_check
from plumelink.app.cli import main

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxcb-icccm.so.4 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f)
\tlibxcb-keysyms.so.1 => not found
"""


def test_ldd_not_found_lines_are_the_missing_libraries() -> None:
    assert qt_check.not_found(LDD) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="xcb is Linux's")
def test_what_the_check_calls_missing_really_cannot_be_loaded() -> None:
    missing = qt_check.missing_xcb_libraries()
    for so in missing:
        with pytest.raises(OSError):
            ctypes.CDLL(so)
    result = qt_check.check_qt({"DISPLAY": ":0"})
    assert result.ok == (not missing)
    for so in missing:
        assert so in result.problem and qt_check.PACKAGES[so] in result.install_line


def test_offscreen_needs_no_x_libraries() -> None:
    assert qt_check.check_qt({"QT_QPA_PLATFORM": "offscreen"}).ok


def test_gui_names_the_packages_to_install_and_does_not_start_qt(monkeypatch, capsys) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(qt_check, "missing_xcb_libraries",
                        lambda qt_dir=None: ["libxcb-icccm.so.4", "libxcb-cursor.so.0"])
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["gui"]) == 3
    err = capsys.readouterr().err
    assert "sudo apt-get install libxcb-cursor0 libxcb-icccm4" in err
    assert "libxcb-icccm.so.4" in err


def test_no_display_is_said_in_words(monkeypatch) -> None:
    monkeypatch.setattr(qt_check, "missing_xcb_libraries", lambda qt_dir=None: [])
    monkeypatch.setattr(sys, "platform", "linux")
    result = qt_check.check_qt({})
    assert not result.ok and "DISPLAY" in result.problem
