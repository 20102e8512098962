"""Live transfer: secondary spectra of each arriving raster line -> transferred primary line.

`transfer_line` is the line-wise computation (no threads, no Qt; a candidate for
plumelink.pipeline.transfer). `LiveTransfer` runs it on a worker thread fed by a queue and
stores each result in the `LiveModel`.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import numpy as np

from plumelink.pipeline.emissivity import total_emissivity
from plumelink.pipeline.raster_line import RasterLine

from .live_model import LiveModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferredLine:
    index: int
    spectra: np.ndarray  # (nx, n_px1) float32, zeros where the secondary spot is invalid
    emissivity: np.ndarray  # (nx,) float32, NaN where invalid
    confidence: np.ndarray  # (nx,) float32, NaN where invalid


def transfer_line(transfer, line: RasterLine, block_spots: int = 4096) -> TransferredLine:
    """Apply a `BlockTransfer` to the valid secondary spectra of one raster line.

    A transfer that needs per-map statistics is fitted on the first line it sees (the live
    map's first line stands in for the whole map, which does not exist yet).
    """
    sec = line.secondary
    n_px1 = len(transfer.primary_wavelength_nm)
    valid = np.asarray(sec.valid, bool)
    spectra = np.zeros((valid.size, n_px1), np.float32)
    confidence = np.full(valid.size, np.nan, np.float32)
    where = np.flatnonzero(valid)
    if (transfer.needs_map_statistics and not getattr(transfer, "_live_fitted", False)
            and where.size):
        transfer.fit_map([sec.spectra[where].astype(np.float32)])
        transfer._live_fitted = True
    for i in range(0, where.size, block_spots):
        rows = where[i:i + block_spots]
        p, c = transfer(sec.spectra[rows].astype(np.float32))
        spectra[rows] = p
        confidence[rows] = c
    emissivity = total_emissivity(spectra, valid).astype(np.float32)
    return TransferredLine(line.index, spectra, emissivity, confidence)


def _one_torch_thread() -> None:
    """Inference of one raster line needs no thread pool; a pool's spinning workers would
    take the CPU the GUI and the acquisition need (training runs in its own process)."""
    try:
        import torch
    except ImportError:  # a transfer that does not use torch
        return
    torch.set_num_threads(1)


def warm_up(transfer, n_px: int) -> None:
    """One inference on a dummy block, so the first real line does not pay the model's lazy
    initialisation (run it where the model is loaded, off the GUI thread)."""
    _one_torch_thread()
    if not transfer.needs_map_statistics:
        transfer(np.full((2, n_px), 1000.0, np.float32))


class LiveTransfer:
    """A worker thread transferring raster lines as they arrive, into a `LiveModel`."""

    def __init__(self, transfer, model: LiveModel) -> None:
        self.transfer = transfer
        self.model = model
        self.error: str = ""
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="plumelink-live-transfer",
                                        daemon=True)
        self._thread.start()

    def submit(self, line: RasterLine) -> None:
        self._queue.put(line)

    def close(self, timeout: float | None = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        _one_torch_thread()
        wl = np.asarray(self.transfer.primary_wavelength_nm)
        while True:
            line = self._queue.get()
            if line is None:
                return
            try:
                out = transfer_line(self.transfer, line)
            except Exception as exc:  # shown in the GUI; later lines are still tried
                log.exception("live transfer of line %d failed", line.index)
                self.error = f"live transfer: {type(exc).__name__}: {exc}"
                continue
            ok = np.flatnonzero(line.secondary.valid)
            spectrum = (wl, out.spectra[ok[-1]]) if ok.size else None
            self.model.add_transferred(out.index, out.emissivity, out.confidence, spectrum)
