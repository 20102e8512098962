"""Persistent GUI settings (QSettings in an INI file).

The file is ``$PLUMELINK_GUI_SETTINGS`` when set (tests point it to a temporary file), else the
platform's per-user location for organisation "plumelink", application "gui".
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

ENV = "PLUMELINK_GUI_SETTINGS"


def open_settings(path: str | os.PathLike[str] | None = None) -> QSettings:
    """The GUI's settings store: ``path``, else $PLUMELINK_GUI_SETTINGS, else the user's."""
    path = path or os.environ.get(ENV)
    if path:
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "plumelink", "gui")


def text(settings: QSettings, key: str, default: str = "") -> str:
    value = settings.value(key, default)
    return default if value is None else str(value)
