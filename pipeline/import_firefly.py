"""Import a Lightigo Firefly HDF5 file into a plumelink map.

The layout is known second-hand (third-party analysis code, see the README's map-file
section): ``measurements/<key>/libs/`` holds

- ``calibration``: the wavelength of each pixel, nm, shape (n_px,);
- ``data``: one spectrum per shot, shape (n_shots, n_px), counts;
- ``metadata/X``, ``metadata/Y``: the grid column and row of each shot (integers);
- ``metadata/X_pos``, ``metadata/Y_pos``: the stage position of each shot, mm;
- ``metadata/Invalid``: nonzero where the Firefly flagged the shot.

The Firefly spectra become the primary system. A plumelink map pairs two systems; the secondary
is cut from the same spectra (the pixels inside ``secondary_nm``, by default 260–370 nm, one
channel of the Firefly's spectrometer bank), so the map can train a transfer from that channel
to the whole range. Grid indices are taken relative to their smallest value; setpoints are the
least-squares line through the measured positions of each column (row), so spots the raster
did not reach keep their place. Every attribute of every object in the file is kept in the
instrument snapshot (``/map/instrument/firefly``), with the values of small datasets.
Anything that does not match the layout is refused, saying what was found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import map_layout as L
from .map_filters import DEFAULT_COMPRESSION
from .map_writer import MapWriter
from .raster_line import RasterLine, SystemLine

log = logging.getLogger(__name__)

ROOT = "measurements"
LIBS = "libs"
SPOT_FIELDS = ("X", "Y", "X_pos", "Y_pos", "Invalid")
DEFAULT_SECONDARY_NM = (260.0, 370.0)
_MM_TO_UM = 1000.0
_UINT16_MAX = np.iinfo(np.uint16).max
_SMALL = 16  # datasets of at most this many values are copied into the snapshot

ProgressCallback = Callable[[int, int], None]  # (spots done, spots total)


class FireflyFormatError(ValueError):
    """The file is not laid out as a Firefly measurement; the message says what was found."""


def _fail(path: Path, problem: str) -> FireflyFormatError:
    return FireflyFormatError(f"{L.describe(path)} is not a Firefly measurement file: {problem}")


def _members(group: h5py.Group) -> str:
    names = [f"{k}/" if isinstance(group.get(k), h5py.Group) else k for k in group]
    return ", ".join(names) if names else "nothing"


def _measurement(file: h5py.File, path: Path, key: str | None) -> tuple[str, h5py.Group]:
    root = file.get(ROOT)
    if not isinstance(root, h5py.Group):
        raise _fail(path, f"no '{ROOT}' group; the file's root holds {_members(file)}")
    keys = [k for k in root if isinstance(root.get(k), h5py.Group)]
    if not keys:
        raise _fail(path, f"'{ROOT}' holds no measurement group (it holds {_members(root)})")
    if key is None:
        if len(keys) > 1:
            raise FireflyFormatError(
                f"{L.describe(path)} holds {len(keys)} measurements ({', '.join(keys)}); "
                "choose one with --measurement KEY")
        key = keys[0]
    elif key not in keys:
        raise FireflyFormatError(
            f"{L.describe(path)} has no measurement {key!r}; it has {', '.join(keys)}")
    libs = root[key].get(LIBS)
    if not isinstance(libs, h5py.Group):
        raise _fail(path, f"measurement {key!r} has no '{LIBS}' group (it holds "
                    f"{_members(root[key])})")
    return key, libs


def _dataset(libs: h5py.Group, name: str, path: Path) -> h5py.Dataset:
    obj = libs.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise _fail(path, f"{libs.name} has no '{name}' dataset (it holds {_members(libs)})")
    return obj


def _spot_field(meta: h5py.Group, name: str, n_shots: int, path: Path) -> np.ndarray:
    obj = meta[name]
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf":
        raise _fail(path, f"{obj.name} must be a numeric dataset, found {obj!r}")
    values = np.asarray(obj[()]).reshape(-1) if obj.ndim <= 2 else None
    if values is None or values.size != n_shots:
        raise _fail(path, f"{obj.name} has shape {obj.shape} but 'data' holds {n_shots} "
                    "shots (one value per shot expected)")
    return values


def _grid_index(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    if not np.isfinite(values).all() or not np.allclose(values, np.round(values)):
        raise _fail(path, f"metadata/{name} must hold whole grid indices, found values such "
                    f"as {values[~np.isclose(values, np.round(values))][:3].tolist()}")
    index = np.round(values).astype(np.int64)
    return index - index.min()


def _setpoints(index: np.ndarray, position_um: np.ndarray | None, n: int, step_um: float | None,
               name: str, path: Path) -> np.ndarray:
    """One setpoint per grid index: the straight line through the measured positions."""
    if position_um is None:
        if step_um is None:
            raise _fail(path, f"metadata has no {name}_pos (stage positions); give a step "
                        "(--step-um) to place the spots from their grid indices")
        return step_um * np.arange(n, dtype=np.float64)
    finite = np.isfinite(position_um)
    if np.unique(index[finite]).size >= 2:
        slope, offset = np.polyfit(index[finite], position_um[finite], 1)
        return offset + slope * np.arange(n, dtype=np.float64)
    if n > 1:
        raise _fail(path, f"{name}_pos has finite positions at fewer than two grid indices; "
                    "the spacing of the raster cannot be found")
    return np.array([float(np.median(position_um[finite])) if finite.any() else 0.0])


def _attr_value(value: Any) -> Any:
    """An attribute as a value the map's settings can hold (else its text)."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "biuf" and array.ndim <= 2:
        return array.tolist()
    if array.dtype.kind in "SUO" and array.ndim == 1:
        return [_attr_value(v) if isinstance(v, bytes | str) else str(v) for v in array]
    return str(value)


