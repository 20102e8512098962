"""Import the public data set of Vrábel et al. (JAAS 2023, 38, 841) into plumelink map files.

The paper's files, one folder: ``s1_{train,val,test}.npy`` (primary spectra, one row per spot),
``s2_{train,val,test}.npy`` (secondary), ``s1_wavelengths.npy`` and ``s2_wavelengths.npy``.
Rows are in horizontal-snake acquisition order (row 0 left to right, row 1 right to left, ...);
they are un-snaked into storage order (ix increasing) here. The files carry no stage
positions: setpoints are spot indices times an assumed step, noted in the settings.

Integer spectra are raw detector counts and are stored as uint16 (0..65535, never
rescaled); float spectra (the paper's files may hold processed intensities) are stored as
float32. A spot whose row holds NaN or inf is stored as invalid (zeros) for that system.
Files are memory-mapped (never loaded whole) and never unpickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .map_writer import DEFAULT_COMPRESSION, MapWriter
from .raster_line import RasterLine, SystemLine

log = logging.getLogger(__name__)

PAPER_DIMS: dict[str, tuple[int, int]] = {
    "train": (560, 560),
    "val": (266, 500),
    "test": (500, 500),
}
"""ny x nx of each map of the paper's data set."""

_FOREIGN = {"primary": "s1", "secondary": "s2"}  # the paper's names of the two systems
_UINT16_MAX = np.iinfo(np.uint16).max

ProgressCallback = Callable[[int, int], None]  # (spots done, spots total)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not a plain numeric .npy array (object arrays need pickle, which "
            f"plumelink never loads): {exc}"
        ) from exc


def _split_file(directory: Path, system: str, split: str) -> Path:
    return directory / f"{_FOREIGN[system]}_{split}.npy"


def _wavelength_file(directory: Path, system: str) -> Path:
    return directory / f"{_FOREIGN[system]}_wavelengths.npy"


