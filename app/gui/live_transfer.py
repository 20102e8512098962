"""Live transfer: a worker thread that feeds each arriving raster line to the loaded model's
line transfer (`plumelink.models.line_transfer`) and stores the result in the `LiveModel`.

New lines go first: a line's transferred emissivity is stored as soon as its first step is
done; the confidence of earlier lines is computed while no line is waiting.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import TYPE_CHECKING

import numpy as np

from plumelink.models.line_transfer import ConfidenceStep, LineTransfer, single_threaded_inference
from plumelink.pipeline.raster_line import RasterLine

from .live_model import LiveModel

if TYPE_CHECKING:
    from plumelink.models.evaluate import PackageTransfer

log = logging.getLogger(__name__)


class LiveTransfer:
    """A worker thread transferring the raster lines of one map as they arrive.

    ``transfer`` is a loaded model (`PackageTransfer`): its ``line_transfer()`` is used for
    this map. ``two_steps`` False stores each line's emissivity only once its whole transfer
    is done (the benchmark's reference design).
    """

    def __init__(self, transfer: PackageTransfer, model: LiveModel, *,
                 two_steps: bool = True) -> None:
        self.transfer = transfer
        self.model = model
        self.error: str = ""
        self.lines: LineTransfer = transfer.line_transfer()
        self.two_steps = two_steps
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="plumelink-live-transfer",
                                        daemon=True)
        self._thread.start()

    def submit(self, line: RasterLine) -> None:
        self._queue.put(line)

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish the lines submitted so far (and their confidence), then end the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        single_threaded_inference()
        wl = np.asarray(self.transfer.primary_wavelength_nm)
        later: collections.deque = collections.deque()  # (index, confidence step)
        while True:
            if later:
                try:
                    line = self._queue.get_nowait()
                except queue.Empty:  # no line waiting: one confidence of an earlier line
                    self._confidence(*later.popleft())
                    continue
            else:
                line = self._queue.get()
            if line is None:  # closing: the confidence of every line transferred, then end
                while later:
                    self._confidence(*later.popleft())
                return
            try:
                later.append(self._first(line, wl))
            except Exception as exc:  # shown in the GUI; later lines are still tried
                self._failed(exc, line.index)

    def _confidence(self, index: int, confidence: ConfidenceStep) -> None:
        try:
            values = confidence()
            intervals = getattr(self.transfer, "intervals", None)
            radius = intervals.radius_for(values) if intervals is not None else None
            self.model.add_confidence(index, values, radius)
        except Exception as exc:
            self._failed(exc, index)

    def _first(self, line: RasterLine, wl: np.ndarray) -> tuple[int, ConfidenceStep]:
        version, weights = self.model.element_weights()
        if weights is not None and weights.shape[0] != wl.size:
            weights = None  # the model's primary axis is not the scan's: no transferred areas
        self.lines.line_weights = weights
        if self.two_steps:
            out, confidence = self.lines.in_two_steps(line)
        else:
            out = self.lines(line)

            def confidence() -> np.ndarray:
                return out.confidence
        spectrum = (wl, out.last_spectrum) if out.last_spectrum is not None else None
        areas = (version, out.element_areas) if out.element_areas is not None else None
        self.model.add_transferred(out.index, out.emissivity, None, spectrum, areas,
                                   self._measured(line) if spectrum is not None else None)
        return out.index, confidence

    def _measured(self, line: RasterLine) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The measured spectra of the spot whose transferred spectrum is shown (the line's
        last valid secondary spot), with the transfer's baseline removed."""
        ix = int(np.flatnonzero(line.secondary.valid)[-1])
        axes = self.model.snapshot_axes()
        out = {}
        for name in ("primary", "secondary"):
            system = getattr(line, name)
            if system.valid[ix] and name in axes:
                corrected = self.transfer.preprocessor.correct(
                    system.spectra[ix:ix + 1].astype(np.float32))[0]
                out[name] = (axes[name], corrected)
        return out

    def _failed(self, exc: Exception, index: int) -> None:
        log.exception("live transfer of line %d failed", index, exc_info=exc)
        self.error = f"live transfer: {type(exc).__name__}: {exc}"
