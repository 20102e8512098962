"""Apply a spectral transfer to a whole map, group by group, into a new map file.

The output is an ordinary plumelink map (so the GUI, silx or h5web open it like any other):

- /map/primary/spectra: the TRANSFERRED primary spectra (float32, baseline-corrected counts on
  the model's primary wavelength axis), valid where the input's secondary spot is valid;
  primary frame_id -1 and timestamp NaN (no primary spectrometer recorded them);
- /map/secondary: a copy of the input's secondary spectra (as float32), valid flags, frame ids,
  timestamps and emissivity;
- raster, ground truth (when the input has it), the input's instrument settings, plus
  settings["transfer_model"]: the identity of the model package that made the map, the
  arithmetic of its networks ("precision": fp32 or bf16) and the record of its
  `Preprocessor` (baseline parameters and scalers' settings);
- /map/transfer (NXcollection, written after the map is complete): `confidence` (ny, nx)
  float32, NaN where no spectrum was transferred, with attributes `method` and `definition`,
  and attributes `model` (package folder) and `input` (the input map); with a calibrated
  model (`PackageTransfer.calibrate`), `interval_radius` (ny, nx): the radius of the
  prediction interval at its `level` (see `plumelink.models.intervals`), and
  `band_interval_radius` (ny, nx, n_bands): the same per ~2 nm band of the primary axis.

Storage: the spectra are stored as float32 without any filter by default (compression=None),
so every HDF5 reader opens them with no plugin, and what is stored is exactly what the
networks computed. Measured on the small test map's transfer (4,062-pixel spectra, values
-2,324 to 20,542 counts):

- float32, no filter: 16,250 bytes per spectrum, error 0, written at ~59,000 spectra/s;
- float32, deflate + shuffle (level 1): 13,156 bytes (19 % less) but ~2,300 spectra/s on one
  core, slower than the networks themselves;
- float16: 8,124 bytes, error up to 4.9e-4 of each value; but it overflows above 65,504
  counts, inside a 16-bit detector's range, so a saturated line would be stored as inf;
- int16 scaled per spectrum: 8,124 bytes plus a scale, error 1.5e-5 of a spectrum's peak;
  but a plain reader gets integers, not counts, unless it applies the scale.

A transferred spectrum is a network's float32 output; halving it would cost either range
(float16) or plain readability (scaled integers), so float32 it is. The secondary copy is
stored the same way (float32: one dtype per map), 15,488 bytes for 3,872 pixels.

pipeline does not import models (DESIGN.md): the model side is any object with the
`BlockTransfer` interface (plumelink.models.evaluate.PackageTransfer for a model package).
The input is read in groups of whole raster lines (about GROUP_SPOTS spots, secondary system
and spot fields only); while a group is transferred, the next one is read and the previous one
written, each on its own thread, so about three groups are in memory (peak RSS in
benchmarks/bench_transfer.py). A group's valid spectra go to the model block_spots at a time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import h5py
import numpy as np

from . import map_layout as L
from .map_layout import CorruptMapError
from .map_reader import MapReader, open_map_file
from .map_writer import MapWriter
from .preprocess import Preprocessor
from .raster_line import LineTruth, RasterLine, SystemLine

TRANSFER_GROUP = f"{L.ENTRY}/transfer"
GROUP_SPOTS = 1024
"""Spots read, transferred and written as one group (whole raster lines, at least one): small
enough that reading, the networks and writing overlap even on a 2,500-spot map (one group of
4,096 spots was the whole small map, read, transferred and written one after the other)."""
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


@runtime_checkable
class StagedTransfer(BlockTransfer, Protocol):
    """A BlockTransfer in two steps, so that the preprocessing of a group runs on the reading
    thread while the networks transfer the previous group: ``transfer(x)`` must equal
    ``transfer.finish(transfer.prepare(x))``."""

    def prepare(self, secondary: np.ndarray) -> Any:
        """Raw secondary counts (n, n_secondary_px) -> the model's prepared inputs."""

    def finish(self, prepared: Any) -> tuple[np.ndarray, np.ndarray]:
        """Prepared inputs -> (primary (n, n_primary_px) float32, confidence (n,))."""


