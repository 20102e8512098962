"""Training data streamed from map files: bounded memory whatever the map size.

`MapPairSource` is a `BatchSource` over the pairs (spots valid in both systems) of one HDF5
map. Memory is bounded by the block and shuffle-buffer sizes, never by the map:

* blocks: runs of whole raster lines, about ``block_spots`` spots each (the store chunks one
  raster line per chunk, so every read is chunk-aligned; `pipeline.paired_spectra.pair_line_runs`);
* each epoch draws one seed from the training rng; from it a permutation of the blocks
  (the same on every rank) of which rank r takes positions r, r + world_size, ...;
* a background thread reads this rank's blocks in that order, keeps the pairs, applies the
  baseline correction and the fitted scalers (both saved with the model), and hands at most
  ``prefetch`` finished blocks ahead to the training loop;
* shuffle buffer: finished blocks are gathered until they hold ``shuffle_spots`` spots; the
  gathered spots (plus the fewer than batch_size left from the previous gathering) are
  permuted and cut into full batches. So a batch mixes spots of several blocks spread over
  the map, and every pair is seen once per epoch;
* with several ranks every rank yields the same number of spots per epoch (the least any
  rank holds that epoch; the others drop their surplus, a different one each epoch), so the
  ranks step in lockstep.

Evaluation (rng None) reads every block in storage order, unshuffled and unsharded.
Peak memory ~ (2 * shuffle_spots + (prefetch + 2) * block_spots) * (n_primary_px +
n_secondary_px) * 4 bytes (a gathering and the permuted copy being trained on; the gathering
is scattered into the permuted copy block by block, never concatenated first), ~0.4 GB for
the paper's maps at the defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import pair_counts, pair_line_runs, read_pair_run
from plumelink.pipeline.preprocess import DEFAULT_BASELINE, Baseline, SpectralScaler

FIELDS = ("primary", "secondary")
_DONE = object()


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc): without it, the buffers freed by the
    reader thread's and the trainer's arenas stay in the resident set."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class MapPairSource:
    """Scaled, baseline-corrected pairs of one map, streamed in blocks (see module doc).

    fields: which systems each batch holds, in order (e.g. ("primary",) for the VAE,
    ("secondary", "primary") for networks from secondary to primary spectra).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        scalers: dict[str, SpectralScaler],
        fields: Sequence[str] = ("primary",),
        *,
        block_spots: int = 2048,
        shuffle_spots: int = 8192,
        prefetch: int = 2,
        rank: int = 0,
        world_size: int = 1,
        baseline: Baseline | None = DEFAULT_BASELINE,
    ):
        if not fields or any(f not in FIELDS for f in fields):
            raise ValueError(f"fields must be a non-empty sequence of {FIELDS}, got {fields!r}")
        missing = [f for f in fields if f not in scalers]
        if missing:
            raise ValueError(f"no scaler for {missing}")
        self.path = path
        self.scalers = scalers
        self.fields = tuple(fields)
        self.block_spots, self.shuffle_spots = int(block_spots), int(shuffle_spots)
        self.prefetch = max(1, int(prefetch))
        self.rank, self.world_size = int(rank), int(world_size)
        self.baseline = baseline
        runs = pair_line_runs(path, self.block_spots)
        counts = pair_counts(path, runs)
        keep = counts > 0
        self.runs = [r for r, k in zip(runs, keep, strict=True) if k]
        self.counts = counts[keep]
        self.n_samples = int(self.counts.sum())

    def with_fields(self, fields: Sequence[str]) -> MapPairSource:
        """The same map and settings yielding other fields (no re-reading of the masks)."""
        other = object.__new__(MapPairSource)
        other.__dict__.update(self.__dict__)
        other.fields = tuple(fields)
        return other

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, math.ceil(self.n_samples // self.world_size / batch_size))

    # -- reading -------------------------------------------------------------------------------

    def _prepare(self, reader: MapReader, run: tuple[int, int]) -> list[np.ndarray]:
        pairs = read_pair_run(reader, *run)
        out = []
        for name in self.fields:
            x = getattr(pairs, name)
            if self.baseline is not None:
                x = self.baseline.correct(x)
            out.append(self.scalers[name].transform(x))
        return out

    def _blocks(self, order: np.ndarray) -> Iterator[list[np.ndarray]]:
        """This rank's blocks in `order`, prepared by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            try:
                with MapReader(self.path) as reader:
                    for k in order:
                        if stop.is_set():
                            return
                        item = self._prepare(reader, self.runs[int(k)])
                        while not stop.is_set():
                            try:
                                q.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                q.put(_DONE)
            except BaseException as exc:  # handed to the consumer
                q.put(exc)

        thread = threading.Thread(target=work, name="plumelink-map-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    q.get(timeout=0.05)
            thread.join()

    # -- batches -------------------------------------------------------------------------------

    def batches(self, batch_size: int, rng: np.random.Generator | None) -> Iterator[tuple]:
        n_blocks = len(self.runs)
        if rng is None:
            yield from self._sequential(batch_size)
            return
        seed = int(rng.integers(2**63))
        order = np.random.default_rng(seed).permutation(n_blocks)
        local = np.random.default_rng([seed, self.rank])
        limit = None
        if self.world_size > 1:
            limit = min(int(self.counts[order[r :: self.world_size]].sum())
                        for r in range(self.world_size))
            order = order[self.rank :: self.world_size]
        yield from self._shuffled(order, batch_size, local, limit)

    def _sequential(self, batch_size: int) -> Iterator[tuple]:
        for block in self._blocks(np.arange(len(self.runs))):
            tensors = [torch.from_numpy(a) for a in block]
            for i in range(0, len(block[0]), batch_size):
                yield tuple(t[i : i + batch_size] for t in tensors)

    def _shuffled(self, order: np.ndarray, batch_size: int, rng: np.random.Generator,
                  limit: int | None) -> Iterator[tuple]:
        gathered: list[list[np.ndarray]] = []
        n_gathered, emitted = 0, 0
        budget = limit if limit is not None else self.n_samples

        def flush(final: bool) -> Iterator[tuple]:
            nonlocal gathered, n_gathered, emitted
            if not gathered:
                return
            total = n_gathered
            n = min(total, budget - emitted)
            perm = rng.permutation(total)[:n]
            n_full = n if final else n - n % batch_size
            # out[j] = concatenation[perm[j]], scattered block by block (each gathered block is
            # released as soon as it is placed: no concatenated copy of the gathering)
            dest = np.full(total, -1, np.int64)
            dest[perm] = np.arange(n)
            out = [np.empty((n, g.shape[1]), g.dtype) for g in gathered[0]]
            offset = 0
            while gathered:
                block = gathered.pop(0)
                d = dest[offset : offset + len(block[0])]
                keep = d >= 0
                for o, a in zip(out, block, strict=True):
                    o[d[keep]] = a[keep]
                offset += len(block[0])
                del block
            n_gathered = 0
            if n_full < n:  # carry the remainder into the next gathering
                gathered, n_gathered = [[o[n_full:].copy() for o in out]], n - n_full
            tensors = [torch.from_numpy(o[:n_full]) for o in out]
            del out  # only the permuted copy stays while its batches are used
            _release_free_memory()
            for i in range(0, n_full, batch_size):
                yield tuple(t[i : i + batch_size] for t in tensors)
            emitted += n_full

        for block in self._blocks(order):
            gathered.append(block)
            n_gathered += len(block[0])
            del block  # the gathering holds it; flush releases it once placed
            if n_gathered >= self.shuffle_spots:
                yield from flush(final=False)
            if emitted + n_gathered >= budget and limit is not None:
                break
        yield from flush(final=True)


__all__ = ["MapPairSource"]