def _safe_key(key: str, taken: dict[str, Any]) -> str:
    key = key.replace("/", "_") or "_"
    if key in (".", "NX_class"):
        key = f"{key}_"
    while key in taken:
        key = f"{key}_"
    return key


def snapshot(file: h5py.File) -> dict[str, Any]:
    """Every attribute of every object, nested as the file is, with small datasets' values."""

    def node(obj: h5py.HLObject) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.attrs.items():
            out[_safe_key(key, out)] = _attr_value(value)
        if isinstance(obj, h5py.Dataset):
            out[_safe_key("shape", out)] = list(obj.shape)
            out[_safe_key("dtype", out)] = str(obj.dtype)
            if obj.size <= _SMALL and obj.dtype.kind in "biufSU":
                out[_safe_key("value", out)] = _attr_value(obj[()])
            return out
        for name in obj:
            child = obj.get(name)
            if isinstance(child, h5py.Group | h5py.Dataset):
                out[_safe_key(name, out)] = node(child)
        return out

    return node(file)


def _order(ix: np.ndarray, iy: np.ndarray) -> str:
    """The order the shots (in file order) followed: rows one way, rows both ways, or other."""
    directions = []
    for row in dict.fromkeys(iy.tolist()):  # rows in the order they were first shot
        steps = np.diff(ix[iy == row])
        if steps.size == 0:
            continue
        if (steps > 0).all():
            directions.append(1)
        elif (steps < 0).all():
            directions.append(-1)
        else:
            return "other (not row by row)"
    if len(set(directions)) <= 1:
        return "plain-horizontal"
    if all(a != b for a, b in pairwise(directions)):
        return "snake-horizontal"
    return "other (rows in mixed directions)"


def _spectra_dtype(data: h5py.Dataset, rows: int = 4096) -> str:
    """uint16 for whole counts within 0..65535 (read in blocks), float32 otherwise."""
    if data.dtype.kind == "f":
        return "float32"
    for start in range(0, data.shape[0], rows):
        block = data[start:start + rows]
        if block.size and (block.min() < 0 or block.max() > _UINT16_MAX):
            return "float32"
    return "uint16"


