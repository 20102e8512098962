"""Write a raster map to HDF5 one line at a time, readable by other processes while it grows.

Every dataset is created at full map size before the first line, then the file switches to
SWMR writing (single writer, multiple readers): from then on only raw data change, so a reader
in another process (plumelink, silx, h5web) can follow the scan, and a crash loses at most the
line in flight. Each line is committed in two flushes: its data first, then its flag in
/map/lines_done, so a set flag always means the whole line is on disk.

Maps of a vertical raster order (a raster line is a column at fixed x) keep the same (ny, nx)
layout, so every reader reads them the same way; `append_column` writes one column and flags it
in /map/columns_done, and the row flags follow once every column is there. Their spectra are
chunked one spot per chunk (each compressed chunk is then written once, never regrown).

Spectra are deflated by default (readable by every HDF5, see map_filters): the chunks of a
line are compressed on worker threads while the line's small datasets are written, then
handed to HDF5 whole with direct chunk writes, so compression does not slow the writer down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from . import map_layout as L
from .map_filters import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    SpectraFilter,
    missing_filter_message,
    missing_filters,
    spectra_filter,
)
from .raster import VERTICAL_ORDERS
from .raster_line import RasterLine

log = logging.getLogger(__name__)

__all__ = ["COMPRESSIONS", "DEFAULT_COMPRESSION", "MapWriter", "repair_swmr_mark",
           "write_settings"]

SPECTRA_DTYPES = ("uint16", "float32")
_ENCODERS = max(2, min(4, os.cpu_count() or 1))
"""Worker threads that compress chunks: one per system's line at least."""


def _fixed_bytes(text: str, length: int) -> bytes:
    """UTF-8 bytes of text cut to length without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= length:
        return raw
    return raw[:length].decode("utf-8", errors="ignore").encode("utf-8")


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _installed_version() -> str:
    try:
        return metadata.version("plumelink")
    except metadata.PackageNotFoundError:
        return ""


def _attr_value(value: Any, where: str) -> Any:
    """Convert one setting to something h5py stores as an attribute and reads back the same."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return h5py.Empty("f")
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray) or (
        isinstance(value, Sequence) and not isinstance(value, bytes | bytearray)
    ):
        return _attr_array(value, where)
    raise ValueError(
        f"setting {where} has unsupported type {type(value).__name__}; "
        "use a number, bool, string, None, list or dict"
    )


def _attr_array(value: Any, where: str) -> np.ndarray:
    """A list (possibly nested, not ragged) of one kind of value as an array attribute."""
    items = np.asarray(value, dtype=object)
    flat = list(items.ravel())
    if any(isinstance(v, list | tuple | np.ndarray) for v in flat):
        raise ValueError(f"setting {where} is a ragged list: {value!r}")
    if not flat:
        return np.zeros(items.shape)
    if all(isinstance(v, str) for v in flat):
        return np.array(items.tolist(), dtype=h5py.string_dtype())
    if all(isinstance(v, bool | np.bool_) for v in flat):
        return np.array(items.tolist(), dtype=bool)
    if all(isinstance(v, int | float | np.integer | np.floating) for v in flat) and not any(
        isinstance(v, bool | np.bool_) for v in flat
    ):
        return np.array(items.tolist())
    raise ValueError(
        f"setting {where} must be a list of numbers, of booleans or of strings, got {value!r}"
    )


def write_settings(group: h5py.Group, settings: Mapping[str, Any], where: str = "settings") -> None:
    """Store a nested dict as groups (dicts) and attributes (values), in insertion order."""
    for key, value in settings.items():
        if not isinstance(key, str) or not key or "/" in key or key in (".", "NX_class"):
            raise ValueError(f"setting name {key!r} in {where} is not allowed")
        if isinstance(value, Mapping):
            child = group.create_group(key, track_order=True)
            child.attrs["NX_class"] = L.NX_COLLECTION
            write_settings(child, value, f"{where}.{key}")
        else:
            try:
                group.attrs[key] = _attr_value(value, f"{where}.{key}")
            except (OverflowError, TypeError) as exc:
                raise ValueError(f"setting {where}.{key} cannot be stored: {exc}") from exc


@dataclass(frozen=True)
class _SystemHandles:
    spectra: h5py.Dataset
    valid: h5py.Dataset
    frame_id: h5py.Dataset
    timestamp: h5py.Dataset
    emissivity: h5py.Dataset


