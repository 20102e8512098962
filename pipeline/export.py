"""Export a map's spectra for programs that do not read plumelink maps.

- HyperSpy (``.hspy``, written by rosettasciio): one system's cube as a Signal1D whose signal
  axis is the (non-uniform) wavelength axis in nm and whose navigation axes are x and y in µm,
  the per-spot validity and the map's provenance in its original_metadata. The spectra are
  streamed through dask, a few raster lines at a time, never the whole map in memory.
- CSV for spreadsheets: the spectra of chosen spots (one column per spot), or a line-intensity
  map (rows y, columns x) of one emission line.

Invalid and unwritten spots hold what the map holds (zeros) in the HyperSpy cube, where the
``valid`` map says which to trust; in the CSV map they are empty cells.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import map_layout as L
from .map_reader import MapReader, open_map_file

log = logging.getLogger(__name__)

FORMATS = ("hspy", "csv")
_UNIFORM_RTOL = 1e-6


def _target(out: str | os.PathLike[str], overwrite: bool) -> Path:
    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{L.describe(path)} already exists; not overwriting")
    return path


def _axis(name: str, units: str, values: np.ndarray, index: int, navigate: bool
          ) -> dict[str, Any]:
    """A rosettasciio axis: offset and scale when evenly spaced, else the values themselves."""
    axis: dict[str, Any] = {"name": name, "units": units, "navigate": navigate,
                            "index_in_array": index}
    steps = np.diff(values)
    if values.size == 1 or np.allclose(steps, steps[0], rtol=_UNIFORM_RTOL, atol=0):
        step = float(steps[0]) if values.size > 1 else 1.0
        axis.update(size=int(values.size), offset=float(values[0]), scale=step)
    else:
        axis["axis"] = values.astype(np.float64)
    return axis


def export_hspy(
    map_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    system: str = "primary",
    *,
    overwrite: bool = False,
) -> Path:
    """Write one system's spectra as a HyperSpy Signal1D file (navigation y, x in µm)."""
    try:
        import dask.array as da
        from rsciio.hspy import file_writer
    except ImportError as exc:
        raise ImportError(
            f"the HyperSpy export needs rosettasciio (pip install rosettasciio): {exc}"
        ) from exc

    map_path, target = Path(map_path), _target(out, overwrite)
    if target.suffix != ".hspy":
        raise ValueError(f"HyperSpy files end in .hspy; got {L.describe(target)}")
    L.system_path(system)
    with MapReader(map_path) as reader:  # checks the map and names a missing plugin
        x, y, wavelength = reader.x_um, reader.y_um, reader.wavelength_nm(system)
        meta = reader.metadata
        settings = reader.settings
        lines_done = reader.lines_done
    file = open_map_file(map_path)
    try:
        spectra = file[f"{L.system_path(system)}/{L.SPECTRA}"]
        valid = file[f"{L.system_path(system)}/valid"][()]
        lines = max(1, 2048 // spectra.shape[1])  # about 2,048 spectra per dask chunk
        data = da.from_array(spectra, chunks=(lines, spectra.shape[1], spectra.shape[2]))
        signal = {
            "data": data,
            "axes": [_axis("y", "µm", y, 0, True), _axis("x", "µm", x, 1, True),
                     _axis("Wavelength", "nm", wavelength, 2, False)],
            "metadata": {
                "General": {"title": f"{meta['sample'] or map_path.stem} ({system})",
                            "original_filename": map_path.name},
                "Signal": {"signal_type": "", "quantity": "Intensity (counts)"},
            },
            "original_metadata": {
                "plumelink": {
                    "source": str(map_path.resolve()), "system": system,
                    "valid": valid, "lines_done": lines_done,
                    **{k: v for k, v in meta.items() if isinstance(v, str | int)},
                },
                "instrument": settings,
            },
            # the rest of a HyperSpy signal's dictionary, empty
            "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {},
            "models": {}, "package_info": {},
        }
        tmp = target.with_name(f".{target.name}.export")
        try:
            file_writer(str(tmp), signal, show_progressbar=False)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        file.close()
    log.info("exported %s (%s) to %s", map_path, system, target)
    return target


def export_spots_csv(
    map_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spots: Sequence[tuple[int, int]],
    system: str = "primary",
    *,
    overwrite: bool = False,
) -> Path:
    """Spectra of chosen spots (iy, ix): a wavelength column, then one column per spot."""
    if not spots:
        raise ValueError("name at least one spot (iy, ix) to export")
    target = _target(out, overwrite)
    with MapReader(map_path) as reader:
        ny, nx = reader.shape
        for iy, ix in spots:
            if not (0 <= iy < ny and 0 <= ix < nx):
                raise ValueError(f"spot ({iy}, {ix}) is outside map {L.describe(map_path)}, "
                                 f"which has rows 0..{ny - 1} and columns 0..{nx - 1}")
        done = reader.lines_done
        columns, header = [], ["wavelength_nm"]
        x, y = reader.x_um, reader.y_um
        for iy, ix in spots:
            if not done[iy]:
                raise ValueError(f"row {iy} of map {L.describe(map_path)} is not written yet")
            line = getattr(reader.read_line(iy), system)
            columns.append(line.spectra[ix])
            state = "" if line.valid[ix] else " invalid"
            header.append(f"iy={iy} ix={ix} (x={x[ix]:g} um y={y[iy]:g} um){state}")
        wavelength = reader.wavelength_nm(system)
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for i, nm in enumerate(wavelength):
            writer.writerow([f"{nm:.6g}", *(int(c[i]) if c.dtype.kind in "iu" else f"{c[i]:.7g}"
                                            for c in columns)])
    return target


def line_intensity(spectra: np.ndarray, wavelength_nm: np.ndarray, line_nm: float,
                   width_nm: float) -> np.ndarray:
    """Counts above a straight baseline between the window's edge pixels, summed over the
    pixels within line_nm ± width_nm / 2 (one value per spectrum)."""
    inside = np.flatnonzero(np.abs(wavelength_nm - line_nm) <= width_nm / 2)
    if inside.size < 3:
        raise ValueError(
            f"the window {line_nm:g} ± {width_nm / 2:g} nm holds {inside.size} pixel(s) of the "
            f"axis {wavelength_nm[0]:g}..{wavelength_nm[-1]:g} nm; it needs at least 3 "
            "(widen --width or pick a line inside the axis)")
    window = spectra[:, inside].astype(np.float64)
    t = (wavelength_nm[inside] - wavelength_nm[inside[0]]) / np.ptp(wavelength_nm[inside])
    baseline = window[:, :1] + (window[:, -1:] - window[:, :1]) * t
    return (window - baseline).sum(axis=1)


def export_line_map_csv(
    map_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    line_nm: float,
    width_nm: float = 0.3,
    system: str = "primary",
    *,
    overwrite: bool = False,
) -> Path:
    """Intensity of one line per spot as a grid: first row the x (µm), first column the y
    (µm); empty cells for invalid or unwritten spots."""
    target = _target(out, overwrite)
    with MapReader(map_path) as reader:
        ny, nx = reader.shape
        wavelength = reader.wavelength_nm(system)
        line_intensity(np.zeros((1, wavelength.size)), wavelength, line_nm, width_nm)
        grid = np.full(ny * nx, np.nan)
        for spectra, index in reader.iter_blocks(system):
            grid[index] = line_intensity(spectra, wavelength, line_nm, width_nm)
        x, y = reader.x_um, reader.y_um
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow([f"y_um \\ x_um ({system}, {line_nm:g} nm ± {width_nm / 2:g} nm)",
                         *(f"{v:g}" for v in x)])
        for iy, row in enumerate(grid.reshape(ny, nx)):
            writer.writerow([f"{y[iy]:g}", *("" if np.isnan(v) else f"{v:.6g}" for v in row)])
    return target
