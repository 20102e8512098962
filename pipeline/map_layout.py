"""Names, NeXus classes and errors of the plumelink HDF5 map file.

The writer and the reader both take every path from here, so the layout is defined once.
See DESIGN.md, "The HDF5 map file".
"""

from __future__ import annotations

from os import PathLike

FORMAT_VERSION = 1
"""Bumped whenever a reader of the previous version would misread a new file."""

FORMAT_ATTR = "plumelink_format"

ENTRY = "map"
INSTRUMENT = f"{ENTRY}/instrument"
RASTER = f"{ENTRY}/raster"
EMISSIVITY = f"{ENTRY}/emissivity"
TRUTH = f"{ENTRY}/truth"
SYSTEMS = ("primary", "secondary")


def system_path(system: str) -> str:
    """Path of one spectrometer's NXdetector group."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {SYSTEMS}")
    return f"{ENTRY}/{system}"


SPECTRA = "spectra"


def cube_path(system: str) -> str:
    """Path of a system's NXdata: its spectra as a cube on the y, x and wavelength axes."""
    system_path(system)
    return f"{ENTRY}/{system}_{SPECTRA}"


# NeXus base classes of the groups.
NX_ROOT = "NXroot"
NX_ENTRY = "NXentry"
NX_INSTRUMENT = "NXinstrument"
NX_DETECTOR = "NXdetector"
NX_DATA = "NXdata"
NX_COLLECTION = "NXcollection"

# Scan status, stored in /map/status.
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_INTERRUPTED = "interrupted"
STATUSES = (STATUS_RUNNING, STATUS_COMPLETE, STATUS_INTERRUPTED)

# Byte lengths of the fixed-length text datasets that change while the file is open for SWMR
# writing (their size cannot change then, and attributes cannot be written at all).
STATUS_LEN = 16
TIME_LEN = 40
REASON_LEN = 2048

# Datasets of /map that hold a scan's fixed text metadata (written once, before SWMR starts).
TEXT_FIELDS = ("sample", "operator", "scan_config", "software_version")

# Per-spot datasets of each NXdetector group: name -> (dtype, fill value).
DETECTOR_SPOT_FIELDS = {
    "valid": ("bool", False),
    "frame_id": ("int64", -1),
    "timestamp": ("float64", float("nan")),
}

# Per-spot datasets of /map/raster.
RASTER_SPOT_FIELDS = {
    "x_measured": ("float64", float("nan")),
    "y_measured": ("float64", float("nan")),
    "shot_id": ("int64", -1),
}

MINERAL_FILL = -1
ORDER_ATTR = "order"

# Vertical raster orders shoot one column at fixed x per raster line. Their maps keep the
# (ny, nx) layout (rows chunked as for every map) and add /map/columns_done, the per-column
# completion flags a resume needs; /map/lines_done (per row) is set once every column is done.
COLUMNS_DONE = "columns_done"


class MapFileError(Exception):
    """Base of every problem with a plumelink map file."""


class ForeignFileError(MapFileError):
    """The file is HDF5 but was not written by plumelink."""


class FormatVersionError(MapFileError):
    """The file uses a map format this plumelink cannot read."""


class CorruptMapError(MapFileError):
    """The file is truncated, damaged or not HDF5 at all."""


class MapBusyError(MapFileError):
    """Another program holds the file locked for writing (not in SWMR mode)."""


class MissingFilterError(MapFileError):
    """The spectra are compressed with a filter (an HDF5 plugin) this process lacks."""


class MapShapeError(MapFileError, ValueError):
    """A raster line does not fit the map it is written to."""


def describe(path: str | PathLike[str]) -> str:
    """Quote a path the same way in every message."""
    return f"'{path}'"
