"""The data a training run learns from: `TrainingData`, in memory or streamed, one interface.

Maps of at most MAX_IN_MEMORY_SPOTS spots are read whole (fastest for the small presets).
Larger maps (or ``data.stream``) are streamed: the scalers are fitted in one streaming pass
over the training map and every network sees every training pair each epoch through
`streaming.MapPairSource`; what needs arrays in memory (the baselines, the validation loss and
RSEs) uses random subsamples drawn with the seed, recorded in `TrainingData.record`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from plumelink.models.fit import ArraySource, BatchSource
from plumelink.models.metrics import rse
from plumelink.models.package import file_sha256
from plumelink.models.streaming import MapPairSource
from plumelink.models.training.config import TrainConfig
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import (
    MAX_IN_MEMORY_SPOTS,
    PairedSpectra,
    check_axes,
    iter_pair_blocks,
    load_pairs,
    pair_counts,
    pair_line_runs,
    preprocess_pairs,
)
from plumelink.pipeline.preprocess import Preprocessor, SpectralScaler

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# a core counts as free for a training thread when at least this much of it is idle
FREE_CORE_FRACTION = 0.75


def read_cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """Per CPU (idle + iowait ticks, all ticks) from the text of /proc/stat."""
    times: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
        times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def free_cores(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
               cpus: set[int], own_cores: float = 0.0) -> float:
    """Cores of ``cpus`` that other processes left idle between two `read_cpu_times`
    readings; ``own_cores`` (this process's CPU seconds per second meanwhile) counts as free.
    Niced processes count as busy: with the kernel's autogroup scheduling (the default of
    most distributions) a nice-19 job of another session still takes its fair share."""
    common = [c for c in cpus if c in before and c in after]
    if not common:
        return float(len(cpus))
    idle = sum(after[c][0] - before[c][0] for c in common)
    total = sum(after[c][1] - before[c][1] for c in common)
    if total <= 0:  # no tick in between: nothing known
        return float(len(cpus))
    return min(float(len(cpus)), len(cpus) * idle / total + max(own_cores, 0.0))


def threads_for_free(free: float, cores: int) -> int:
    """Training threads for ``free`` idle cores out of ``cores``: the cores at least
    FREE_CORE_FRACTION idle, at least 1."""
    return max(1, min(cores, int(free + 1.0 - FREE_CORE_FRACTION)))


def training_threads(sample_s: float = 0.15,
                     read: Callable[[], str] = lambda: Path("/proc/stat").read_text()) -> int:
    """Torch threads for a training run: the cores of this process's affinity that no other
    process keeps busy, from two readings of ``read()`` (the text of /proc/stat) ``sample_s``
    seconds apart (`FreeCoreThreads`, which then re-decides between epochs).

    Why not every core: torch's OpenMP threads meet at a barrier after every operation, so
    one thread sharing its core with a busy process holds the others back. Measured on 2
    cores with one kept busy by another process, VAE training at batch 128 fell from ~1,250
    samples/s on one thread to ~250-370 on two (TensorFlow, whose threads do not wait on each
    other, lost half). Where /proc/stat cannot be read: every core (`available_cores`).
    The package records the choice (a run's results depend on its thread count; an explicit
    ``--threads`` / ``run.threads`` is used as given)."""
    cores = available_cores()
    if cores == 1:
        return 1
    governor = FreeCoreThreads(cores, read=read, min_interval_s=0.0)
    time.sleep(sample_s)
    threads = governor.update("start")
    log.info("training on %d of %d cores", threads, cores)
    return threads


class FreeCoreThreads:
    """Re-decides a run's thread count between epochs from what other processes used of this
    process's cores since the last decision (`free_cores`, this process's own use counting
    free), and applies it with ``apply`` (torch.set_num_threads).

    Why: `training_threads` decides at the start, but a long run meets load that
    starts or ends later; two threads against a process that arrives on one core run ~4 x
    slower than one thread alone (see `training_threads`). Intervals shorter than
    ``min_interval_s`` are too short to judge and leave the count as it is. ``changes``
    records every change (where, threads) for the package."""

    def __init__(self, threads: int, read: Callable[[], str] | None = None,
                 apply: Callable[[int], None] | None = None, min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.perf_counter,
                 own_clock: Callable[[], float] = time.process_time):
        self.threads, self.min_interval_s = int(threads), float(min_interval_s)
        self.changes: list[dict[str, Any]] = []
        self._read = read or (lambda: Path("/proc/stat").read_text())
        self._apply = apply
        self._clock, self._own_clock = clock, own_clock
        self._cores = available_cores()
        try:
            self._cpus = set(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: /proc/stat is not there either
            self._cpus = set(range(self._cores))
        self._last = self._sample()

    def _sample(self) -> tuple[dict[int, tuple[int, int]], float, float] | None:
        try:
            return read_cpu_times(self._read()), self._own_clock(), self._clock()
        except (OSError, ValueError, IndexError):
            return None

    def update(self, where: str = "") -> int:
        """The thread count from now on (applied when it changes)."""
        now = self._sample()
        if now is None or self._last is None:
            self._last = now
            return self.threads
        (before, own0, t0), (after, own1, t1) = self._last, now
        if t1 - t0 < self.min_interval_s:
            return self.threads
        self._last = now
        free = free_cores(before, after, self._cpus, (own1 - own0) / max(t1 - t0, 1e-6))
        threads = threads_for_free(free, self._cores)
        if threads != self.threads:
            log.info("%s: %.2f of %d cores free, training on %d threads (was %d)", where,
                     free, self._cores, threads, self.threads)
            self.threads = threads
            self.changes.append({"at": where, "threads": threads})
            if self._apply is not None:
                self._apply(threads)
        return self.threads


def file_fingerprint(path: Path, shape: tuple[int, int], n_pairs: int,
                     with_hash: bool = True) -> dict[str, Any]:
    """What identifies an input map in a package: name, size, mtime, shape, pairs, sha256."""
    stat = path.stat()
    entry: dict[str, Any] = {
        "file": path.name, "path": str(path.resolve()), "size": stat.st_size,
        "mtime": stat.st_mtime, "map_shape": list(shape), "n_spots": int(shape[0] * shape[1]),
        "n_pairs": int(n_pairs),
    }
    if with_hash:
        entry["sha256"] = file_sha256(path)
    return entry


def load_paired(path: Path, what: str) -> PairedSpectra:
    """Every pair of a map in memory, baseline-corrected; a clear error when it has none."""
    pairs = preprocess_pairs(load_pairs(path))
    if pairs.n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    return pairs


def map_spots(path: Path) -> int:
    with MapReader(path) as reader:
        ny, nx = reader.shape
    return ny * nx


def _concat(parts: list[PairedSpectra]) -> PairedSpectra:
    first = parts[0]
    return replace(
        first,
        primary=np.concatenate([p.primary for p in parts]),
        secondary=np.concatenate([p.secondary for p in parts]),
        index=np.concatenate([p.index for p in parts]),
        mineral=None if first.mineral is None else np.concatenate([p.mineral for p in parts]),
    )


@dataclass
class StreamedSample:
    """What one streaming pass over a map yields (not an acquisition scan)."""

    sample: PairedSpectra  # baseline-corrected, unscaled subsample in storage order
    n_pairs: int
    shape: tuple[int, int]
    scalers: dict[str, SpectralScaler] | None


def sample_map(path: Path, what: str, keep: int, seed: int, block_spots: int,
               scaler_args: tuple[str, str] | None) -> StreamedSample:
    """One streaming pass: optional scaler fit on every pair, a random subsample kept."""
    counts = pair_counts(path, pair_line_runs(path, block_spots))
    n = int(counts.sum())
    if n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    chosen = None
    if n > keep:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))
    scalers = None
    if scaler_args is not None:
        scalers = {name: SpectralScaler(*scaler_args)  # type: ignore[arg-type]
                   for name in ("primary", "secondary")}
    parts: list[PairedSpectra] = []
    offset = 0
    for block in iter_pair_blocks(path, block_spots):
        block = preprocess_pairs(block)
        if scalers is not None:
            scalers["primary"].partial_fit(block.primary)
            scalers["secondary"].partial_fit(block.secondary)
        if chosen is None:
            parts.append(block)
        else:
            lo, hi = np.searchsorted(chosen, [offset, offset + block.n])
            if hi > lo:
                parts.append(block.take(chosen[lo:hi] - offset))
        offset += block.n
    with MapReader(path) as reader:
        shape = reader.shape
    return StreamedSample(_concat(parts), n, shape, scalers)


@dataclass
class TrainingData:
    """Scaled training and validation pairs and what scores a prediction.

    ``preprocessor`` (baseline + the scalers fitted on the training map) goes into the
    package; ``val_preprocessor`` scales the validation map (the same one, or with the paper's
    "per-map" scaling one fitted on the validation map). ``p_tr``/``s_tr``: the training
    arrays in memory (all pairs, or the baselines' subsample when streaming); `source` gives
    every training pair, batched."""

    train_path: Path
    val_path: Path
    preprocessor: Preprocessor
    val_preprocessor: Preprocessor
    p_tr: np.ndarray
    s_tr: np.ndarray
    p_va: np.ndarray
    s_va: np.ndarray
    truth: np.ndarray  # validation primary spectra, baseline-corrected, unscaled
    primary_wavelength_nm: np.ndarray
    secondary_wavelength_nm: np.ndarray
    shapes: tuple[tuple[int, int], tuple[int, int]]
    n_train: int
    n_val: int
    record: dict[str, Any]  # metrics["data"]: how the data were read and subsampled
    stream: MapPairSource | None = None
    rank: int = 0
    world_size: int = 1

    @classmethod
    def load(cls, train_path: Path, val_path: Path, config: TrainConfig, *, rank: int = 0,
             world_size: int = 1, keep_train: int | None = None) -> TrainingData:
        """Read both maps as `config.data` says (``keep_train``: the streamed training
        subsample, default ``data.baseline_pairs``, 2,000 at most without baselines)."""
        data = config.data
        mode, spread = data.scaler_mode, data.scaler_spread
        stream = data.stream
        if stream is None:
            stream = max(map_spots(train_path), map_spots(val_path)) > MAX_IN_MEMORY_SPOTS
        record: dict[str, Any] = {"mode": "stream" if stream else "memory"}
        if stream:
            if keep_train is None:  # without baselines the subsample feeds the mean score only
                keep_train = (data.baseline_pairs if config.baselines.enabled
                              else min(data.baseline_pairs, 2000))
            tr_sample = sample_map(train_path, "training", keep_train, config.seed + 101,
                                   data.block_spots, (mode, spread))
            va_sample = sample_map(val_path, "validation", data.val_pairs, config.seed + 102,
                                   data.block_spots, (mode, spread) if mode == "per-map" else None)
            assert tr_sample.scalers is not None
            train, val = tr_sample.sample, va_sample.sample
            p_scaler, s_scaler = tr_sample.scalers["primary"], tr_sample.scalers["secondary"]
            n_train, n_val = tr_sample.n_pairs, va_sample.n_pairs
            shapes = (tr_sample.shape, va_sample.shape)
            record.update({
                "train_pairs": n_train, "val_pairs": n_val,
                "baseline_fit_pairs": train.n, "validation_subsample_pairs": val.n,
                "subsample": "uniform without replacement, numpy default_rng(seed + 101) for "
                "training and (seed + 102) for validation pairs, storage order kept",
                "block_spots": data.block_spots, "shuffle_spots": data.shuffle_spots})
        else:
            train, val = load_paired(train_path, "training"), load_paired(val_path, "validation")
            p_scaler = SpectralScaler(mode, spread).fit(train.primary)
            s_scaler = SpectralScaler(mode, spread).fit(train.secondary)
            n_train, n_val = train.n, val.n
            shapes = (train.shape, val.shape)
            record.update({"train_pairs": n_train, "val_pairs": n_val})
        check_axes(val, train.primary_wavelength_nm, train.secondary_wavelength_nm)
        preprocessor = Preprocessor(p_scaler, s_scaler,
                                    fit="streamed over every training pair" if stream
                                    else "in memory")
        if mode == "per-map":  # the paper's: the validation map scaled by its own statistics
            if stream:
                assert va_sample.scalers is not None
                val_pre = Preprocessor(va_sample.scalers["primary"],
                                       va_sample.scalers["secondary"])
            else:
                val_pre = Preprocessor(SpectralScaler(mode, spread).fit(val.primary),
                                       SpectralScaler(mode, spread).fit(val.secondary))
        else:
            val_pre = preprocessor
        source = None
        if stream:
            source = MapPairSource(
                train_path, {"primary": p_scaler, "secondary": s_scaler}, ("primary",),
                block_spots=data.block_spots, shuffle_spots=data.shuffle_spots,
                rank=rank, world_size=world_size)
        return cls(
            train_path=train_path, val_path=val_path, preprocessor=preprocessor,
            val_preprocessor=val_pre,
            p_tr=p_scaler.transform(train.primary).astype(np.float32),
            s_tr=s_scaler.transform(train.secondary).astype(np.float32),
            p_va=val_pre.primary.transform(val.primary).astype(np.float32),
            s_va=val_pre.secondary.transform(val.secondary).astype(np.float32),
            truth=val.primary, primary_wavelength_nm=train.primary_wavelength_nm,
            secondary_wavelength_nm=train.secondary_wavelength_nm, shapes=shapes,
            n_train=n_train, n_val=n_val, record=record, stream=source, rank=rank,
            world_size=world_size)

    @property
    def n_primary_px(self) -> int:
        return int(self.p_va.shape[1])

    @property
    def n_secondary_px(self) -> int:
        return int(self.s_va.shape[1])

    def source(self, *names: str) -> BatchSource:
        """Every training pair of these systems ("primary", "secondary"), scaled, batched
        (this rank's shard)."""
        if self.stream is not None:
            return self.stream.with_fields(names)
        arrays = {"primary": self.p_tr, "secondary": self.s_tr}
        return ArraySource(*(arrays[n] for n in names), rank=self.rank,
                           world_size=self.world_size)

    def val_rse(self, scaled_pred: np.ndarray) -> float:
        """RSE of scaled validation predictions against the unscaled truth."""
        return rse(self.truth, self.val_preprocessor.primary.inverse_transform(scaled_pred))

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """RSE of two scaled arrays, unscaled (for `baselines.select`)."""
        inverse = self.val_preprocessor.primary.inverse_transform
        return rse(inverse(y_true), inverse(y_pred))

    def fingerprint(self, with_hash: bool) -> dict[str, Any]:
        """The package's record of both input maps (`file_fingerprint`)."""
        return {"train": file_fingerprint(self.train_path, self.shapes[0], self.n_train,
                                          with_hash),
                "val": file_fingerprint(self.val_path, self.shapes[1], self.n_val, with_hash)}


__all__ = ["FREE_CORE_FRACTION", "FreeCoreThreads", "StreamedSample", "TrainingData",
           "available_cores", "file_fingerprint", "free_cores", "load_paired", "map_spots",
           "read_cpu_times", "sample_map", "threads_for_free", "training_threads"]
