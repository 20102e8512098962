"""Live transfer: secondary spectra of each arriving raster line -> transferred primary line.

`transfer_line` is the line-wise computation (no threads, no Qt; a candidate for
plumelink.pipeline.transfer). `LiveTransfer` runs it on a worker thread fed by a queue and
stores each result in the `LiveModel`.

The transferred map must follow the scan closely, the confidence map may lag: for a model
package the worker therefore runs each line in two steps (`LineSteps`). The first gives the
transferred emissivity, published at once: the map needs only the block means of each
transferred spectrum (`pipeline.emissivity`), which are linear in the decoder's last hidden
layer, so the decoder's output layer (~85 % of its work) is folded with the primary scaler and
the block averaging into a 126-output layer; only the last valid spot's whole spectrum (for
the spectra plot) is decoded. The second step decodes every spectrum and re-encodes it for the
"consistency" confidence; it runs when no new line is waiting.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from plumelink.pipeline.emissivity import (
    emissivity_block,
    emissivity_from_block_means,
    total_emissivity,
)
from plumelink.pipeline.raster_line import RasterLine

from .live_model import LiveModel

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferredLine:
    index: int
    spectra: np.ndarray | None  # (nx, n_px1) float32, zeros where invalid; None: not computed
    emissivity: np.ndarray  # (nx,) float32, NaN where invalid
    confidence: np.ndarray  # (nx,) float32, NaN where invalid
    last_spectrum: np.ndarray | None = None  # of the last valid spot (n_px1,), float32


def _fit_on_first_line(transfer, line: RasterLine, where: np.ndarray) -> None:
    """A transfer that needs per-map statistics is fitted on the first line it sees (the live
    map's first line stands in for the whole map, which does not exist yet)."""
    if (transfer.needs_map_statistics and not getattr(transfer, "_live_fitted", False)
            and where.size):
        transfer.fit_map([line.secondary.spectra[where].astype(np.float32)])
        transfer._live_fitted = True


def transfer_line(transfer, line: RasterLine, block_spots: int = 4096) -> TransferredLine:
    """Apply a `BlockTransfer` to the valid secondary spectra of one raster line."""
    sec = line.secondary
    n_px1 = len(transfer.primary_wavelength_nm)
    valid = np.asarray(sec.valid, bool)
    spectra = np.zeros((valid.size, n_px1), np.float32)
    confidence = np.full(valid.size, np.nan, np.float32)
    where = np.flatnonzero(valid)
    _fit_on_first_line(transfer, line, where)
    for i in range(0, where.size, block_spots):
        rows = where[i:i + block_spots]
        p, c = transfer(sec.spectra[rows].astype(np.float32))
        spectra[rows] = p
        confidence[rows] = c
    emissivity = total_emissivity(spectra, valid).astype(np.float32)
    return TransferredLine(line.index, spectra, emissivity, confidence,
                           spectra[where[-1]] if where.size else None)


def _decoder_layers(composed) -> tuple[Callable, torch.nn.Linear]:
    """A composed transfer's output as (features, last Linear): features(z, x) are the
    decoder's last hidden layer, with the linear path's rank-r projection of the scaled
    secondary x appended when the system's decoder has a path; output = last(features)."""
    import torch

    decoder = composed.decoder.net if composed.decoder is not None else composed.vae.decoder
    if not (isinstance(decoder, torch.nn.Sequential)
            and isinstance(decoder[-1], torch.nn.Linear)):
        raise TypeError("the decoder does not end in a linear layer")
    hidden_layers, last = decoder[:-1], decoder[-1]
    path = composed.path
    if path is None:
        return (lambda z, x: hidden_layers(z)), last
    joined = torch.nn.Linear(last.in_features + path.rank, last.out_features)
    with torch.no_grad():
        joined.weight.copy_(torch.cat([last.weight, path.up.weight], dim=1))
        joined.bias.copy_(last.bias)
    return (lambda z, x: torch.cat([hidden_layers(z), path.down(x)], dim=1)), joined


class BlockMeanHead:
    """The decoder's output layer, the primary scaler and the emissivity's block means in one
    linear layer: hidden (n, h) -> block means of the primary spectra (n, n_blocks)."""

    def __init__(self, last: torch.nn.Linear, mean: np.ndarray, scale: np.ndarray) -> None:
        import torch

        n_px = last.out_features
        self.block = emissivity_block(n_px)
        usable = n_px - n_px % self.block
        with torch.no_grad():
            w = last.weight.detach().double()[:usable] * torch.from_numpy(
                np.asarray(scale, np.float64)[:usable, None])
            b = (last.bias.detach().double() * torch.from_numpy(np.asarray(scale, np.float64))
                 + torch.from_numpy(np.asarray(mean, np.float64)))[:usable]
            n_blocks = usable // self.block
            self.weight = w.reshape(n_blocks, self.block, -1).mean(1).float().T.contiguous()
            self.bias = b.reshape(n_blocks, self.block).mean(1).float()

    def __call__(self, hidden: torch.Tensor) -> np.ndarray:
        import torch

        return torch.addmm(self.bias, hidden, self.weight).numpy()


class LineSteps:
    """`transfer_line` in two steps: ``spectra(line)`` -> (line without confidence, a function
    computing the confidence). `PackageTransfer`'s arithmetic (scaling in float32) for a model
    package with the "consistency" confidence; any other `BlockTransfer` runs whole in the
    first step."""

    def __init__(self, transfer) -> None:
        self.transfer = transfer
        self.split = (type(transfer).__name__ == "PackageTransfer"
                      and getattr(transfer, "confidence_method", "") == "consistency"
                      and getattr(transfer.models, "latent_stats", None) is None)
        self._scalers: dict[int, tuple] = {}
        # (key, (features, output layer, BlockMeanHead)) of the system's decoder
        self._decoder_parts: tuple | None = None

    def _float32(self, scaler) -> tuple[np.ndarray, np.ndarray]:
        """A scaler's mean and scale in float32: scaling a line in float32 rather than the
        scaler's float64 saves ~30 ms per 500 spectra, for differences of float32 rounding."""
        if self._scalers.get(id(scaler), (None,))[0] is not scaler:
            self._scalers[id(scaler)] = (scaler, scaler.mean.astype(np.float32),
                                         scaler.scale.astype(np.float32))
        return self._scalers[id(scaler)][1:]

    def spectra(self, line: RasterLine) -> tuple[TransferredLine, Callable[[], np.ndarray]]:
        if not self.split:
            out = transfer_line(self.transfer, line)
            return out, lambda: out.confidence
        import torch

        from plumelink.models.confidence import confidence_from_distance
        from plumelink.pipeline.preprocess import correct_baseline

        models = self.transfer.models
        vae = models.package.vae
        mlp = models.package.latent_mlps[models.system]
        sec = line.secondary
        valid = np.asarray(sec.valid, bool)
        where = np.flatnonzero(valid)
        _fit_on_first_line(self.transfer, line, where)
        emissivity = np.full(valid.size, np.nan, np.float32)
        confidence = np.full(valid.size, np.nan, np.float32)
        if not where.size:
            return TransferredLine(line.index, None, emissivity, confidence), lambda: confidence
        sec_mean, sec_scale = self._float32(models.secondary_scaler)
        prim_mean, prim_scale = self._float32(models.primary_scaler)
        features, last, head = self._decoder(models, prim_mean, prim_scale)
        scaled = correct_baseline(sec.spectra[where].astype(np.float32))
        scaled -= sec_mean
        scaled /= sec_scale
        with torch.no_grad():
            x = torch.from_numpy(scaled)
            z = mlp(x)
            hidden = features(z, x)
            emissivity[where] = emissivity_from_block_means(head(hidden), np.ones(where.size, bool),
                                                            head.block)
            latest = last(hidden[-1:]).numpy()[0] * prim_scale + prim_mean

        def consistency() -> np.ndarray:
            with torch.no_grad():
                mean2, _ = vae.encode(last(hidden))
                d = torch.linalg.vector_norm(mean2 - z, dim=1) / math.sqrt(vae.latent)
            confidence[where] = confidence_from_distance(d.numpy().astype(np.float64))
            return confidence

        return (TransferredLine(line.index, None, emissivity, confidence, latest),
                consistency)

    def _decoder(self, models, prim_mean: np.ndarray, prim_scale: np.ndarray) -> tuple:
        """(features, output layer, `BlockMeanHead`) of the system's decoder, built once
        per system of the loaded models (the split and folding are not redone every line)."""
        key = (id(models), models.system, id(models.primary_scaler))
        if self._decoder_parts is None or self._decoder_parts[0] != key:
            features, last = _decoder_layers(models.package.composed(models.system))
            head = BlockMeanHead(last, prim_mean, prim_scale)
            self._decoder_parts = (key, (features, last, head))
        return self._decoder_parts[1]


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


def load_transfer(model_dir):
    """A model package as a `BlockTransfer` (plumelink.models.evaluate.PackageTransfer),
    warmed up (run it off the GUI thread)."""
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package

    transfer = PackageTransfer(load_package(model_dir))
    axis = transfer.package.secondary_wavelength_nm[transfer.models.system]
    warm_up(transfer, len(axis))
    return transfer


class LiveTransfer:
    """A worker thread transferring raster lines as they arrive, into a `LiveModel`.

    New lines go first; the confidence of earlier lines is computed while none is waiting.
    """

    def __init__(self, transfer, model: LiveModel) -> None:
        self.transfer = transfer
        self.model = model
        self.error: str = ""
        self.steps = LineSteps(transfer)
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
        _one_torch_thread()
        wl = np.asarray(self.transfer.primary_wavelength_nm)
        later: collections.deque = collections.deque()  # (index, confidence function)
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

    def _confidence(self, index: int, confidence: Callable[[], np.ndarray]) -> None:
        try:
            self.model.add_confidence(index, confidence())
        except Exception as exc:
            self._failed(exc, index)

    def _first(self, line: RasterLine, wl: np.ndarray) -> tuple[int, Callable[[], np.ndarray]]:
        out, confidence = self.steps.spectra(line)
        spectrum = (wl, out.last_spectrum) if out.last_spectrum is not None else None
        self.model.add_transferred(out.index, out.emissivity, None, spectrum)
        return out.index, confidence

    def _failed(self, exc: Exception, index: int) -> None:
        log.exception("live transfer of line %d failed", index, exc_info=exc)
        self.error = f"live transfer: {type(exc).__name__}: {exc}"
