"""Read a plumelink map file, finished, interrupted or still being written.

A file whose SWMR writer was killed keeps the "open for write" mark, so plain HDF5 opens fail;
the reader then opens it as an SWMR reader, which works and sees every flushed line. Readers
that follow a running scan call refresh() to see new lines. Spectra are read whole raster
lines at a time (one chunk each), never the whole map.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from . import map_layout as L
from .map_filters import missing_filter_message, missing_filters
from .raster_line import LineTruth, RasterLine, SystemLine

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _plain(value: Any) -> Any:
    """An attribute value as the plain Python value it was written from."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def read_settings(group: h5py.Group) -> dict[str, Any]:
    """Inverse of map_writer.write_settings: attributes become values, groups become dicts."""
    out: dict[str, Any] = {
        key: _plain(value) for key, value in group.attrs.items() if key != "NX_class"
    }
    for key, child in group.items():
        if isinstance(child, h5py.Group):
            out[key] = read_settings(child)
    return out


_SWMR_MARK = "already open for write"
"""What HDF5 says when a file still carries the mark of an SWMR writer (running or killed)."""
_LOCKED = "unable to lock file"
"""What HDF5 says when a non-SWMR writer holds the file."""


def _open(path: Path, follow: bool) -> tuple[h5py.File, bool]:
    """Open read-only; as an SWMR reader when following or when a writer left its mark.

    A plain open is always tried first: only it checks the file's length, so a truncated file
    is refused here instead of failing later on its missing lines.
    """
    if not h5py.is_hdf5(path):
        raise L.CorruptMapError(
            f"{L.describe(path)} is not an HDF5 file (no HDF5 signature found); "
            "it is not a plumelink map"
        )
    try:
        plain = h5py.File(path, "r")
    except OSError as exc:
        if _LOCKED in str(exc):
            raise L.MapBusyError(
                f"map file {L.describe(path)} is locked by a program writing it without SWMR "
                f"(a writer still creating it, or another tool); try again later ({exc})"
            ) from exc
        if _SWMR_MARK not in str(exc):
            raise L.CorruptMapError(
                f"map file {L.describe(path)} cannot be opened; it may be truncated or "
                f"damaged ({exc})"
            ) from exc
        return _open_swmr(path, exc), True
    if not follow:
        return plain, False
    plain.close()
    return _open_swmr(path, None), True


def _open_swmr(path: Path, plain_error: OSError | None) -> h5py.File:
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as exc:
        before = f"; plain open: {plain_error}" if plain_error else ""
        raise L.CorruptMapError(
            f"map file {L.describe(path)} cannot be opened for following; it may be "
            f"damaged (SWMR open: {exc}{before})"
        ) from exc


@contextmanager
def _reading(path: Path, what: str, *datasets: h5py.Dataset) -> Iterator[None]:
    """Turn a low-level read failure into a clear error: a filter plugin this process lacks
    (named), or a missing chunk of a damaged file."""
    try:
        yield
    except OSError as exc:
        for dataset in datasets:
            missing = missing_filters(dataset)
            if missing:
                raise L.MissingFilterError(
                    f"map file {L.describe(path)}: {what} cannot be read: "
                    + missing_filter_message(dataset, missing)
                ) from exc
        raise L.CorruptMapError(
            f"map file {L.describe(path)}: {what} cannot be read; the file may be truncated "
            f"or damaged ({exc})"
        ) from exc


def _check_format(file: h5py.File, path: Path) -> None:
    if L.FORMAT_ATTR not in file.attrs:
        raise L.ForeignFileError(
            f"{L.describe(path)} is an HDF5 file but not a plumelink map "
            f"(no '{L.FORMAT_ATTR}' attribute on its root group)"
        )
    version = file.attrs[L.FORMAT_ATTR]
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise L.FormatVersionError(
            f"map file {L.describe(path)} has an unreadable format version {version!r}"
        ) from None
    if version > L.FORMAT_VERSION:
        raise L.FormatVersionError(
            f"map file {L.describe(path)} uses map format {version}, newer than the format "
            f"{L.FORMAT_VERSION} this plumelink reads; update plumelink to open it"
        )
    if version < 1:
        raise L.FormatVersionError(
            f"map file {L.describe(path)} has an unknown map format version {version}"
        )