def import_firefly(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    measurement: str | None = None,
    secondary_nm: tuple[float, float] = DEFAULT_SECONDARY_NM,
    step_um: float | None = None,
    compression: str | None = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the map out from one measurement of a Firefly file; return its path.

    measurement: the key under /measurements (needed when there are several). secondary_nm:
    the window cut from the spectra as the secondary system. step_um: the spot spacing used
    only when the file has no stage positions.
    """
    source, target = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"Firefly file {L.describe(source)} does not exist")
    if not h5py.is_hdf5(source):
        raise _fail(source, "it is not an HDF5 file")
    with h5py.File(source, "r") as file:
        key, libs = _measurement(file, source, measurement)
        calibration = np.asarray(_dataset(libs, "calibration", source)[()], dtype=np.float64)
        data = _dataset(libs, "data", source)
        if calibration.ndim != 1 or calibration.size < 2 or not np.isfinite(calibration).all():
            raise _fail(source, f"{libs.name}/calibration must be a 1-D axis of finite "
                        f"wavelengths (nm), found shape {calibration.shape}")
        if data.ndim != 2 or data.shape[1] != calibration.size or data.dtype.kind not in "iuf":
            raise _fail(source, f"{libs.name}/data must be numeric (shots, {calibration.size} "
                        f"pixels) to match the calibration, found {data.dtype} {data.shape}")
        n_shots = data.shape[0]
        meta = libs.get("metadata")
        fields = {}
        if isinstance(meta, h5py.Group):
            fields = {n: _spot_field(meta, n, n_shots, source) for n in SPOT_FIELDS if n in meta}
        missing_grid = [n for n in ("X", "Y") if n not in fields]
        if missing_grid:
            found = _members(meta) if isinstance(meta, h5py.Group) else "no metadata group"
            raise _fail(source, f"{libs.name}/metadata lacks the grid indices "
                        f"{' and '.join(missing_grid)} (found: {found}); without them the "
                        "shots cannot be placed on the raster")
        ix, iy = _grid_index(fields["X"], "X", source), _grid_index(fields["Y"], "Y", source)
        nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
        flat = iy * nx + ix
        unique, counts = np.unique(flat, return_counts=True)
        if (counts > 1).any():
            spot = int(unique[np.argmax(counts)])
            shots = np.flatnonzero(flat == spot)[:4].tolist()
            raise _fail(source, f"shots {shots} share grid spot X={spot % nx}, Y={spot // nx} "
                        "(one shot per spot expected)")
        pos = {a: fields[f"{a}_pos"] * _MM_TO_UM if f"{a}_pos" in fields else None
               for a in ("X", "Y")}
        x_um = _setpoints(ix, pos["X"], nx, step_um, "X", source)
        y_um = _setpoints(iy, pos["Y"], ny, step_um, "Y", source)
        invalid = (fields["Invalid"] != 0 if "Invalid" in fields
                   else np.zeros(n_shots, dtype=bool))
        low, high = secondary_nm
        cut = np.flatnonzero((calibration >= low) & (calibration <= high))
        if cut.size < 2:
            raise FireflyFormatError(
                f"{L.describe(source)}: the secondary window {low:g}–{high:g} nm holds "
                f"{cut.size} pixel(s) of the calibration {calibration.min():g}–"
                f"{calibration.max():g} nm; choose a window inside it (--secondary-nm)")
        dtype = _spectra_dtype(data)
        order = _order(ix, iy)
        settings = {
            "firefly": snapshot(file),
            "import": {
                "source": str(source.resolve()), "format": "Lightigo Firefly HDF5",
                "measurement": key, "shots": int(n_shots),
                "raster_filled": f"{unique.size} of {ny * nx} spots",
                "acquisition_order": order,
                "secondary": f"pixels {int(cut[0])}..{int(cut[-1])} of the primary "
                f"({low:g}–{high:g} nm), cut from the same spectra",
                "positions": "X_pos, Y_pos (mm) x 1000; setpoints: the straight line "
                "through them per grid index" if pos["X"] is not None and pos["Y"] is not None
                else f"not all in the file; setpoints from grid indices (step {step_um} um)",
                "validity": "metadata/Invalid (nonzero: invalid)" if "Invalid" in fields
                else "no Invalid flags in the file; every shot taken as valid",
            },
        }
        writer = MapWriter.create(
            target, ny=ny, nx=nx, primary_wavelength_nm=calibration,
            secondary_wavelength_nm=calibration[cut], x_um=x_um, y_um=y_um,
            sample=f"Firefly measurement {key} ({source.name})",
            raster_order=order if order.endswith("horizontal") else "plain-horizontal",
            settings=settings, compression=compression, overwrite=overwrite,
            spectra_dtype=dtype,
        )
        try:
            with writer:
                for line in _lines(data, flat, ny, nx, x_um, y_um, pos, invalid, cut, dtype):
                    writer.append_line(line)
                    if progress is not None:
                        progress((line.index + 1) * nx, ny * nx)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    log.info("imported Firefly measurement %s of %s: %d x %d spots, %d shots -> %s",
             key, source, ny, nx, n_shots, target)
    return target


def _lines(data: h5py.Dataset, flat: np.ndarray, ny: int, nx: int, x_um: np.ndarray,
           y_um: np.ndarray, pos: dict[str, np.ndarray | None], invalid: np.ndarray,
           cut: np.ndarray, dtype: str):
    """RasterLines in storage order; spots no shot reached stay invalid (zeros)."""
    shot_at = np.full(ny * nx, -1, dtype=np.int64)
    shot_at[flat] = np.arange(flat.size)
    for iy in range(ny):
        shots = shot_at[iy * nx:(iy + 1) * nx]
        taken = shots >= 0
        spectra = np.zeros((nx, data.shape[1]), dtype=dtype)
        if taken.any():
            rows = np.sort(shots[taken])
            block = data[rows] if rows.size > 1 else data[rows[0]:rows[0] + 1]
            by_shot = dict(zip(rows.tolist(), block, strict=True))
            spectra[taken] = np.stack([by_shot[s] for s in shots[taken]]).astype(dtype)
        valid = taken.copy()
        valid[taken] &= ~invalid[shots[taken]]
        valid &= np.isfinite(spectra).all(axis=1)
        spectra[~valid] = 0
        measured = {a: np.full(nx, np.nan) for a in ("X", "Y")}
        for axis, values in pos.items():
            if values is not None:
                measured[axis][taken] = values[shots[taken]]
        frame = np.where(taken, shots, -1).astype(np.int64)
        nan = np.full(nx, np.nan)
        systems = {
            name: SystemLine(spectra=np.ascontiguousarray(s), valid=valid.copy(),
                             frame_id=frame.copy(), timestamp_s=nan.copy())
            for name, s in (("primary", spectra), ("secondary", spectra[:, cut]))
        }
        yield RasterLine(index=iy, x_um=x_um, y_um=np.full(nx, y_um[iy]),
                         x_measured_um=measured["X"], y_measured_um=measured["Y"],
                         shot_id=frame, **systems)
