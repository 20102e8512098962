"""Paired spectra of a map: what spectral transfer trains on and is evaluated with.

A pair is one spot that both systems recorded validly: its primary spectrum is the target,
its secondary spectrum the input. Pairs are read from a map file line by line through
MapReader: load_pairs for maps that fit in memory, iter_pair_blocks for training at scale
(blocks of whole raster lines, never the whole map).

Random access at scale (what streaming training uses): `pair_line_runs` cuts the done lines
of a map into runs of whole raster lines (the store chunks one raster line per chunk, so a
run is chunk-aligned), `pair_counts` says how many pairs each run holds (reading only the
validity masks), and `read_pair_run` reads one run's pairs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from . import map_layout as L
from .map_reader import MapReader
from .preprocess import DEFAULT_BASELINE, Baseline
from .raster_line import RasterLine

MAX_IN_MEMORY_SPOTS = 50_000
"""Default limit of load_pairs: spots of a map read whole into memory."""


class IncompleteMapError(ValueError):
    """The map has raster lines that are not written (interrupted or still running scan)."""


@dataclass(frozen=True, eq=False)
class PairedSpectra:
    """Spots of one map recorded by both systems, in storage order (flat index increasing).

    primary (n, n_primary_px) and secondary (n, n_secondary_px) float32 counts; index (n,)
    int64 flat spot index iy * nx + ix of a map of shape (ny, nx); mineral (n,) int16
    ground-truth label, or None when the map has no ground truth.
    """

    primary: np.ndarray
    secondary: np.ndarray
    index: np.ndarray
    shape: tuple[int, int]
    primary_wavelength_nm: np.ndarray
    secondary_wavelength_nm: np.ndarray
    mineral: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.index.shape[0] if self.index.ndim == 1 else -1
        if self.index.dtype != np.int64 or n < 0:
            raise ValueError(
                f"PairedSpectra.index must be 1-D int64, got {self.index.dtype} "
                f"{self.index.shape}"
            )
        for name, axis in (
            ("primary", self.primary_wavelength_nm),
            ("secondary", self.secondary_wavelength_nm),
        ):
            spectra = getattr(self, name)
            if spectra.dtype != np.float32 or spectra.shape != (n, axis.size):
                raise ValueError(
                    f"PairedSpectra.{name} must be float32 of shape ({n}, {axis.size}) "
                    f"(spots, {name} pixels), got {spectra.dtype} {spectra.shape}"
                )
        if self.mineral is not None and (
            self.mineral.dtype != np.int16 or self.mineral.shape != (n,)
        ):
            raise ValueError(
                f"PairedSpectra.mineral must be int16 of shape ({n},), got "
                f"{self.mineral.dtype} {self.mineral.shape}"
            )
        ny, nx = self.shape
        if n and (self.index.min() < 0 or self.index.max() >= ny * nx):
            raise ValueError(f"PairedSpectra.index has spots outside a {ny} x {nx} map")

    def take(self, rows: slice | np.ndarray) -> PairedSpectra:
        """These pairs at ``rows`` (a slice, or row numbers / a mask), same map and axes."""
        return replace(self, primary=self.primary[rows], secondary=self.secondary[rows],
                       index=self.index[rows],
                       mineral=None if self.mineral is None else self.mineral[rows])

    @property
    def n(self) -> int:
        return int(self.index.shape[0])

    @property
    def iy(self) -> np.ndarray:
        return self.index // self.shape[1]

    @property
    def ix(self) -> np.ndarray:
        return self.index % self.shape[1]

    def __len__(self) -> int:
        return self.n


def _done_lines(reader: MapReader, complete_lines_only: bool) -> np.ndarray:
    """Indices of the lines to read; IncompleteMapError when some are missing and not allowed."""
    done = reader.lines_done
    if not done.all() and not complete_lines_only:
        raise IncompleteMapError(
            f"map file {L.describe(reader.path)} has {int(done.sum())} of {done.size} raster "
            f"lines done (status {reader.status!r}: an interrupted or unfinished scan); "
            "pass complete_lines_only=True to use only the done lines"
        )
    return np.flatnonzero(done)


def _pairs_of_lines(
    reader: MapReader, lines: list[RasterLine], valid_only: bool
) -> PairedSpectra:
    ny, nx = reader.shape
    primary = np.concatenate([line.primary.spectra for line in lines])
    secondary = np.concatenate([line.secondary.spectra for line in lines])
    index = np.concatenate(
        [np.arange(line.index * nx, (line.index + 1) * nx, dtype=np.int64) for line in lines]
    )
    mineral = None
    if reader.has_truth:
        mineral = np.concatenate([line.truth.mineral for line in lines if line.truth is not None])
    if valid_only:
        keep = np.concatenate([line.primary.valid & line.secondary.valid for line in lines])
        primary, secondary, index = primary[keep], secondary[keep], index[keep]
        mineral = None if mineral is None else mineral[keep]
    return PairedSpectra(
        primary=primary.astype(np.float32),
        secondary=secondary.astype(np.float32),
        index=index,
        shape=(ny, nx),
        primary_wavelength_nm=reader.primary_wavelength_nm,
        secondary_wavelength_nm=reader.secondary_wavelength_nm,
        mineral=mineral,
    )


def _empty(reader: MapReader) -> PairedSpectra:
    p, s = reader.primary_wavelength_nm, reader.secondary_wavelength_nm
    return PairedSpectra(
        primary=np.zeros((0, p.size), np.float32),
        secondary=np.zeros((0, s.size), np.float32),
        index=np.zeros(0, np.int64),
        shape=reader.shape,
        primary_wavelength_nm=p,
        secondary_wavelength_nm=s,
        mineral=np.zeros(0, np.int16) if reader.has_truth else None,
    )


def load_pairs(
    path: str | os.PathLike[str],
    *,
    valid_only: bool = True,
    max_spots: int | None = None,
    complete_lines_only: bool = False,
) -> PairedSpectra:
    """Every pair of a map in memory; valid_only keeps spots valid in BOTH systems.

    Refuses maps with more than max_spots spots in their done lines (default
    MAX_IN_MEMORY_SPOTS) and maps with unwritten lines unless complete_lines_only is True.
    """
    limit = MAX_IN_MEMORY_SPOTS if max_spots is None else int(max_spots)
    with MapReader(path) as reader:
        nx = reader.shape[1]
        rows = _done_lines(reader, complete_lines_only)
        if rows.size * nx > limit:
            raise ValueError(
                f"map file {L.describe(path)} has {rows.size * nx} spots ({rows.size} lines of "
                f"{nx}), more than load_pairs holds in memory (max_spots={limit}); read it in "
                "blocks with iter_pair_blocks, or raise max_spots"
            )
        if rows.size == 0:
            return _empty(reader)
        return _pairs_of_lines(reader, [reader.read_line(int(iy)) for iy in rows], valid_only)


def iter_pair_blocks(
    path: str | os.PathLike[str],
    block_spots: int = 8192,
    valid_only: bool = True,
    *,
    complete_lines_only: bool = False,
) -> Iterator[PairedSpectra]:
    """Yield the pairs of a map in blocks of at most block_spots spots, in storage order.

    Reads runs of whole raster lines (one chunk each), about block_spots spots at a time; a
    run is cut into blocks of at most block_spots. Every pair comes exactly once; blocks left
    empty by invalid spots are skipped.
    """
    if isinstance(block_spots, bool) or int(block_spots) < 1:
        raise ValueError(f"block_spots must be >= 1, got {block_spots}")
    block_spots = int(block_spots)
    with MapReader(path) as reader:
        nx = reader.shape[1]
        rows = _done_lines(reader, complete_lines_only)
        lines_per_read = max(1, block_spots // nx)
        for start in range(0, rows.size, lines_per_read):
            lines = [reader.read_line(int(iy)) for iy in rows[start : start + lines_per_read]]
            pairs = _pairs_of_lines(reader, lines, valid_only)
            for i in range(0, pairs.n, block_spots):
                yield pairs.take(slice(i, i + block_spots))


def pair_line_runs(
    path: str | os.PathLike[str], block_spots: int = 8192, *, complete_lines_only: bool = False
) -> list[tuple[int, int]]:
    """(start, stop) raster-line ranges of at most max(1, block_spots // nx) done lines each.

    Consecutive done lines only; every done line is in exactly one run, in storage order.
    """
    if isinstance(block_spots, bool) or int(block_spots) < 1:
        raise ValueError(f"block_spots must be >= 1, got {block_spots}")
    with MapReader(path) as reader:
        nx = reader.shape[1]
        rows = _done_lines(reader, complete_lines_only)
    per = max(1, int(block_spots) // nx)
    runs: list[tuple[int, int]] = []
    i = 0
    while i < rows.size:
        j = i + 1
        while j < rows.size and j - i < per and rows[j] == rows[j - 1] + 1:
            j += 1
        runs.append((int(rows[i]), int(rows[j - 1]) + 1))
        i = j
    return runs


def pair_counts(path: str | os.PathLike[str], runs: list[tuple[int, int]]) -> np.ndarray:
    """Number of pairs (spots valid in both systems) in each run, from the validity masks."""
    with MapReader(path) as reader:
        valid = np.ones(reader.shape, bool)
        for name in L.SYSTEMS:
            valid &= np.asarray(reader._ds(L.system_path(name), "valid")[()], dtype=bool)
    per_line = valid.sum(axis=1)
    return np.array([int(per_line[a:b].sum()) for a, b in runs], dtype=np.int64)


def read_pair_run(reader: MapReader, start: int, stop: int, valid_only: bool = True
                  ) -> PairedSpectra:
    """The pairs of raster lines start..stop-1 of an open map, in storage order."""
    if stop <= start:
        return _empty(reader)
    return _pairs_of_lines(reader, [reader.read_line(iy) for iy in range(start, stop)],
                           valid_only)


def preprocess_pairs(pairs: PairedSpectra, *, baseline: Baseline | bool = True
                     ) -> PairedSpectra:
    """Baseline-corrected copy of both systems' spectra (float32), with the given `Baseline`
    parameters (True: the defaults); unchanged when baseline is False."""
    if baseline is False or pairs.n == 0:
        return pairs
    correct = (DEFAULT_BASELINE if baseline is True else baseline).correct
    return replace(
        pairs,
        primary=correct(pairs.primary).astype(np.float32, copy=False),
        secondary=correct(pairs.secondary).astype(np.float32, copy=False),
    )


def check_axes(
    pairs: PairedSpectra,
    primary_nm: np.ndarray,
    secondary_nm: np.ndarray,
    *,
    tol_nm: float = 1e-3,
) -> None:
    """ValueError unless both wavelength axes of pairs match the reference within tol_nm."""
    problems = []
    for name, got, ref in (
        ("primary", pairs.primary_wavelength_nm, np.asarray(primary_nm, dtype=np.float64)),
        ("secondary", pairs.secondary_wavelength_nm, np.asarray(secondary_nm, dtype=np.float64)),
    ):
        if got.size != ref.size:
            problems.append(
                f"{name} axis has {got.size} pixels but the reference has {ref.size}"
            )
            continue
        diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
        if not diff <= tol_nm:
            worst = int(np.nanargmax(np.abs(got - ref)))
            problems.append(
                f"{name} axis differs from the reference by up to {diff:.4g} nm (tolerance "
                f"{tol_nm:g} nm; at pixel {worst} of {got.size}: {got[worst]:.4f} nm vs "
                f"{ref[worst]:.4f} nm)"
            )
    if problems:
        raise ValueError(
            "wavelength axes do not match the reference (a map from another instrument "
            "setup or calibration): " + "; ".join(problems)
        )