@dataclass(frozen=True)
class _Handles:
    """Every dataset a line write touches, opened once per file."""

    lines_done: h5py.Dataset
    status: h5py.Dataset
    status_reason: h5py.Dataset
    end_time: h5py.Dataset
    x: h5py.Dataset
    y: h5py.Dataset
    x_measured: h5py.Dataset
    y_measured: h5py.Dataset
    shot_id: h5py.Dataset
    systems: dict[str, _SystemHandles]
    mineral: h5py.Dataset | None
    composition: h5py.Dataset | None
    columns_done: h5py.Dataset | None = None  # vertical raster orders only

    @classmethod
    def open(cls, file: h5py.File) -> _Handles:
        entry, raster = file[L.ENTRY], file[L.RASTER]
        emissivity = file[L.EMISSIVITY]
        systems = {}
        for name in L.SYSTEMS:
            group = file[L.system_path(name)]
            systems[name] = _SystemHandles(
                spectra=group["spectra"],
                valid=group["valid"],
                frame_id=group["frame_id"],
                timestamp=group["timestamp"],
                emissivity=emissivity[name],
            )
        truth = file.get(L.TRUTH)
        return cls(
            lines_done=entry["lines_done"],
            status=entry["status"],
            status_reason=entry["status_reason"],
            end_time=entry["end_time"],
            x=raster["x"],
            y=raster["y"],
            x_measured=raster["x_measured"],
            y_measured=raster["y_measured"],
            shot_id=raster["shot_id"],
            systems=systems,
            mineral=None if truth is None else truth["mineral"],
            composition=None if truth is None else truth["composition"],
            columns_done=entry.get(L.COLUMNS_DONE),
        )


RowWriter = Callable[[int, Any], None]


def _row_writer(dataset: h5py.Dataset) -> RowWriter:
    """write(iy, values): row iy of a spot dataset (ny, nx, ...). A dataset chunked one row
    per chunk, with no filter and a plain numeric type, gets the row's bytes as one direct
    chunk write (about 15 us; h5py's indexing, with its selections and type conversion, took
    about 250 us, and a line writes a dozen rows); any other dataset h5py's indexing."""
    plain = (dataset.chunks == (1, *dataset.shape[1:]) and dataset.dtype.kind in "biuf"
             and dataset.id.get_create_plist().get_nfilters() == 0)
    if not plain:
        def write(iy: int, values: Any) -> None:
            dataset[iy] = values
        return write
    row_shape, dtype, zeros = dataset.shape[1:], dataset.dtype, (0,) * (dataset.ndim - 1)
    dsid = dataset.id

    def write_direct(iy: int, values: Any) -> None:
        row = np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype), row_shape))
        dsid.write_direct_chunk((iy, *zeros), row)
    return write_direct


def _axis(values: Any, name: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if length is not None and array.size != length:
        raise ValueError(f"{name} must have {length} values, got {array.size}")
    return array


def _text(group: h5py.Group, name: str, value: str, length: int | None = None) -> h5py.Dataset:
    """Scalar text dataset: fixed length when it must change under SWMR, else UTF-8 vlen."""
    if length is None:
        return group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    data = np.bytes_(_fixed_bytes(value, length))
    return group.create_dataset(name, data=data, dtype=f"S{length}")


def _spot_dataset(
    group: h5py.Group, name: str, ny: int, nx: int, dtype: str, fill: Any, **kwargs: Any
) -> h5py.Dataset:
    """(ny, nx) dataset chunked one raster line per chunk."""
    return group.create_dataset(
        name, shape=(ny, nx), dtype=dtype, chunks=(1, nx), fillvalue=fill, **kwargs
    )


def _nx(group: h5py.Group, nx_class: str, **attrs: Any) -> h5py.Group:
    group.attrs["NX_class"] = nx_class
    for key, value in attrs.items():
        group.attrs[key] = value
    return group


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype())


_SWMR_MARK = "already open for write"
_LOCKED_MARK = "unable to lock file"


def repair_swmr_mark(path: str | os.PathLike[str]) -> None:
    """Clear the mark a killed SWMR writer left, by copying the map into a fresh file.

    HDF5's own tool for this (``h5clear -s``) is not part of h5py. Objects are copied with
    H5Ocopy (chunks copied as stored), into a temporary file in the same folder that then
    replaces the original atomically, so a failure part way leaves the original untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.repair")
    try:
        with h5py.File(path, "r", swmr=True) as src, h5py.File(
            tmp, "w", libver="latest", track_order=True
        ) as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for key in src:
                src.copy(src[key], dst, name=key)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.warning("map %s: cleared the mark of a writer that did not close it (copied)", path)


def _check_resumable(path: Path) -> None:
    """Refuse what is not a plumelink map of this format, or is complete, before the file is
    opened for writing (HDF5 writes a superblock into an empty file opened for writing)."""
    if not h5py.is_hdf5(path):
        raise L.CorruptMapError(
            f"cannot resume {L.describe(path)}: it is not an HDF5 file (no HDF5 signature "
            f"found); nothing was changed")
    try:
        file = h5py.File(path, "r")
    except OSError:
        try:
            file = h5py.File(path, "r", swmr=True)  # a writer's mark: checked below
        except OSError:
            return  # locked or damaged: the open for writing says which
    with file:
        if L.FORMAT_ATTR not in file.attrs:
            raise L.ForeignFileError(
                f"cannot resume {L.describe(path)}: it is an HDF5 file but not a plumelink "
                f"map; nothing was changed")


# The device event log: one row per device fault, reconnect and retry of the scan (written
# by the acquisition runner), so a map says how hard it was to record. Created with the map
# (SWMR forbids new objects later), grown one row per event.
DEVICE_LOG = f"{L.ENTRY}/log/device_events"
DEVICE_EVENT_DTYPE = np.dtype([("time", "S32"), ("device", "S64"), ("event", "S16"),
                               ("line", "<i8"), ("attempt", "<i8"), ("message", "S512")])
DEVICE_EVENTS = ("fault", "reconnect", "reconnect_failed", "retry", "gave_up")


def _create_device_log(file: h5py.File) -> None:
    group = file.require_group(f"{L.ENTRY}/log")
    group.attrs["NX_class"] = L.NX_COLLECTION
    log_ds = group.create_dataset("device_events", shape=(0,), maxshape=(None,), chunks=(64,),
                                  dtype=DEVICE_EVENT_DTYPE)
    log_ds.attrs["description"] = (
        "device faults during the scan and what the acquisition did about them: fault, "
        "reconnect, reconnect_failed, retry (the raster line shot again), gave_up (the "
        "scan ended); line = raster line index, attempt = try of that line (1: first retry)")


def read_device_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a map's device event log, oldest first ([] for a map without one)."""
    try:  # a map being written is read as an SWMR reader; a closed one either way
        file = h5py.File(path, "r", swmr=True)
    except OSError:
        file = h5py.File(path, "r")
    with file:
        if DEVICE_LOG not in file:
            return []
        rows = file[DEVICE_LOG][()]
    return [{"time": r["time"].decode(), "device": r["device"].decode(),
             "event": r["event"].decode(), "line": int(r["line"]),
             "attempt": int(r["attempt"]), "message": r["message"].decode("utf-8", "replace")}
            for r in rows]