def _check_dims(dims: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    if not dims:
        raise ValueError("dims names no map to import")
    out = {}
    for split, shape in dims.items():
        if not isinstance(split, str) or not split or "/" in split or os.sep in split:
            raise ValueError(f"map name {split!r} is not a plain name")
        ny, nx = (int(v) for v in shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"dims of {split} must be at least 1 x 1, got {ny} x {nx}")
        out[split] = (ny, nx)
    return out


def _open_inputs(
    directory: Path, dims: dict[str, tuple[int, int]]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Memory-map every file and check shapes before anything is written."""
    needed = [_wavelength_file(directory, s) for s in _FOREIGN]
    needed += [_split_file(directory, s, split) for split in dims for s in _FOREIGN]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {len(missing)} file(s) of the paper's data set: "
            + ", ".join(missing)
        )
    axes = {}
    for system in _FOREIGN:
        path = _wavelength_file(directory, system)
        axis = np.asarray(_load(path), dtype=np.float64)
        if axis.ndim != 1 or axis.size == 0 or not np.isfinite(axis).all():
            raise ValueError(
                f"{path.name} must be a 1-D array of finite wavelengths in nm, got shape "
                f"{axis.shape}"
            )
        axes[system] = axis
    spectra: dict[str, dict[str, np.ndarray]] = {}
    for split, (ny, nx) in dims.items():
        spectra[split] = {}
        for system in _FOREIGN:
            path = _split_file(directory, system, split)
            array = _load(path)
            if array.ndim != 2 or array.dtype.kind not in "uif":
                raise ValueError(
                    f"{path.name} must be a 2-D numeric array (spots, pixels), got "
                    f"{array.dtype} {array.shape}"
                )
            if array.shape[0] != ny * nx:
                raise ValueError(
                    f"{path.name} has {array.shape[0]} rows (spots) but dims {split}="
                    f"{ny}x{nx} need {ny * nx}; give the right --dims for this file"
                )
            n_px = axes[system].size
            if array.shape[1] != n_px:
                raise ValueError(
                    f"{path.name} has spectra of {array.shape[1]} pixels but "
                    f"{_wavelength_file(directory, system).name} has {n_px} wavelengths"
                )
            spectra[split][system] = array
    return axes, spectra


def _counts(rows: np.ndarray, where: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(spectra with invalid rows zeroed, valid (n,) bool).

    Integer data are raw counts and must fit uint16; float data are stored as float32,
    whatever their values (the paper's files may hold processed intensities).
    """
    valid = np.ones(rows.shape[0], dtype=bool)
    if rows.dtype.kind == "f":
        valid = np.isfinite(rows).all(axis=1)
        rows = np.where(valid[:, None], rows, 0)
    if dtype == "float32":
        return rows.astype(np.float32), valid
    low, high = (rows.min(), rows.max()) if rows.size else (0, 0)
    if low < 0 or high > _UINT16_MAX:
        raise ValueError(
            f"{where}: counts range from {low} to {high}, outside 0..{_UINT16_MAX}; the map "
            "store keeps integer spectra as raw uint16 counts and plumelink does not rescale them"
        )
    return rows.astype(np.uint16), valid


def _lines(
    primary: np.ndarray, secondary: np.ndarray, ny: int, nx: int, step: float, split: str,
    dtype: str = "uint16",
):
    """RasterLines in storage order from rows in horizontal-snake acquisition order."""
    x = step * np.arange(nx, dtype=np.float64)
    nan = np.full(nx, np.nan)
    for iy in range(ny):
        order = np.arange(nx) if iy % 2 == 0 else np.arange(nx)[::-1]  # column -> snake pos.
        shot_id = (iy * nx + order).astype(np.int64)
        systems = {}
        for name, array in (("primary", primary), ("secondary", secondary)):
            rows = np.asarray(array[iy * nx : (iy + 1) * nx])[order]
            spectra, valid = _counts(
                rows, f"{_FOREIGN[name]}_{split}.npy, raster line {iy} (rows "
                f"{iy * nx}..{(iy + 1) * nx - 1})", dtype,
            )
            systems[name] = SystemLine(
                spectra=spectra, valid=valid, frame_id=np.full(nx, -1, np.int64),
                timestamp_s=nan.copy(),
            )
        yield RasterLine(
            index=iy, x_um=x, y_um=np.full(nx, step * iy), x_measured_um=nan.copy(),
            y_measured_um=nan.copy(), shot_id=shot_id, **systems,
        )


def _check_counts(spectra: Mapping[str, Mapping[str, np.ndarray]], block: int = 4096) -> None:
    """Integer inputs must be raw counts (0..65535): checked on every file before the first
    map is written, block by block (the files may be memory-mapped and large)."""
    for split, systems in spectra.items():
        if _store_dtype(*systems.values()) == "float32":
            continue
        for name, array in systems.items():
            for start in range(0, array.shape[0], block):
                rows = np.asarray(array[start : start + block])
                if rows.size and (rows.min() < 0 or rows.max() > _UINT16_MAX):
                    bad = np.flatnonzero((rows < 0).any(axis=1) | (rows > _UINT16_MAX).any(axis=1))
                    raise ValueError(
                        f"{_FOREIGN[name]}_{split}.npy, row {start + int(bad[0])}: counts range "
                        f"from {rows.min()} to {rows.max()}, outside 0..{_UINT16_MAX}; the map "
                        "store keeps integer spectra as raw uint16 counts and plumelink does "
                        "not rescale them; nothing was written")


def _store_dtype(*arrays: np.ndarray) -> str:
    """uint16 for integer data (raw counts), float32 as soon as either system is float."""
    return "float32" if any(a.dtype.kind == "f" for a in arrays) else "uint16"


def import_npy(
    directory: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dims: Mapping[str, tuple[int, int]] = PAPER_DIMS,
    compression: str | None = DEFAULT_COMPRESSION,
    progress: ProgressCallback | None = None,
    *,
    step: float = 1.0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write out_dir/{split}.h5 for each split of dims; return their paths.

    dims: ny x nx of each map (the paper's by default). step: the assumed distance between
    spots (the files carry none), recorded in the settings; setpoints are spot index x step.
    Every input is checked before the first file is written; a map that fails while being
    written (data that are not raw counts) is removed, and the error names file and line.
    """
    directory, out = Path(directory), Path(out_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder of the paper's .npy files")
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step must be a positive number, got {step}")
    dims = _check_dims(dims)
    axes, spectra = _open_inputs(directory, dims)
    _check_counts(spectra)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(ny * nx for ny, nx in dims.values())
    done = 0
    paths = {}
    for split, (ny, nx) in dims.items():
        path = out / f"{split}.h5"
        settings = {
            "import": {
                "source": str(directory.resolve()),
                "format": "paper npy",
                "dims": {name: [a, b] for name, (a, b) in dims.items()},
                "split": split,
                "step": float(step),
                "step_units": "assumed; the files hold no stage positions, so setpoints are "
                "spot index x step (um only if the true step was given)",
                "primary_file": f"s1_{split}.npy",
                "secondary_file": f"s2_{split}.npy",
            }
        }
        dtype = _store_dtype(spectra[split]["primary"], spectra[split]["secondary"])
        writer = MapWriter.create(
            path, ny=ny, nx=nx, primary_wavelength_nm=axes["primary"],
            secondary_wavelength_nm=axes["secondary"],
            x_um=step * np.arange(nx, dtype=np.float64),
            y_um=step * np.arange(ny, dtype=np.float64),
            sample=f"imported from {directory.name} ({split})", operator="",
            raster_order="snake-horizontal", settings=settings, compression=compression,
            overwrite=overwrite, spectra_dtype=dtype,
        )
        try:
            with writer:
                for line in _lines(
                    spectra[split]["primary"], spectra[split]["secondary"], ny, nx, step, split,
                    dtype,
                ):
                    writer.append_line(line)
                    done += nx
                    if progress is not None:
                        progress(done, total)
        except BaseException:  # no complete-looking part of an import is left behind
            for written in (path, *paths.values()):
                written.unlink(missing_ok=True)
            raise
        log.info("imported %s: %d x %d spots -> %s", split, ny, nx, path)
        paths[split] = path
    return paths
