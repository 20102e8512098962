"""Apply a spectral transfer to a whole map, block by block, into a new map file.

The output is an ordinary plumelink map (so the GUI, silx or h5web open it like any other):

- /map/primary/spectra: the TRANSFERRED primary spectra (float32, baseline-corrected counts on
  the model's primary wavelength axis), valid where the input's secondary spot is valid;
  primary frame_id -1 and timestamp NaN (no primary spectrometer recorded them);
- /map/secondary: a copy of the input's secondary spectra (as float32), valid flags, frame ids,
  timestamps and emissivity;
- raster, ground truth (when the input has it), the input's instrument settings, plus
  settings["transfer_model"]: the identity of the model package that made the map, with the
  record of its `Preprocessor` (baseline parameters and scalers' settings);
- /map/transfer (NXcollection, written after the map is complete): `confidence` (ny, nx)
  float32, NaN where no spectrum was transferred, with attributes `method` and `definition`,
  and attributes `model` (package folder) and `input` (the input map).

pipeline does not import models (DESIGN.md): the model side is any object with the
`BlockTransfer` interface (plumelink.models.evaluate.PackageTransfer for a model package).
Only a group of raster lines (about block_spots spots) is ever in memory; a block smaller
than a raster line is fine (the line is transferred in pieces and written whole).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from . import map_layout as L
from .map_reader import MapReader
from .map_writer import DEFAULT_COMPRESSION, MapWriter
from .preprocess import Preprocessor
from .raster_line import LineTruth, RasterLine, SystemLine

TRANSFER_GROUP = f"{L.ENTRY}/transfer"
SETTINGS_KEY = "transfer_model"

# progress(spots done, spots total)
ProgressCallback = Callable[[int, int], None]


class BlockTransfer(Protocol):
    """What transfer_map needs from a model."""

    primary_wavelength_nm: np.ndarray
    preprocessor: Preprocessor  # the baseline correction and scalers the transfer applies
    needs_map_statistics: bool  # True: call fit_map with the map's secondary blocks first
    confidence_method: str
    confidence_definition: str

    def check_map(self, secondary_wavelength_nm: np.ndarray) -> None:
        """Raise ValueError when the map's secondary axis does not fit the model."""

    def fit_map(self, secondary_blocks: Iterable[np.ndarray]) -> None:
        """Fit per-map statistics (the paper's per-map scaling) on raw secondary blocks."""

    def identity(self) -> Mapping[str, Any]:
        """What to record in the output's settings (plain values and dicts)."""

    def __call__(self, secondary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw secondary counts (n, n_secondary_px) -> (primary (n, n_primary_px) float32,
        confidence (n,))."""


def transfer_map(
    input_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    transfer: BlockTransfer,
    *,
    block_spots: int = 4096,
    compression: str | None = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Transfer every valid secondary spectrum of a map; write the output map; return its path."""
    if isinstance(block_spots, bool) or int(block_spots) < 1:
        raise ValueError(f"block_spots must be >= 1, got {block_spots}")
    block_spots = int(block_spots)
    src, out = Path(input_path), Path(out_path)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the input map; write the transfer elsewhere")
    with MapReader(src) as reader:
        transfer.check_map(reader.secondary_wavelength_nm)
        if transfer.needs_map_statistics:
            transfer.fit_map(b for b, _ in reader.iter_blocks("secondary", block_spots))
        ny, nx = reader.shape
        done = reader.lines_done
        settings = dict(reader.settings)
        settings[SETTINGS_KEY] = dict(transfer.identity())
        meta = reader.metadata
        writer = MapWriter.create(
            out, ny=ny, nx=nx,
            primary_wavelength_nm=transfer.primary_wavelength_nm,
            secondary_wavelength_nm=reader.secondary_wavelength_nm,
            x_um=reader.x_um, y_um=reader.y_um,
            sample=meta.get("sample", ""), operator=meta.get("operator", ""),
            scan_config_toml=meta.get("scan_config", ""),
            raster_order=meta.get("raster_order") or "snake-horizontal",
            settings=settings, compression=compression,
            truth_elements=reader.truth_elements if reader.has_truth else None,
            mineral_names=reader.mineral_names if reader.has_truth else None,
            overwrite=overwrite, spectra_dtype="float32",
        )
        confidence = np.full((ny, nx), np.nan, np.float32)
        total = int(done.sum()) * nx
        n_done = 0
        if progress is not None:
            progress(0, total)
        with writer:
            lines_per_read = max(1, block_spots // nx)
            rows = np.flatnonzero(done)
            for start in range(0, rows.size, lines_per_read):
                lines = [reader.read_line(int(iy)) for iy in rows[start : start + lines_per_read]]
                for line, conf in zip(lines, _transfer_lines(lines, transfer, block_spots),
                                      strict=True):
                    writer.append_line(_output_line(line, *conf))
                    confidence[line.index] = conf[1]
                    n_done += nx
                if progress is not None:
                    progress(n_done, total)
            if not done.all():
                writer.close(L.STATUS_INTERRUPTED,
                             f"input map {src} has {int(done.sum())} of {ny} lines done")
    _write_confidence(out, confidence, transfer, src)
    return out


def _transfer_lines(lines: list[RasterLine], transfer: BlockTransfer,
                    block_spots: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(primary (nx, n_primary_px) float32 zeros where invalid, confidence (nx,) NaN where
    invalid)."""
    nx = lines[0].nx
    n_primary_px = len(transfer.primary_wavelength_nm)
    valid = np.concatenate([ln.secondary.valid for ln in lines])
    spectra = np.concatenate([ln.secondary.spectra for ln in lines])[valid]
    primary = np.zeros((valid.size, n_primary_px), np.float32)
    confidence = np.full(valid.size, np.nan, np.float32)
    where = np.flatnonzero(valid)
    for i in range(0, where.size, block_spots):
        p, c = transfer(spectra[i : i + block_spots].astype(np.float32))
        primary[where[i : i + block_spots]] = p
        confidence[where[i : i + block_spots]] = c
    return [(primary[k * nx : (k + 1) * nx], confidence[k * nx : (k + 1) * nx])
            for k in range(len(lines))]


def _output_line(line: RasterLine, primary: np.ndarray, confidence: np.ndarray) -> RasterLine:
    sec = line.secondary
    nx = line.nx
    return RasterLine(
        index=line.index, x_um=line.x_um, y_um=line.y_um,
        x_measured_um=line.x_measured_um, y_measured_um=line.y_measured_um,
        shot_id=line.shot_id,
        primary=SystemLine(spectra=primary, valid=sec.valid.copy(),
                           frame_id=np.full(nx, -1, np.int64),
                           timestamp_s=np.full(nx, np.nan)),
        secondary=SystemLine(spectra=sec.spectra.astype(np.float32), valid=sec.valid,
                             frame_id=sec.frame_id, timestamp_s=sec.timestamp_s,
                             emissivity=sec.emissivity),
        truth=(None if line.truth is None
               else LineTruth(mineral=line.truth.mineral, composition=line.truth.composition)),
    )


def _write_confidence(path: Path, confidence: np.ndarray, transfer: BlockTransfer,
                      src: Path) -> None:
    with h5py.File(path, "a") as f:
        group = f.create_group(TRANSFER_GROUP)
        group.attrs["NX_class"] = L.NX_COLLECTION
        group.attrs["model"] = str(transfer.identity().get("folder", ""))
        group.attrs["input"] = str(src)
        data = group.create_dataset("confidence", data=confidence, chunks=(1, confidence.shape[1]))
        data.attrs["method"] = transfer.confidence_method
        data.attrs["definition"] = transfer.confidence_definition


def read_confidence(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The (ny, nx) confidence of a transferred map, or None for a map without one."""
    with h5py.File(path, "r") as f:
        data = f.get(f"{TRANSFER_GROUP}/confidence")
        return None if data is None else data[()]


__all__ = ["SETTINGS_KEY", "TRANSFER_GROUP", "BlockTransfer", "read_confidence", "transfer_map"]