def transfer_map(
    input_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    transfer: BlockTransfer,
    *,
    block_spots: int = 4096,
    compression: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> Path:
    """Transfer every valid secondary spectrum of a map; write the output map; return its path.

    timings: when given, filled with the seconds spent in each step ("read" and "prepare" on
    the reading thread, "transfer" on this one, "write" on the writing thread, so they
    overlap; and "total"), for the benchmark."""
    t0 = time.perf_counter()
    steps: dict[str, float] = {"read": 0.0, "transfer": 0.0, "write": 0.0}
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
        if progress is not None:
            progress(0, total)
        runs = _runs(np.flatnonzero(done), max(1, min(block_spots, GROUP_SPOTS) // nx))
        source = _GroupReader(src, reader.has_truth)
        try:
            with writer:
                _run_pipeline(source, writer, transfer, runs, block_spots, confidence,
                              (reader.x_um, reader.y_um), progress, total, steps)
                if not done.all():
                    writer.close(L.STATUS_INTERRUPTED,
                                 f"input map {src} has {int(done.sum())} of {ny} lines done")
        finally:
            source.close()
    _write_confidence(out, confidence, transfer, src)
    if timings is not None:
        timings.update(steps, total=time.perf_counter() - t0)
    return out


@dataclass(frozen=True)
class _Group:
    """Consecutive raster lines [start, stop) of the input, as the transfer needs them: the
    secondary system and the spot fields, never the input's primary spectra."""

    start: int
    spectra: np.ndarray  # (n_lines, nx, n_secondary_px) as stored
    fields: dict[str, np.ndarray]  # name -> (n_lines, nx, ...)
    prepared: list[Any] | None = None  # StagedTransfer.prepare of each block of valid spots

    @property
    def n_lines(self) -> int:
        return int(self.spectra.shape[0])


_SECONDARY = L.system_path("secondary")
_FIELDS = {"valid": f"{_SECONDARY}/valid", "frame_id": f"{_SECONDARY}/frame_id",
           "timestamp": f"{_SECONDARY}/timestamp", "emissivity": f"{L.EMISSIVITY}/secondary",
           **{name: f"{L.RASTER}/{name}" for name in ("x_measured", "y_measured", "shot_id")}}
_TRUTH_FIELDS = {"mineral": f"{L.TRUTH}/mineral", "composition": f"{L.TRUTH}/composition"}


class _GroupReader:
    """Reads runs of whole raster lines of the input with one read per dataset.

    `MapReader.read_line` reads both systems and a dozen small datasets per line (100 µs per
    spectrum on the small test map, a third of the compute); the transfer needs neither the
    input's primary spectra nor line-by-line reads."""

    def __init__(self, path: Path, truth: bool) -> None:
        self.path = path
        self.file = open_map_file(path)
        names = {**_FIELDS, **(_TRUTH_FIELDS if truth else {})}
        self.spectra = self.file[f"{_SECONDARY}/{L.SPECTRA}"]
        self.fields = {name: self.file[where] for name, where in names.items()}

    def read(self, start: int, stop: int) -> _Group:
        try:
            return _Group(start, self.spectra[start:stop],
                          {name: d[start:stop] for name, d in self.fields.items()})
        except OSError as exc:
            raise CorruptMapError(f"map file {L.describe(self.path)}: lines {start}..{stop - 1} "
                                  f"cannot be read; the file may be truncated or damaged "
                                  f"({exc})") from exc

    def close(self) -> None:
        self.file.close()


def _runs(rows: np.ndarray, max_lines: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive rows, each run cut to at most max_lines lines."""
    runs: list[tuple[int, int]] = []
    for row in rows.tolist():
        if runs and runs[-1][1] == row and row - runs[-1][0] < max_lines:
            runs[-1] = (runs[-1][0], row + 1)
        else:
            runs.append((row, row + 1))
    return runs


def _run_pipeline(source: _GroupReader, writer: MapWriter, transfer: BlockTransfer,
                  runs: list[tuple[int, int]], block_spots: int, confidence: np.ndarray,
                  axes: tuple[np.ndarray, np.ndarray], progress: ProgressCallback | None,
                  total: int, steps: dict[str, float]) -> None:
    """Read group k+1 and write group k-1 on their own threads while group k is transferred.

    Bounded: at most one group read ahead and one being written, so about three groups of
    raster lines are in memory. Each thread owns its file (the input's or the output's);
    errors of either come back through their futures and stop the transfer. The networks
    (torch) and numpy release the GIL; h5py reads and writes hold it, so the overlap is
    partial: what it buys was measured by benchmarks/bench_transfer.py."""
    nx = confidence.shape[1]

    def timed(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                steps[step] += time.perf_counter() - t
        return run

    def write_group(group: _Group, primary: np.ndarray) -> None:
        for k in range(group.n_lines):
            writer.append_line(_output_line(group, k, primary[k], axes))

    def read_group(start: int, stop: int) -> _Group:
        group = timed("read", source.read)(start, stop)
        if not isinstance(transfer, StagedTransfer):
            return group
        return timed("prepare", _prepare_group)(group, transfer, block_spots)

    read, write = read_group, timed("write", write_group)
    compute = timed("transfer", _transfer_group)
    steps.setdefault("prepare", 0.0)

    n_done = 0
    with (ThreadPoolExecutor(1, thread_name_prefix="plumelink-transfer-read") as reads,
          ThreadPoolExecutor(1, thread_name_prefix="plumelink-transfer-write") as writes):
        ahead: Future[_Group] | None = reads.submit(read, *runs[0]) if runs else None
        writing: tuple[Future[None], int] | None = None
        for k in range(len(runs)):
            assert ahead is not None
            group = ahead.result()
            ahead = reads.submit(read, *runs[k + 1]) if k + 1 < len(runs) else None
            primary, conf = compute(group, transfer, block_spots)
            confidence[group.start : group.start + group.n_lines] = conf
            if writing is not None:
                n_done = _written(writing, n_done, total, progress)
            writing = (writes.submit(write, group, primary), group.n_lines * nx)
        if writing is not None:
            _written(writing, n_done, total, progress)


def _written(writing: tuple[Future[None], int], n_done: int, total: int,
             progress: ProgressCallback | None) -> int:
    writing[0].result()
    n_done += writing[1]
    if progress is not None:
        progress(n_done, total)
    return n_done


def _transfer_group(group: _Group, transfer: BlockTransfer,
                    block_spots: int) -> tuple[np.ndarray, np.ndarray]:
    """(primary (n_lines, nx, n_primary_px) float32 zeros where invalid, confidence
    (n_lines, nx) NaN where invalid)."""
    n_lines, nx, n_px = group.spectra.shape
    n_primary_px = len(transfer.primary_wavelength_nm)
    valid = group.fields["valid"].reshape(-1).astype(bool)
    where = np.flatnonzero(valid)
    spectra = group.spectra.reshape(-1, n_px)
    primary = np.zeros((valid.size, n_primary_px), np.float32)
    confidence = np.full(valid.size, np.nan, np.float32)
    for k, i in enumerate(range(0, where.size, block_spots)):
        rows = where[i : i + block_spots]
        if group.prepared is not None:
            assert isinstance(transfer, StagedTransfer)
            p, c = transfer.finish(group.prepared[k])
        else:
            p, c = transfer(spectra[rows].astype(np.float32, copy=False))
        primary[rows] = p
        confidence[rows] = c
    return primary.reshape(n_lines, nx, n_primary_px), confidence.reshape(n_lines, nx)


def _prepare_group(group: _Group, transfer: StagedTransfer, block_spots: int) -> _Group:
    """The group with its valid spectra prepared, block by block as `_transfer_group` uses
    them (on the reading thread)."""
    spectra = group.spectra.reshape(-1, group.spectra.shape[2])
    where = np.flatnonzero(group.fields["valid"].reshape(-1).astype(bool))
    prepared = [transfer.prepare(spectra[where[i : i + block_spots]].astype(np.float32,
                                                                             copy=False))
                for i in range(0, where.size, block_spots)]
    return dataclasses.replace(group, prepared=prepared)


def _output_line(group: _Group, k: int, primary: np.ndarray,
                 axes: tuple[np.ndarray, np.ndarray]) -> RasterLine:
    f = {name: value[k] for name, value in group.fields.items()}
    nx = primary.shape[0]
    valid = f["valid"].astype(bool)
    iy = group.start + k
    return RasterLine(
        index=iy, x_um=axes[0], y_um=np.full(nx, axes[1][iy]),
        x_measured_um=f["x_measured"], y_measured_um=f["y_measured"], shot_id=f["shot_id"],
        primary=SystemLine(spectra=primary, valid=valid,
                           frame_id=np.full(nx, -1, np.int64),
                           timestamp_s=np.full(nx, np.nan)),
        secondary=SystemLine(spectra=group.spectra[k].astype(np.float32), valid=valid,
                             frame_id=f["frame_id"], timestamp_s=f["timestamp"],
                             emissivity=f["emissivity"]),
        truth=(LineTruth(mineral=f["mineral"], composition=f["composition"])
               if "mineral" in f else None),
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
        intervals = getattr(transfer, "intervals", None)  # calibrated, when the model has them
        if intervals is not None:
            radius = intervals.radius_for(confidence).astype(np.float32)
            d = group.create_dataset("interval_radius", data=radius,
                                     chunks=(1, confidence.shape[1]))
            d.attrs.update(
                level=intervals.level, units="counts",
                definition=f"the true primary spectrum lies within this Euclidean distance of "
                           f"the transferred one with probability >= {intervals.level:.0%} "
                           "for spots like the calibration map's (split-conformal by "
                           "confidence bins); NaN where nothing was transferred",
                calibration_map=str(getattr(transfer, "calibration_map", "") or ""),
                n_calibration=int(intervals.n_calibration))
            if getattr(intervals, "band_radius", None) is not None:
                bands = intervals.band_radius_for(confidence).astype(np.float32)
                d = group.create_dataset("band_interval_radius", data=bands,
                                         chunks=(1, *bands.shape[1:]))
                d.attrs.update(
                    level=intervals.level, units="counts",
                    band_lo_nm=np.asarray(intervals.band_nm, np.float64)[:, 0],
                    band_hi_nm=np.asarray(intervals.band_nm, np.float64)[:, 1],
                    definition="per spot and wavelength band (last axis; bounds in band_lo_nm, "
                               "band_hi_nm): the Euclidean distance over the band's pixels "
                               "between the true and the transferred primary spectrum is "
                               f"within this radius with probability >= {intervals.level:.0%} "
                               "(each band on its own); NaN where nothing was transferred")


def read_confidence(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The (ny, nx) confidence of a transferred map, or None for a map without one."""
    with h5py.File(path, "r") as f:
        data = f.get(f"{TRANSFER_GROUP}/confidence")
        return None if data is None else data[()]


__all__ = ["GROUP_SPOTS", "SETTINGS_KEY", "TRANSFER_GROUP", "BlockTransfer", "StagedTransfer",
           "read_confidence", "transfer_map"]
