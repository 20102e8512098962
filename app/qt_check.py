"""Can Qt start here? The system libraries Qt's xcb platform plugin needs, named with the
Debian/Ubuntu packages that provide them.

Qt aborts the process (qFatal: 'Could not load the Qt platform plugin "xcb"') when a library
of its platform plugin is missing, and names neither the library nor the package. So this
looks before Qt starts: `ldd` of the plugin (and of Qt's xcb library) lists what the loader
cannot find, and libxcb-cursor, which Qt >= 6.5 opens at run time, is tried directly.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# soname -> Debian/Ubuntu package (Qt's "X11 requirements" list, as the packages name them)
PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}
RUNTIME_OPENED = ("libxcb-cursor.so.0",)  # dlopen()ed by Qt >= 6.5, not linked


@dataclass(frozen=True)
class QtCheck:
    platform: str
    missing: tuple[str, ...]  # sonames
    problem: str  # "" when Qt can start

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def install_line(self) -> str:
        packages = sorted({PACKAGES.get(so, so) for so in self.missing})
        return f"sudo apt-get install {' '.join(packages)}" if packages else ""


def not_found(ldd_output: str) -> list[str]:
    """The sonames `ldd` reports as 'not found'."""
    return [line.split("=>")[0].strip() for line in ldd_output.splitlines()
            if "not found" in line]


def _qt_dir() -> Path:
    import PySide6

    return Path(PySide6.__file__).resolve().parent / "Qt"


def missing_xcb_libraries(qt_dir: Path | None = None) -> list[str]:
    """The libraries Qt's xcb plugin needs that the loader cannot find here."""
    qt_dir = qt_dir or _qt_dir()
    files = [qt_dir / "plugins" / "platforms" / "libqxcb.so", *sorted(
        (qt_dir / "lib").glob("libQt6XcbQpa.so*"))[:1]]
    missing: list[str] = []
    ldd = shutil.which("ldd")
    for f in files:
        if ldd and f.exists():
            out = subprocess.run([ldd, str(f)], capture_output=True, text=True, check=False)
            missing += not_found(out.stdout)
    for so in RUNTIME_OPENED:
        try:
            ctypes.CDLL(so)
        except OSError:
            missing.append(so)
    return list(dict.fromkeys(missing))


def check_qt(environ: dict[str, str] | None = None, qt_dir: Path | None = None) -> QtCheck:
    """Whether the GUI can start with the environment's platform, and what is missing."""
    env = os.environ if environ is None else environ
    platform = env.get("QT_QPA_PLATFORM", "").split(":")[0]
    if not platform:
        platform = "wayland" if env.get("WAYLAND_DISPLAY") else "xcb"
    if platform != "xcb" or not sys.platform.startswith("linux"):
        return QtCheck(platform, (), "")
    missing = tuple(missing_xcb_libraries(qt_dir))
    if missing:
        packages = sorted({PACKAGES.get(so, so) for so in missing})
        return QtCheck(platform, missing, (
            "Qt cannot start its xcb platform plugin: missing " + ", ".join(missing)
            + f". Install them with: sudo apt-get install {' '.join(packages)}"))
    if not env.get("DISPLAY"):
        return QtCheck(platform, (), "no X display: set DISPLAY (or run with "
                                     "QT_QPA_PLATFORM=offscreen for screenshots)")
    return QtCheck(platform, (), "")