class MapWriter:
    """Appends raster lines to one map file; create it with MapWriter.create()."""

    def __init__(self, path: Path, file: h5py.File) -> None:
        """Take over an open file in SWMR write mode (use create(), or later resume())."""
        self._path = path
        self._file = file
        self._h = _Handles.open(file)
        self._x = self._h.x[()]
        self._y = self._h.y[()]
        self._n_px = {name: h.spectra.shape[2] for name, h in self._h.systems.items()}
        self._spectra_dtype = {name: h.spectra.dtype for name, h in self._h.systems.items()}
        self._filter = {name: _stored_filter(h.spectra) for name, h in self._h.systems.items()}
        for h in self._h.systems.values():
            missing = missing_filters(h.spectra)
            if missing:
                raise L.MissingFilterError(
                    f"cannot write map file {L.describe(path)}: "
                    + missing_filter_message(h.spectra, missing))
        self._encoders = (ThreadPoolExecutor(_ENCODERS, thread_name_prefix="plumelink-deflate")
                          if any(f.direct and f.name is not None for f in self._filter.values())
                          else None)
        h = self._h
        spot = {"x_measured": h.x_measured, "y_measured": h.y_measured, "shot_id": h.shot_id,
                **{f"{name}/{field}": getattr(system, field) for name, system in h.systems.items()
                   for field in ("valid", "frame_id", "timestamp", "emissivity")},
                **({"mineral": h.mineral, "composition": h.composition}
                   if h.mineral is not None and h.composition is not None else {})}
        #: row writers of the spot datasets (append_line)
        self._rows: dict[str, RowWriter] = {k: _row_writer(d) for k, d in spot.items()}
        self._device_log = file.get(DEVICE_LOG)
        self._done = self._h.lines_done[()].astype(bool)
        columns = self._h.columns_done
        self._columns_done = None if columns is None else columns[()].astype(bool)
        self._closed = False

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        ny: int,
        nx: int,
        primary_wavelength_nm: Any,
        secondary_wavelength_nm: Any,
        x_um: Any,
        y_um: Any,
        sample: str = "",
        operator: str = "",
        scan_config_toml: str = "",
        raster_order: str = "snake-horizontal",
        settings: Mapping[str, Any] | None = None,
        compression: str | None = DEFAULT_COMPRESSION,
        truth_elements: Sequence[str] | None = None,
        mineral_names: Sequence[str] | None = None,
        software_version: str = "",
        overwrite: bool = False,
        spectra_dtype: str = "uint16",
        system_storage: Mapping[str, tuple[str, str | None]] | None = None,
        by_rows: bool = False,
    ) -> MapWriter:
        """Create the whole file layout, start SWMR writing and return the writer.

        system_storage: (spectra_dtype, compression) of a system that differs from the
        others (a transferred map keeps its input's secondary spectra as they were stored).
        by_rows: written row by row (`append_line`) whatever raster_order says: a map made
        from another (a transfer of a vertical raster) keeps its acquisition order as a record
        while its lines are rows; by default a vertical order is written by columns.
        Nothing is left behind if the layout cannot be built (bad settings, for instance).
        """
        path = Path(path)
        if isinstance(ny, bool) or isinstance(nx, bool) or int(ny) < 1 or int(nx) < 1:
            raise ValueError(f"map shape must be at least 1 x 1, got ny={ny}, nx={nx}")
        ny, nx = int(ny), int(nx)
        wavelengths = {
            "primary": _axis(primary_wavelength_nm, "primary_wavelength_nm"),
            "secondary": _axis(secondary_wavelength_nm, "secondary_wavelength_nm"),
        }
        x = _axis(x_um, "x_um", nx)
        y = _axis(y_um, "y_um", ny)
        storage = {name: (spectra_dtype, compression) for name in L.SYSTEMS}
        for name, value in (system_storage or {}).items():
            if name not in storage:
                raise ValueError(f"system_storage names {name!r}; the systems are {L.SYSTEMS}")
            storage[name] = value
        for dtype, _ in storage.values():
            if dtype not in SPECTRA_DTYPES:
                raise ValueError(
                    f"spectra_dtype must be one of {SPECTRA_DTYPES} (raw counts, or float32 "
                    f"for imported data that are not whole counts), got {dtype!r}"
                )
        filters = {name: (dtype, spectra_filter(c)) for name, (dtype, c) in storage.items()}
        if truth_elements is not None and len(truth_elements) == 0:
            raise ValueError("truth_elements must name at least one element, or be None")
        if path.exists() and not overwrite:
            raise FileExistsError(f"map file {L.describe(path)} already exists; not overwriting")
        try:
            file = h5py.File(path, "w", libver="latest", track_order=True)
        except OSError as exc:
            kind = L.MapBusyError if "lock" in str(exc) else L.MapFileError
            raise kind(f"cannot create map file {L.describe(path)}: {exc}") from exc
        try:
            _build_layout(
                file,
                ny=ny,
                nx=nx,
                wavelengths=wavelengths,
                x=x,
                y=y,
                texts={
                    "sample": sample,
                    "operator": operator,
                    "scan_config": scan_config_toml,
                    "software_version": software_version or _installed_version(),
                },
                raster_order=raster_order,
                by_columns=raster_order in VERTICAL_ORDERS and not by_rows,
                settings=settings or {},
                storage=filters,
                truth_elements=truth_elements,
                mineral_names=mineral_names,
            )
            file.swmr_mode = True
            writer = cls(path, file)
        except BaseException:
            file.close()
            path.unlink(missing_ok=True)
            raise
        log.info(
            "created map %s: %d x %d spots, primary %d px, secondary %d px, compression %s",
            path, ny, nx, wavelengths["primary"].size, wavelengths["secondary"].size, compression,
        )
        return writer

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> MapWriter:
        """Reopen an interrupted map to write its unfinished lines (status back to running).

        A writer killed without closing leaves the file marked as open by an SWMR writer, and
        HDF5 then refuses to open it for writing. The file is then repaired first: every object
        is copied into a fresh file next to it (raw chunks, so lines already written stay
        bit-identical) and the copy atomically replaces the original. A complete map is
        refused: there is nothing to resume.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"cannot resume {L.describe(path)}: no such map file")
        _check_resumable(path)  # read-only first: nothing changes in a file that is refused
        try:
            file = h5py.File(path, "r+", libver="latest")
        except OSError as exc:
            if _LOCKED_MARK in str(exc) and _SWMR_MARK not in str(exc):
                raise L.MapBusyError(
                    f"cannot resume {L.describe(path)}: another program is writing it ({exc})"
                ) from exc
            if _SWMR_MARK not in str(exc):
                raise L.CorruptMapError(
                    f"cannot resume {L.describe(path)}: it cannot be opened for writing; it "
                    f"may be truncated or damaged ({exc})"
                ) from exc
            repair_swmr_mark(path)
            file = h5py.File(path, "r+", libver="latest")
        try:
            if L.FORMAT_ATTR not in file.attrs:
                raise L.ForeignFileError(f"{L.describe(path)} is not a plumelink map file")
            version = int(file.attrs[L.FORMAT_ATTR])
            if version != L.FORMAT_VERSION:
                raise L.FormatVersionError(
                    f"{L.describe(path)} uses map format {version}; this plumelink writes "
                    f"format {L.FORMAT_VERSION} and cannot resume it"
                )
            entry = file[L.ENTRY]
            done = entry["lines_done"][()].astype(bool)
            if L.COLUMNS_DONE in entry:  # a vertical raster: its raster lines are columns
                done = entry[L.COLUMNS_DONE][()].astype(bool)
                if done.all():  # killed between the last column's flag and the rows' flags
                    entry["lines_done"][:] = 1
            status = bytes(entry["status"][()]).rstrip(b"\0").decode("ascii", "replace")
            if done.all() and status == L.STATUS_COMPLETE:
                raise L.MapFileError(
                    f"cannot resume {L.describe(path)}: it is complete, all {done.size} lines "
                    f"are written"
                )
            entry = file[L.ENTRY]
            entry["status"][()] = np.bytes_(_fixed_bytes(L.STATUS_RUNNING, L.STATUS_LEN))
            entry["status_reason"][()] = np.bytes_(b"")
            entry["end_time"][()] = np.bytes_(b"")
            if DEVICE_LOG not in file:  # a map written before the log existed
                _create_device_log(file)
            file.flush()
            file.swmr_mode = True
            writer = cls(path, file)
        except BaseException:
            file.close()
            raise
        log.info("resuming map %s: %d of %d lines already written", path, int(done.sum()),
                 done.size)
        return writer

    @property
    def path(self) -> Path:
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        return (self._y.size, self._x.size)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lines_done(self) -> np.ndarray:
        """Copy of the per-row completion flags (bool, (ny,))."""
        return self._done.copy()

    @property
    def vertical(self) -> bool:
        """True for a map whose raster lines are columns (vertical orders, `append_column`)."""
        return self._columns_done is not None

    def next_ids(self) -> tuple[int, dict[str, int]]:
        """One past the largest shot id and each system's largest frame id in the map (0 for
        an empty one): where a resumed scan's ids go on, so ids stay unique within a map."""
        def after(dataset: h5py.Dataset) -> int:
            ids = dataset[()]
            return int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0

        h = self._h
        return after(h.shot_id), {s: after(h.systems[s].frame_id) for s in L.SYSTEMS}

    @property
    def raster_lines_done(self) -> np.ndarray:
        """Copy of the completion flags of the raster lines: the columns (nx,) of a vertical
        map, else the rows (ny,)."""
        if self._columns_done is not None:
            return self._columns_done.copy()
        return self._done.copy()

    def append_line(self, line: RasterLine, stored: Mapping[str, bytes] | None = None) -> None:
        """Write row line.index of every dataset and commit it to disk.

        stored: a system's line chunk already encoded with that system's filter and dtype here
        (a chunk read as stored from a map of the same layout), written as it is; the line
        still carries the decoded spectra, which are checked but not encoded again."""
        if self._closed:
            raise L.MapFileError(f"map file {L.describe(self._path)} is closed; cannot append")
        if not isinstance(line, RasterLine):
            raise TypeError(f"append_line expects a RasterLine, got {type(line).__name__}")
        if self._columns_done is not None:
            raise L.MapFileError(
                f"map file {L.describe(self._path)} holds a vertical raster: its raster lines "
                "are columns (append_column), not rows")
        self._check_fits(line)
        iy, h = line.index, self._h
        chunks = {name: [((iy, 0, 0), stored[name])] if stored and name in stored
                  else self._encode(name, [((iy, 0, 0), system.spectra)])
                  for name, system in (("primary", line.primary), ("secondary", line.secondary))}
        rows = self._rows
        rows["x_measured"](iy, line.x_measured_um)
        rows["y_measured"](iy, line.y_measured_um)
        rows["shot_id"](iy, line.shot_id)
        for name, system in (("primary", line.primary), ("secondary", line.secondary)):
            self._store(h.systems[name].spectra, chunks[name], iy, system.spectra)
            rows[f"{name}/valid"](iy, system.valid)
            rows[f"{name}/frame_id"](iy, system.frame_id)
            rows[f"{name}/timestamp"](iy, system.timestamp_s)
            rows[f"{name}/emissivity"](iy, system.emissivity)
        if line.truth is not None and "mineral" in rows:
            rows["mineral"](iy, line.truth.mineral)
            rows["composition"](iy, line.truth.composition)
        self._flush()
        # Flag only after the data are on disk: a set flag means the whole line is there.
        self._mark_done(iy)
        log.debug("map %s: line %d written", self._path, iy)

    def append_column(self, line: RasterLine) -> None:
        """Write column ``line.index`` (ix) of a vertical map and commit it to disk.

        ``line`` holds ny spots in increasing y (``x_um`` all equal to the column's x). The
        column's flag in /map/columns_done is set after its data are flushed; the per-row
        flags of /map/lines_done are set once the last column is on disk, so a set row flag
        keeps meaning "the whole row is there" for every reader.
        """
        if self._closed:
            raise L.MapFileError(f"map file {L.describe(self._path)} is closed; cannot append")
        if not isinstance(line, RasterLine):
            raise TypeError(f"append_column expects a RasterLine, got {type(line).__name__}")
        if self._columns_done is None:
            raise L.MapFileError(
                f"map file {L.describe(self._path)} was created for a horizontal raster order; "
                "its raster lines are rows (append_line), not columns")
        self._check_column_fits(line)
        ix, h = line.index, self._h
        chunks = {name: self._encode(name, [((iy, ix, 0), system.spectra[iy:iy + 1])
                                            for iy in range(line.nx)])
                  for name, system in (("primary", line.primary), ("secondary", line.secondary))}
        h.x_measured[:, ix] = line.x_measured_um
        h.y_measured[:, ix] = line.y_measured_um
        h.shot_id[:, ix] = line.shot_id
        for name, system in (("primary", line.primary), ("secondary", line.secondary)):
            d = h.systems[name]
            self._store(d.spectra, chunks[name], np.s_[:, ix], system.spectra)
            d.valid[:, ix] = system.valid
            d.frame_id[:, ix] = system.frame_id
            d.timestamp[:, ix] = system.timestamp_s
            d.emissivity[:, ix] = system.emissivity
        if line.truth is not None and h.mineral is not None and h.composition is not None:
            h.mineral[:, ix] = line.truth.mineral
            h.composition[:, ix] = line.truth.composition
        self._flush()
        assert h.columns_done is not None
        h.columns_done[ix] = 1
        h.columns_done.flush()
        self._columns_done[ix] = True
        if self._columns_done.all():
            h.lines_done[:] = 1
            h.lines_done.flush()
            self._done[:] = True
        log.debug("map %s: column %d written", self._path, ix)

    def log_device_event(self, device: str, event: str, line: int, attempt: int,
                         message: str = "") -> None:
        """Append one row to the device event log and flush it (readers see it at once)."""
        if event not in DEVICE_EVENTS:
            raise ValueError(f"device event must be one of {DEVICE_EVENTS}, got {event!r}")
        if self._device_log is None:
            raise L.MapFileError(f"map file {L.describe(self._path)} has no device event log")
        row = np.zeros((), DEVICE_EVENT_DTYPE)
        row["time"] = _fixed_bytes(_now(), 32)
        row["device"] = _fixed_bytes(device, 64)
        row["event"] = _fixed_bytes(event, 16)
        row["line"], row["attempt"] = line, attempt
        row["message"] = _fixed_bytes(message, 512)
        n = self._device_log.shape[0]
        self._device_log.resize((n + 1,))
        self._device_log[n] = row
        self._device_log.flush()

    def release_written_pages(self) -> None:
        """Start writing this file's dirty pages to disk, and drop from the page cache those
        already written (posix_fadvise DONTNEED; nothing where the OS or the HDF5 driver
        offers no file descriptor). The data are untouched: HDF5 and other readers read
        them back from disk.

        Why: a writer of gigabytes it will not read again (a whole-map transfer writes 5 GB)
        otherwise grows the page cache by as much, evicting other files' pages; and growing
        it costs CPU: on the 2-core development VM, where fresh memory costs ~3 ms/MB,
        writing 3 GB took 9.9 s of system time against 1.4 s with the pages released every
        64 MB, and a 250,000-spectrum transfer's writing thread 12.7 s of CPU against 4.3 s
        with them released after each group of lines."""
        if self._closed or not hasattr(os, "posix_fadvise") or self._file.driver != "sec2":
            return
        try:
            os.posix_fadvise(self._file.id.get_vfd_handle(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:  # advice only: the file is as written either way
            log.debug("map %s: page cache not released (%s)", self._path, exc)

    def close(self, status: str = L.STATUS_COMPLETE, reason: str = "") -> None:
        """Record the final status and end time, then close the file. Safe to call twice."""
        if status not in (L.STATUS_COMPLETE, L.STATUS_INTERRUPTED):
            raise ValueError(
                f"close status must be {L.STATUS_COMPLETE!r} or {L.STATUS_INTERRUPTED!r}, "
                f"got {status!r}"
            )
        if self._closed:
            return
        self._closed = True
        try:
            h = self._h
            h.status[()] = np.bytes_(_fixed_bytes(status, L.STATUS_LEN))
            h.status_reason[()] = np.bytes_(_fixed_bytes(reason, L.REASON_LEN))
            h.end_time[()] = np.bytes_(_fixed_bytes(_now(), L.TIME_LEN))
            self._flush()
        finally:
            if self._encoders is not None:
                self._encoders.shutdown(wait=True)
            self._file.close()
        log.info(
            "closed map %s: %s, %d of %d lines%s",
            self._path, status, int(self._done.sum()), self._done.size,
            f" ({reason})" if reason else "",
        )

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        text = str(exc)
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        try:
            self.close(L.STATUS_INTERRUPTED, reason)
        except Exception:  # the scan's own error matters more than this one
            log.exception("map %s: could not record the interruption", self._path)

    def _check_fits(self, line: RasterLine) -> None:
        ny, nx = self.shape
        where = f"map file {L.describe(self._path)}"
        if line.index >= ny:
            raise L.MapShapeError(
                f"line index {line.index} is outside {where}, which has rows 0..{ny - 1}"
            )
        if line.nx != nx:
            raise L.MapShapeError(f"line {line.index} has {line.nx} spots but {where} has {nx}")
        for name, system in (("primary", line.primary), ("secondary", line.secondary)):
            if system.spectra.dtype != self._spectra_dtype[name]:
                raise L.MapShapeError(
                    f"line {line.index}: {name} spectra are {system.spectra.dtype} but {where} "
                    f"stores {self._spectra_dtype[name]}"
                )
            if system.n_px != self._n_px[name]:
                raise L.MapShapeError(
                    f"line {line.index}: {name} spectra have {system.n_px} pixels but the "
                    f"{name} wavelength axis of {where} has {self._n_px[name]}"
                )
        if line.truth is not None:
            composition = self._h.composition
            if composition is None:
                raise L.MapShapeError(
                    f"line {line.index} carries ground truth but {where} was created "
                    "without truth_elements"
                )
            if line.truth.n_elements != composition.shape[2]:
                raise L.MapShapeError(
                    f"line {line.index}: truth has {line.truth.n_elements} elements but "
                    f"{where} has {composition.shape[2]}"
                )
        tol = {"rtol": 1e-9, "atol": 1e-3}
        if not (
            np.allclose(line.x_um, self._x, **tol)
            and np.allclose(line.y_um, self._y[line.index], **tol)
        ):
            raise L.MapShapeError(
                f"line {line.index}: setpoints do not match the axes of {where} "
                f"(expected y = {self._y[line.index]} µm and x from {self._x[0]} to "
                f"{self._x[-1]} µm)"
            )
        if self._done[line.index]:
            raise L.MapFileError(
                f"line {line.index} of {where} is already written; lines are written once"
            )

    def _check_column_fits(self, line: RasterLine) -> None:
        ny, nx = self.shape
        where = f"map file {L.describe(self._path)}"
        if line.index >= nx:
            raise L.MapShapeError(
                f"column index {line.index} is outside {where}, which has columns 0..{nx - 1}")
        if line.nx != ny:
            raise L.MapShapeError(f"column {line.index} has {line.nx} spots but {where} has "
                                  f"{ny} rows")
        for name, system in (("primary", line.primary), ("secondary", line.secondary)):
            if system.spectra.dtype != self._spectra_dtype[name] or system.n_px != self._n_px[name]:
                raise L.MapShapeError(
                    f"column {line.index}: {name} spectra are {system.spectra.dtype} with "
                    f"{system.n_px} pixels but {where} stores {self._spectra_dtype[name]} with "
                    f"{self._n_px[name]}")
        if line.truth is not None and (
                self._h.composition is None
                or line.truth.n_elements != self._h.composition.shape[2]):
            raise L.MapShapeError(f"column {line.index}: its ground truth does not fit {where}")
        tol = {"rtol": 1e-9, "atol": 1e-3}
        if not (np.allclose(line.y_um, self._y, **tol)
                and np.allclose(line.x_um, self._x[line.index], **tol)):
            raise L.MapShapeError(
                f"column {line.index}: setpoints do not match the axes of {where} (expected "
                f"x = {self._x[line.index]} µm and y from {self._y[0]} to {self._y[-1]} µm)")
        assert self._columns_done is not None
        if self._columns_done[line.index]:
            raise L.MapFileError(
                f"column {line.index} of {where} is already written; lines are written once")

    def _encode(self, system: str, chunks: list[tuple[tuple[int, int, int], np.ndarray]]
                ) -> list[tuple[tuple[int, int, int], Future[bytes] | np.ndarray | bytes]] | None:
        """Start compressing whole chunks (offset, block) on the worker threads; without a
        filter a chunk is its block's own bytes (no copy); None: HDF5's pipeline encodes."""
        f = self._filter[system]
        if not f.direct:
            return None
        if f.name is None:
            return [(offset, np.ascontiguousarray(block)) for offset, block in chunks]
        assert self._encoders is not None
        return [(offset, self._encoders.submit(f.encode, block)) for offset, block in chunks]

    @staticmethod
    def _store(dataset: h5py.Dataset,
               chunks: list[tuple[tuple[int, int, int], Future[bytes] | np.ndarray | bytes]] | None,
               where: Any, spectra: np.ndarray) -> None:
        """Write encoded chunks as they are, or let HDF5's filter pipeline encode the data."""
        if chunks is None:
            dataset[where] = spectra
            return
        for offset, encoded in chunks:
            data = encoded.result() if isinstance(encoded, Future) else encoded
            dataset.id.write_direct_chunk(offset, data)

    def _mark_done(self, iy: int) -> None:
        # The line's data are already flushed; flushing this one dataset publishes the flag
        # (to SWMR readers and the disk) without a second whole-file flush.
        self._h.lines_done[iy] = 1
        self._h.lines_done.flush()
        self._done[iy] = True

    def _flush(self) -> None:
        """H5Fflush writes every dataset's buffers and the metadata SWMR readers need."""
        self._file.flush()


def add_spectra_cubes(file: h5py.File) -> None:
    """An NXdata per system: its spectra on the y, x (µm) and wavelength (nm) axes.

    Every member is a hard link to the detector's or the raster's dataset (no copy), so a
    NeXus reader (silx, h5web, rosettasciio) shows a calibrated cube with a spectrum per spot.
    Groups already there are left alone (repack calls this on maps older than the cubes).
    """
    if L.RASTER not in file:
        return
    raster = file[L.RASTER]
    for system in L.SYSTEMS:
        path = L.cube_path(system)
        if path in file or f"{L.system_path(system)}/{L.SPECTRA}" not in file:
            continue
        detector = file[L.system_path(system)]
        spectra = detector[L.SPECTRA]
        cube = _nx(
            file.create_group(path, track_order=True), L.NX_DATA, signal=L.SPECTRA,
            axes=_strings(["y", "x", "wavelength"]), y_indices=np.int64(0),
            x_indices=np.int64(1), wavelength_indices=np.int64(2),
            title=f"{system} spectra",
        )
        cube[L.SPECTRA] = spectra
        cube["y"] = raster["y"]
        cube["x"] = raster["x"]
        cube["wavelength"] = detector["wavelength"]
        for dataset, name in ((spectra, f"{system} spectrum (counts)"),
                              (detector["wavelength"], "wavelength (nm)"),
                              (raster["x"], "x (µm)"), (raster["y"], "y (µm)")):
            dataset.attrs.setdefault("long_name", name)
            dataset.attrs.setdefault("target", dataset.name)  # NeXus: where the link points
        spectra.attrs.setdefault("interpretation", "spectrum")


def _stored_filter(spectra: h5py.Dataset) -> SpectraFilter:
    """The filter a map's spectra were created with (a resumed map keeps its own)."""
    plist = spectra.id.get_create_plist()
    ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if not ids:
        return spectra_filter(None)
    if ids == [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]:
        return spectra_filter("gzip")
    return SpectraFilter("hdf5", direct=False)  # any other: HDF5's own pipeline encodes


def _build_layout(
    file: h5py.File,
    *,
    ny: int,
    nx: int,
    wavelengths: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    texts: dict[str, str],
    raster_order: str,
    by_columns: bool,
    settings: Mapping[str, Any],
    storage: Mapping[str, tuple[str, SpectraFilter]],
    truth_elements: Sequence[str] | None,
    mineral_names: Sequence[str] | None,
) -> None:
    """Create every group and dataset of the map (SWMR forbids creating any later)."""
    _nx(
        file, L.NX_ROOT, default=L.ENTRY, creator=f"plumelink {texts['software_version']}".strip(),
        file_time=_now(), HDF5_Version=h5py.version.hdf5_version,
        h5py_version=h5py.version.version,
    )
    file.attrs[L.FORMAT_ATTR] = np.int64(L.FORMAT_VERSION)
    entry = _nx(file.create_group(L.ENTRY, track_order=True), L.NX_ENTRY, default="emissivity")
    _text(entry, "start_time", _now(), L.TIME_LEN)
    _text(entry, "end_time", "", L.TIME_LEN)
    _text(entry, "status", L.STATUS_RUNNING, L.STATUS_LEN)
    _text(entry, "status_reason", "", L.REASON_LEN)
    for name in L.TEXT_FIELDS:
        _text(entry, name, texts[name])
    entry.create_dataset("lines_done", shape=(ny,), dtype="uint8", chunks=(ny,), fillvalue=0)
    _create_device_log(file)
    if by_columns:
        entry.create_dataset(L.COLUMNS_DONE, shape=(nx,), dtype="uint8", chunks=(nx,),
                             fillvalue=0)

    instrument = _nx(file.create_group(L.INSTRUMENT, track_order=True), L.NX_INSTRUMENT)
    write_settings(instrument, settings)

    # Compressed chunks are rewritten whole, and a rewritten chunk that grew takes new space in
    # the file: a vertical map written column by column into row chunks grew 20 x its size.
    # Its spectra are chunked one spot per chunk instead, each written once; rows read the same.
    spectra_nx = 1 if by_columns else nx
    for system in L.SYSTEMS:
        group = _nx(file.create_group(L.system_path(system), track_order=True), L.NX_DETECTOR)
        wavelength = group.create_dataset("wavelength", data=wavelengths[system])
        wavelength.attrs["units"] = "nm"
        n_px = wavelengths[system].size
        spectra_dtype, filters = storage[system]
        spectra = group.create_dataset(
            "spectra", shape=(ny, nx, n_px), dtype=spectra_dtype, chunks=(1, spectra_nx, n_px),
            fillvalue=0, **filters.create_kwargs,
        )
        spectra.attrs["units"] = "counts"
        for key, value in filters.attrs().items():
            spectra.attrs[key] = value
        for name, (dtype, fill) in L.DETECTOR_SPOT_FIELDS.items():
            _spot_dataset(group, name, ny, nx, dtype, fill)
        group["timestamp"].attrs["units"] = "s"

    raster = _nx(file.create_group(L.RASTER, track_order=True), L.NX_COLLECTION)
    raster.attrs[L.ORDER_ATTR] = raster_order
    for name, values in (("x", x), ("y", y)):
        raster.create_dataset(name, data=values).attrs["units"] = "um"
    for name, (dtype, fill) in L.RASTER_SPOT_FIELDS.items():
        _spot_dataset(raster, name, ny, nx, dtype, fill)
    for name in ("x_measured", "y_measured"):
        raster[name].attrs["units"] = "um"

    emissivity = _nx(
        file.create_group(L.EMISSIVITY, track_order=True), L.NX_DATA,
        signal="primary", auxiliary_signals=_strings(["secondary"]), axes=_strings(["y", "x"]),
        y_indices=np.int64(0), x_indices=np.int64(1),
    )
    for system in L.SYSTEMS:
        data = _spot_dataset(emissivity, system, ny, nx, "float32", np.nan)
        data.attrs["units"] = "counts"
        data.attrs["long_name"] = f"total emission, {system} (counts)"
    emissivity["y"] = raster["y"]  # hard links: one copy of the axes
    emissivity["x"] = raster["x"]
    add_spectra_cubes(file)

    if truth_elements is not None:
        truth = _nx(file.create_group(L.TRUTH, track_order=True), L.NX_COLLECTION)
        _spot_dataset(truth, "mineral", ny, nx, "int16", L.MINERAL_FILL)
        truth.create_dataset("mineral_names", data=_strings(mineral_names or []))
        n_el = len(truth_elements)
        composition = truth.create_dataset(
            "composition", shape=(ny, nx, n_el), dtype="float32", chunks=(1, nx, n_el),
            fillvalue=np.nan,
        )
        composition.attrs["units"] = "wt%"
        truth.create_dataset("elements", data=_strings(truth_elements))