def open_map_file(path: str | os.PathLike[str]) -> h5py.File:
    """The HDF5 file of a map, read-only (as an SWMR reader when a writer left its mark),
    its format checked: for tools that copy or convert whole files."""
    path = Path(path)
    file, _ = _open(path, follow=False)
    try:
        _check_format(file, path)
    except BaseException:
        file.close()
        raise
    return file


class _OpenMap:
    """One open map file and its dataset handles, shared by all readers of it in a process.

    HDF5 shares one file object between all opens of a file in a process, and a second open
    handle of a dataset keeps its old chunk index alive through an SWMR refresh: readers that
    opened their own handles would see stale lines. So every reader of a file reads through
    the same handles, each opened exactly once.
    """

    def __init__(self, path: Path, follow: bool) -> None:
        self.path = path
        self.file, self.swmr = _open(path, follow)
        self.users = 0
        try:
            _check_format(self.file, path)
            self._bind()
        except L.MapFileError:
            self.file.close()
            raise
        except (KeyError, OSError, ValueError) as exc:
            self.file.close()
            raise L.CorruptMapError(
                f"map file {L.describe(path)} is missing part of its layout or is "
                f"damaged: {exc}"
            ) from exc

    def _bind(self) -> None:
        f = self.file
        growing = [f"{L.ENTRY}/{n}" for n in ("lines_done", "status", "status_reason", "end_time")]
        growing += [f"{L.RASTER}/{n}" for n in L.RASTER_SPOT_FIELDS]
        growing += [f"{L.EMISSIVITY}/{n}" for n in L.SYSTEMS]
        for system in L.SYSTEMS:
            group = L.system_path(system)
            growing += [f"{group}/{n}" for n in ("spectra", *L.DETECTOR_SPOT_FIELDS)]
        self.truth = f.get(L.TRUTH)
        if self.truth is not None:
            growing += [f"{L.TRUTH}/mineral", f"{L.TRUTH}/composition"]
        self.datasets = {name: f[name] for name in growing}
        for system in L.SYSTEMS:  # registers hdf5plugin's filters only for maps that need them
            missing_filters(self.datasets[f"{L.system_path(system)}/{L.SPECTRA}"])
        self.x = f[f"{L.RASTER}/x"][()]
        self.y = f[f"{L.RASTER}/y"][()]
        self.wavelength = {
            name: f[f"{L.system_path(name)}/wavelength"][()] for name in L.SYSTEMS
        }
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every per-spot dataset has the raster's (ny, nx) and every spectra cube its
        system's pixel count, checked once here instead of failing on some later line."""
        grid = (self.y.size, self.x.size)
        wrong = []
        for name, dataset in self.datasets.items():
            if name.endswith(("/status", "/status_reason", "/end_time")):
                continue
            if name.endswith("/lines_done"):
                want: tuple[int, ...] = grid[:1]
            elif name.endswith(f"/{L.SPECTRA}"):
                system = name.split("/")[-2]
                want = (*grid, self.wavelength[system].size)
            else:
                want = grid
            if dataset.shape[: len(want)] != want:
                wrong.append(f"{name} is {dataset.shape}, expected {want}")
        if wrong:
            raise L.MapShapeError(
                f"map file {L.describe(self.path)}: datasets do not fit its {grid[0]} x "
                f"{grid[1]} raster: {'; '.join(wrong[:3])}")


_OPEN: dict[tuple[int, int], _OpenMap] = {}
_OPEN_LOCK = threading.Lock()


def _acquire(path: Path, follow: bool) -> _OpenMap:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"map file {L.describe(path)} does not exist") from None
    key = (stat.st_dev, stat.st_ino)
    with _OPEN_LOCK:
        shared = _OPEN.get(key)
        if shared is None or not shared.file.id.valid:
            shared = _OPEN[key] = _OpenMap(path, follow)
        shared.users += 1
        return shared


def _release(shared: _OpenMap) -> None:
    with _OPEN_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        for key, value in list(_OPEN.items()):
            if value is shared:
                del _OPEN[key]
        if shared.file.id.valid:
            shared.file.close()


