"""Apply a spectral transfer to a whole map, group by group, into a new map file.

The output is an ordinary plumelink map (so the GUI, silx or h5web open it like any other):

- /map/primary/spectra: the TRANSFERRED primary spectra (float32, baseline-corrected counts on
  the model's primary wavelength axis), valid where the input's secondary spot is valid;
  primary frame_id -1 and timestamp NaN (no primary spectrometer recorded them);
- /map/secondary: a copy of the input's secondary spectra, valid flags, frame ids,
  timestamps and emissivity; the spectra as the input stores them (same dtype and filter,
  chunks copied byte for byte) when the input has one raster line per chunk with no filter or
  deflate, float32 otherwise;
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
(float16) or plain readability (scaled integers), so float32 it is. The secondary copy keeps
the input's storage: a default map's deflated uint16 counts, about 4,300 bytes per 3,872-pixel
spectrum instead of 15,488 as float32 (a 250,000-spectrum transfer writes 5 GB, not 8).

pipeline does not import models (DESIGN.md): the model side is any object with the
`BlockTransfer` interface (plumelink.models.evaluate.PackageTransfer for a model package).
The input is read in groups of whole raster lines (about GROUP_SPOTS spots, at least one line
per prepare thread; secondary system and spot fields only). In turns, the networks transfer a
group on all cores, then PREPARE_THREADS workers decode and prepare (baseline, scaling) the
next one, each its own lines, while a writing thread writes the group just transferred, so
three groups are in memory (peak RSS in benchmarks/bench_transfer.py). A group's valid spectra
go to the model block_spots at a time, and the networks write them straight into the group's
array. After each group the writer releases the output's pages from the page cache
(`MapWriter.release_written_pages`): 5 GB written once need not fill it.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from .map_filters import filter_ids, line_chunk_decoder
from .map_layout import CorruptMapError
from .map_reader import MapReader, open_map_file
from .map_writer import SPECTRA_DTYPES, MapWriter
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
    """A BlockTransfer in two steps, so that the preprocessing of a group runs on worker
    threads, part by part, and the networks get every core for theirs: ``transfer(x)`` must
    equal ``transfer.finish(transfer.prepare(x))``; prepare must be thread-safe."""

    def prepare(self, secondary: np.ndarray) -> Any:
        """Raw secondary counts (n, n_secondary_px) -> the model's prepared inputs."""

    def finish(self, prepared: Any, out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Prepared inputs -> (primary (n, n_primary_px) float32, confidence (n,)); the
        primary spectra written into `out` (C-contiguous float32) when given."""

    def warm_up(self) -> None:
        """Build what finish needs (a model's folded weights), before the first group is
        prepared (a fold that runs on every core stalls beside the preparing threads)."""


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

    timings: when given, filled with the seconds spent in each step ("read" on this thread,
    "prepare" summed over the worker threads, "transfer" on this thread, "write" on the
    writing thread, so they overlap; and "total"), for the benchmark."""
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
        done, partial = reader.lines_done, ""
        columns = reader.columns_done  # a vertical raster's raster lines are its columns
        if not done.all():
            partial = f"input map {src} has {int(done.sum())} of {ny} lines done"
        if columns is not None and columns.any() and not done.all():
            # rows are flagged once every column is in; the rows of the columns done hold
            # their spots, the others' spots are not valid (never acquired): every row goes
            done = np.ones(ny, bool)
            partial = f"input map {src} has {int(columns.sum())} of {nx} columns done"
        settings = dict(reader.settings)
        settings[SETTINGS_KEY] = dict(transfer.identity())
        source = _GroupReader(src, reader.has_truth)
        try:
            writer = _create_output(out, reader, transfer, source, settings, compression,
                                    overwrite)
        except BaseException:
            source.close()
            raise
        confidence = np.full((ny, nx), np.nan, np.float32)
        total = int(done.sum()) * nx
        if progress is not None:
            progress(0, total)
        runs = _runs(np.flatnonzero(done),
                     max(PREPARE_THREADS, min(block_spots, GROUP_SPOTS) // nx))
        try:
            with writer:
                _run_pipeline(source, writer, transfer, runs, block_spots, confidence,
                              (reader.x_um, reader.y_um), progress, total, steps)
                if partial:
                    writer.close(L.STATUS_INTERRUPTED, partial)
        finally:
            source.close()
    _write_confidence(out, confidence, transfer, src)
    if timings is not None:
        timings.update(steps, total=time.perf_counter() - t0)
    return out


def _create_output(out: Path, reader: MapReader, transfer: BlockTransfer, source: _GroupReader,
                   settings: dict[str, Any], compression: str | None,
                   overwrite: bool) -> MapWriter:
    """The output map: primary float32 with `compression`; the secondary stored as the input
    stores it when its chunks can be copied as they are (`_GroupReader.stored_as`)."""
    ny, nx = reader.shape
    meta = reader.metadata
    stored = source.stored_as
    return MapWriter.create(
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
        system_storage=None if stored is None else {"secondary": stored},
        by_rows=True,  # transferred in groups of rows, whatever the raster order
    )


@dataclass
class _Group:
    """Consecutive raster lines [start, stop) of the input, as the transfer needs them: the
    secondary system and the spot fields, never the input's primary spectra."""

    start: int
    fields: dict[str, np.ndarray]  # name -> (n_lines, nx, ...)
    spectra: np.ndarray  # (n_lines, nx, n_secondary_px) as stored; filled by the parts
    chunks: list[bytes] | None  # each line's stored chunk, decoded by the parts; None: read
    parts: list[Future[list[tuple[np.ndarray, Any]]]] = dataclasses.field(default_factory=list)

    @property
    def n_lines(self) -> int:
        return int(self.spectra.shape[0])

    def prepared(self) -> list[tuple[np.ndarray, Any]]:
        """(spot rows, prepared block) of every part, in spot order (waits for the parts)."""
        return [block for part in self.parts for block in part.result()]


_SECONDARY = L.system_path("secondary")
_FIELDS = {"valid": f"{_SECONDARY}/valid", "frame_id": f"{_SECONDARY}/frame_id",
           "timestamp": f"{_SECONDARY}/timestamp", "emissivity": f"{L.EMISSIVITY}/secondary",
           **{name: f"{L.RASTER}/{name}" for name in ("x_measured", "y_measured", "shot_id")}}
_TRUTH_FIELDS = {"mineral": f"{L.TRUTH}/mineral", "composition": f"{L.TRUTH}/composition"}


class _GroupReader:
    """Reads runs of whole raster lines of the input with one read per dataset.

    `MapReader.read_line` reads both systems and a dozen small datasets per line (100 µs per
    spectrum on the small test map, a third of the compute); the transfer needs neither the
    input's primary spectra nor line-by-line reads. Spectra stored one line per chunk with
    the default filter are read as stored bytes (fast) and decoded by the parts on worker
    threads (`map_filters.line_chunk_decoder`); any other layout is read by HDF5 here."""

    def __init__(self, path: Path, truth: bool) -> None:
        self.path = path
        self.file = open_map_file(path)
        names = {**_FIELDS, **(_TRUTH_FIELDS if truth else {})}
        self.spectra = self.file[f"{_SECONDARY}/{L.SPECTRA}"]
        self.decode = line_chunk_decoder(self.spectra)
        self.fields = {name: self.file[where] for name, where in names.items()}
        #: (dtype, compression) of the input's secondary spectra when their chunks can be
        #: copied into the output as they are; None otherwise (the output stores float32)
        self.stored_as: tuple[str, str | None] | None = None
        if self.decode is not None and self.spectra.dtype.name in SPECTRA_DTYPES:
            self.stored_as = (self.spectra.dtype.name,
                              "gzip" if filter_ids(self.spectra) else None)

    def read(self, start: int, stop: int) -> _Group:
        try:
            fields = {name: d[start:stop] for name, d in self.fields.items()}
            chunks = self._chunks(start, stop)
            if chunks is None:
                spectra = self.spectra[start:stop]
            else:
                spectra = np.empty((stop - start, *self.spectra.shape[1:]), self.spectra.dtype)
        except OSError as exc:
            raise CorruptMapError(f"map file {L.describe(self.path)}: lines {start}..{stop - 1} "
                                  f"cannot be read; the file may be truncated or damaged "
                                  f"({exc})") from exc
        return _Group(start, fields, spectra, chunks)

    def _chunks(self, start: int, stop: int) -> list[bytes] | None:
        """The stored bytes of lines [start, stop), or None when HDF5 must decode them (other
        layout or filter, a chunk never written, a filter skipped for a chunk)."""
        if self.decode is None:
            return None
        chunks = []
        for iy in range(start, stop):
            try:
                mask, data = self.spectra.id.read_direct_chunk((iy, 0, 0))
            except (OSError, ValueError, KeyError):
                return None
            if mask:
                return None
            chunks.append(data)
        return chunks

    def decode_lines(self, group: _Group, lines: range) -> None:
        """Decode the group's stored chunks of `lines` into group.spectra (a worker's part)."""
        assert group.chunks is not None and self.decode is not None
        for k in lines:
            try:
                self.decode(group.chunks[k], group.spectra[k])
            except (ValueError, OSError) as exc:  # isal/zlib: corrupt stream
                raise CorruptMapError(
                    f"map file {L.describe(self.path)}: line {group.start + k} of the "
                    f"secondary spectra cannot be decoded; the file may be damaged "
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


PREPARE_THREADS = 2
"""Worker threads that decode and prepare a group's lines (numpy, scipy and ISA-L release the
GIL), each on its own lines: on the 2-core target both cores prepare while the networks wait,
then both run the networks."""


def _run_pipeline(source: _GroupReader, writer: MapWriter, transfer: BlockTransfer,
                  runs: list[tuple[int, int]], block_spots: int, confidence: np.ndarray,
                  axes: tuple[np.ndarray, np.ndarray], progress: ProgressCallback | None,
                  total: int, steps: dict[str, float]) -> None:
    """In turns: the networks transfer group k on every core (torch's threads); then the
    worker threads decode and prepare group k+1 while the writing thread writes group k.

    Why turns and not the networks alongside the rest: torch splits each matrix product
    evenly over its threads, so a core taken by anything else stalls the whole product.
    Measured on the 250,000-spectrum map (2 cores): with the preparation alongside, the
    networks ran at half their speed; with the writing alongside, the whole took 53 s
    against 50 s in turns; with the other threads at SCHED_IDLE priority, 53 s; with the
    writing held for the next networks' turn (the workers then prepare without the writer's
    GIL-holding h5py calls), 42-44 s against 39-41 s, after the page-cache release. Bounded:
    three groups of raster lines are in memory. This thread reads the input, the writing
    thread owns the output; the workers see bytes and arrays only. Errors of either come
    back through their futures and stop the transfer."""
    nx = confidence.shape[1]
    staged = isinstance(transfer, StagedTransfer)

    def timed(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args)
            finally:
                steps[step] += time.perf_counter() - t
                steps[f"{step}_cpu"] = steps.get(f"{step}_cpu", 0.0) + time.thread_time() - cpu
        return run

    def part(group: _Group, lines: range) -> list[tuple[np.ndarray, Any]]:
        if group.chunks is not None:
            source.decode_lines(group, lines)
        if not staged:
            return []
        assert isinstance(transfer, StagedTransfer)
        return _prepare_lines(group, lines, transfer, block_spots)

    def start(pool: ThreadPoolExecutor, k: int) -> _Group:
        group = timed("read", source.read)(*runs[k])
        for lines in _parts(group.n_lines, PREPARE_THREADS):
            group.parts.append(pool.submit(timed("prepare", part), group, lines))
        return group

    copy = source.stored_as is not None  # the output's secondary is stored as the input's

    def write_group(group: _Group, primary: np.ndarray) -> None:
        for k in range(group.n_lines):
            stored = ({"secondary": group.chunks[k]} if copy and group.chunks is not None
                      else None)
            writer.append_line(_output_line(group, k, primary[k], axes, copy), stored)
        writer.release_written_pages()  # gigabytes written once: keep the page cache small

    write, compute = timed("write", write_group), timed("transfer", _transfer_group)
    steps.setdefault("prepare", 0.0)
    n_done = 0
    with (ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="plumelink-prepare") as pool,
          ThreadPoolExecutor(1, thread_name_prefix="plumelink-transfer-write") as writes):
        if runs and isinstance(transfer, StagedTransfer):
            transfer.warm_up()
        group = start(pool, 0) if runs else None
        writing: tuple[Future[None], int] | None = None
        for k in range(len(runs)):
            assert group is not None
            prepared = group.prepared()  # waits for the workers; raises their errors
            if writing is not None:  # the networks run alone: the writing waits for them
                n_done = _written(writing, n_done, total, progress)
            primary, conf = compute(group, transfer, block_spots,
                                    prepared if staged else None)
            confidence[group.start : group.start + group.n_lines] = conf
            following = start(pool, k + 1) if k + 1 < len(runs) else None
            writing = (writes.submit(write, group, primary), group.n_lines * nx)
            group = following
        if writing is not None:
            _written(writing, n_done, total, progress)


def _written(writing: tuple[Future[None], int], n_done: int, total: int,
             progress: ProgressCallback | None) -> int:
    writing[0].result()
    n_done += writing[1]
    if progress is not None:
        progress(n_done, total)
    return n_done


def _parts(n_lines: int, n: int) -> list[range]:
    """Up to n ranges of whole lines covering range(n_lines), as even as lines allow."""
    bounds = np.linspace(0, n_lines, min(n, n_lines) + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _valid_rows(group: _Group, lines: range | None = None) -> np.ndarray:
    """Flat spot indices (within the group) of the valid spots of `lines` (default: all)."""
    valid = group.fields["valid"].astype(bool)
    nx = valid.shape[1]
    lines = range(group.n_lines) if lines is None else lines
    return np.flatnonzero(valid[lines.start : lines.stop].reshape(-1)) + lines.start * nx


def _blocks(rows: np.ndarray, block_spots: int) -> list[np.ndarray]:
    return [rows[i : i + block_spots] for i in range(0, rows.size, block_spots)]


def _transfer_group(group: _Group, transfer: BlockTransfer, block_spots: int,
                    prepared: list[tuple[np.ndarray, Any]] | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(primary (n_lines, nx, n_primary_px) float32 zeros where invalid, confidence
    (n_lines, nx) NaN where invalid)."""
    n_lines, nx, n_px = group.spectra.shape
    n_primary_px = len(transfer.primary_wavelength_nm)
    spectra = group.spectra.reshape(-1, n_px)
    confidence = np.full(n_lines * nx, np.nan, np.float32)
    if prepared is None:
        prepared = [(rows, None) for rows in _blocks(_valid_rows(group), block_spots)]
    every = sum(rows.size for rows, _ in prepared) == n_lines * nx
    # every spot valid (the usual map): the networks write straight into the group's array
    primary = (np.empty if every else np.zeros)((n_lines * nx, n_primary_px), np.float32)
    for rows, inputs in prepared:
        run = (slice(int(rows[0]), int(rows[-1]) + 1)
               if rows.size and rows[-1] - rows[0] + 1 == rows.size else None)
        if inputs is not None:
            assert isinstance(transfer, StagedTransfer)
            p, c = transfer.finish(inputs, out=None if run is None else primary[run])
        else:
            run = None
            p, c = transfer(spectra[rows].astype(np.float32, copy=False))
        if run is None:
            primary[rows] = p
        confidence[rows] = c
    return primary.reshape(n_lines, nx, n_primary_px), confidence.reshape(n_lines, nx)


def _prepare_lines(group: _Group, lines: range, transfer: StagedTransfer,
                   block_spots: int) -> list[tuple[np.ndarray, Any]]:
    """(spot rows, StagedTransfer.prepare of them) for the valid spots of `lines`, block by
    block (on a worker thread)."""
    spectra = group.spectra.reshape(-1, group.spectra.shape[2])
    return [(rows, transfer.prepare(spectra[rows]))
            for rows in _blocks(_valid_rows(group, lines), block_spots)]


def _output_line(group: _Group, k: int, primary: np.ndarray,
                 axes: tuple[np.ndarray, np.ndarray], as_stored: bool) -> RasterLine:
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
        secondary=SystemLine(spectra=(group.spectra[k] if as_stored
                                      else group.spectra[k].astype(np.float32)), valid=valid,
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