class MapReader:
    """Read-only view of one map file; use as a context manager.

    Readers of one file in one process share its open handles (see _OpenMap), so a reader
    opened on a file that is already open reuses that open, SWMR or not.
    """

    def __init__(self, path: str | os.PathLike[str], follow: bool = False) -> None:
        self._path = Path(path)
        shared = _acquire(self._path, follow)
        # Released by close(), or when the reader is garbage-collected without one.
        self._release = weakref.finalize(self, _release, shared)
        self._file, self._swmr, self._d = shared.file, shared.swmr, shared.datasets
        self._truth, self._x, self._y = shared.truth, shared.x, shared.y
        self._wavelength = shared.wavelength
        if self._swmr and not follow:
            log.info(
                "map %s was left open by its writer (killed or still running); "
                "reading it as an SWMR reader",
                self._path,
            )

    def _ds(self, *parts: str) -> h5py.Dataset:
        if not self._release.alive:
            raise L.MapFileError(f"the reader of map file {L.describe(self._path)} is closed")
        return self._d["/".join(parts)]

    # --- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release this reader; the file closes when its last reader in the process does."""
        self._release()

    def __enter__(self) -> MapReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def refresh(self) -> None:
        """See what the writer has flushed since opening (SWMR readers only; else a no-op)."""
        if self._swmr:
            for dataset in self._d.values():
                dataset.refresh()

    # --- description ----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def opened_as_swmr(self) -> bool:
        """True when read as an SWMR reader: following, or left open by its writer."""
        return self._swmr

    @property
    def shape(self) -> tuple[int, int]:
        return (self._y.size, self._x.size)

    @property
    def x_um(self) -> np.ndarray:
        return self._x.copy()

    @property
    def y_um(self) -> np.ndarray:
        return self._y.copy()

    @property
    def primary_wavelength_nm(self) -> np.ndarray:
        return self._wavelength["primary"].copy()

    @property
    def secondary_wavelength_nm(self) -> np.ndarray:
        return self._wavelength["secondary"].copy()

    def wavelength_nm(self, system: str) -> np.ndarray:
        return self._wavelength[self._system(system)].copy()

    @property
    def status(self) -> str:
        """running | complete | interrupted; "running" also when the writer was killed."""
        return _text(self._ds(L.ENTRY, "status")[()])

    @property
    def status_reason(self) -> str:
        return _text(self._ds(L.ENTRY, "status_reason")[()])

    @property
    def lines_done(self) -> np.ndarray:
        return self._ds(L.ENTRY, "lines_done")[()].astype(bool)

    @property
    def columns_done(self) -> np.ndarray | None:
        """Completion flags (nx,) of the columns of a map written column by column (a
        vertical raster: its rows are flagged only once every column is in); None otherwise."""
        entry = self._file[L.ENTRY]
        return entry[L.COLUMNS_DONE][()].astype(bool) if L.COLUMNS_DONE in entry else None

    @property
    def n_lines_done(self) -> int:
        return int(np.count_nonzero(self._ds(L.ENTRY, "lines_done")[()]))

    @property
    def settings(self) -> dict[str, Any]:
        """The instrument settings snapshot taken at scan start, as a nested dict."""
        return read_settings(self._file[L.INSTRUMENT])

    @property
    def metadata(self) -> dict[str, Any]:
        entry = self._file[L.ENTRY]
        out = {name: _text(entry[name][()]) for name in (*L.TEXT_FIELDS, "start_time")}
        out.update(
            end_time=_text(self._ds(L.ENTRY, "end_time")[()]),
            raster_order=_text(self._file[L.RASTER].attrs.get(L.ORDER_ATTR, "")),
            format_version=int(self._file.attrs[L.FORMAT_ATTR]),
        )
        return out

    @property
    def has_truth(self) -> bool:
        return self._truth is not None

    @property
    def mineral_names(self) -> list[str]:
        if self._truth is None:
            return []
        return [_text(v) for v in self._truth["mineral_names"][()]]

    @property
    def truth_elements(self) -> list[str]:
        if self._truth is None:
            return []
        return [_text(v) for v in self._truth["elements"][()]]

    def truth_composition(self) -> np.ndarray:
        """True composition per spot, (ny, nx, n_elements) float32 wt% in the order of
        `truth_elements`, NaN on lines not written; read alone, without the spectra."""
        if self._truth is None:
            raise L.MapFileError(f"map file {L.describe(self._path)} holds no ground truth")
        with _reading(self._path, "ground truth"):
            composition = self._ds(L.TRUTH, "composition")[()].astype(np.float32)
        composition[~self.lines_done] = np.nan
        return composition

    # --- data -----------------------------------------------------------------------------

    def read_line(self, iy: int) -> RasterLine:
        """Row iy as written; check lines_done first, an unwritten row holds fill values."""
        ny, nx = self.shape
        if not 0 <= iy < ny:
            raise L.MapShapeError(
                f"line index {iy} is outside map file {L.describe(self._path)}, "
                f"which has rows 0..{ny - 1}"
            )
        spectra = [self._ds(L.system_path(n), L.SPECTRA) for n in L.SYSTEMS]
        with _reading(self._path, f"line {iy}", *spectra):
            line = self._read_line(iy, nx)
        for name in L.SYSTEMS:
            system = getattr(line, name)
            self._check_finite(system.spectra, system.valid, name, iy * nx)
        return line

    def _check_finite(self, spectra: np.ndarray, valid: np.ndarray, system: str,
                      first_spot: int) -> None:
        """Float spectra flagged valid must be finite: a NaN handed out as a valid spectrum
        would poison every mean, scaler and network trained on it."""
        if spectra.dtype.kind != "f":
            return
        bad = valid & ~np.isfinite(spectra).all(axis=-1)
        if bad.any():
            spot = first_spot + int(np.flatnonzero(bad)[0])
            nx = self.shape[1]
            raise L.CorruptMapError(
                f"map file {L.describe(self._path)}: the {system} spectrum of spot "
                f"(line {spot // nx}, column {spot % nx}) is flagged valid but holds NaN or "
                f"inf ({int(bad.sum())} such spots in this block); the map is damaged")

    def _read_line(self, iy: int, nx: int) -> RasterLine:
        systems = {
            name: SystemLine(
                spectra=self._ds(group, "spectra")[iy],
                valid=self._ds(group, "valid")[iy],
                frame_id=self._ds(group, "frame_id")[iy],
                timestamp_s=self._ds(group, "timestamp")[iy],
                emissivity=self._ds(L.EMISSIVITY, name)[iy],
            )
            for name, group in ((n, L.system_path(n)) for n in L.SYSTEMS)
        }
        truth = None
        if self._truth is not None:
            truth = LineTruth(
                mineral=self._ds(L.TRUTH, "mineral")[iy],
                composition=self._ds(L.TRUTH, "composition")[iy],
            )
        return RasterLine(
            index=int(iy),
            x_um=self._x.copy(),
            y_um=np.full(nx, self._y[iy]),
            x_measured_um=self._ds(L.RASTER, "x_measured")[iy],
            y_measured_um=self._ds(L.RASTER, "y_measured")[iy],
            shot_id=self._ds(L.RASTER, "shot_id")[iy],
            primary=systems["primary"],
            secondary=systems["secondary"],
            truth=truth,
        )

    def iter_blocks(
        self, system: str, block_spots: int = 8192, valid_only: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (spectra float32 (n, n_px), flat spot index (n,) int64) over done lines.

        Reads runs of whole raster lines (chunk-aligned), about block_spots spots at a time,
        and yields at most block_spots spots per block. flat index = iy * nx + ix.
        """
        if block_spots < 1:
            raise ValueError(f"block_spots must be >= 1, got {block_spots}")
        name = self._system(system)
        group = L.system_path(name)
        spectra, valid = self._ds(group, "spectra"), self._ds(group, "valid")
        nx = self.shape[1]
        lines_per_read = max(1, block_spots // nx)
        for start, stop in _runs(self.lines_done, lines_per_read):
            with _reading(self._path, f"{name} spectra of lines {start}..{stop - 1}", spectra):
                block = spectra[start:stop].reshape(-1, spectra.shape[2])
                keep = valid[start:stop].ravel() if valid_only else None
            index = np.arange(start * nx, stop * nx, dtype=np.int64)
            if keep is not None:
                self._check_finite(block, keep, name, start * nx)
                block, index = block[keep], index[keep]
            for i in range(0, index.size, block_spots):
                yield (
                    block[i : i + block_spots].astype(np.float32),
                    index[i : i + block_spots],
                )

    def emissivity(self, system: str) -> np.ndarray:
        """Total counts per spot, (ny, nx) float32, NaN where invalid or not yet written."""
        with _reading(self._path, f"{system} emissivity"):
            return self._ds(L.EMISSIVITY, self._system(system))[()]

    def _system(self, system: str) -> str:
        if system not in L.SYSTEMS:
            raise ValueError(f"unknown system {system!r}; expected one of {L.SYSTEMS}")
        return system


def _runs(done: np.ndarray, max_len: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive done lines, each run cut to at most max_len lines."""
    iy, ny = 0, done.size
    while iy < ny:
        if not done[iy]:
            iy += 1
            continue
        stop = iy
        while stop < ny and done[stop] and stop - iy < max_len:
            stop += 1
        yield iy, stop
        iy = stop
