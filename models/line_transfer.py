"""Raster lines through a loaded model, fast enough to follow a scan (the live view's transfer).

`LineTransfer` applies a model (any `BlockTransfer` of `plumelink.pipeline.transfer`) to the
valid secondary spectra of one raster line. A model package gives its own through
`PackageTransfer.line_transfer()`: one per map, since a package with per-map scaling fits its
scalers on the first line it sees (the live map's first line stands in for the whole map,
which does not exist yet).

A live map must follow the scan closely, its confidence may lag, so a line is also transferred
in two steps (`LineTransfer.in_two_steps`). For a model package with the "consistency"
confidence (`folds`), the first step gives the transferred emissivity only: the map needs the
block means of each transferred spectrum (`pipeline.emissivity`), which are linear in the
decoder's last hidden layer, so the decoder's output layer (~85 % of its work) is folded with
the primary scaler and the block averaging into one small layer (`BlockMeanHead`); only the
last valid spot's whole spectrum (for the spectra plot) is decoded. The second step decodes
every spectrum and re-encodes it for the confidence. Any other model runs whole in the first
step.

Nothing here starts threads or touches Qt; torch is imported on first use.
"""

from __future__ import annotations

import logging
import math
import os
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

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from plumelink.models.evaluate import PackageTransfer, TransferModels
    from plumelink.pipeline.preprocess import SpectralScaler
    from plumelink.pipeline.transfer import BlockTransfer

# computes a line's confidence (nx,) float32, NaN where invalid, when called
ConfidenceStep = Callable[[], np.ndarray]


@dataclass(frozen=True)
class TransferredLine:
    """The transfer of one raster line of ``nx`` spots."""

    index: int
    spectra: np.ndarray | None  # (nx, n_primary) float32, zeros where invalid; None: not computed
    emissivity: np.ndarray  # (nx,) float32, NaN where invalid
    confidence: np.ndarray  # (nx,) float32, NaN where invalid (or not computed yet)
    last_spectrum: np.ndarray | None = None  # of the last valid spot (n_primary,), float32
    # areas of the chosen element lines, (nx, n_lines) float32, NaN where invalid; None: no
    # lines chosen (`LineTransfer.line_weights`)
    element_areas: np.ndarray | None = None


def _areas(spectra: np.ndarray, weights: np.ndarray | None, valid: np.ndarray
           ) -> np.ndarray | None:
    """Element line areas of transferred spectra: a fixed linear functional per line."""
    if weights is None:
        return None
    areas = np.asarray(spectra, np.float32) @ np.asarray(weights, np.float32)
    areas[~valid] = np.nan
    return areas


class LineTransfer:
    """A model applied line by line to one map: whole (``__call__``) or in two steps.

    ``model`` is any `BlockTransfer`; when it needs per-map statistics it is fitted (its public
    ``fit_map``) on the valid spectra of the first line given here.
    """

    #: whether `in_two_steps` defers work to the confidence step (the folded decoder head)
    folds = False

    def __init__(self, model: BlockTransfer, block_spots: int = 4096) -> None:
        self.model = model
        self.block_spots = int(block_spots)
        self._fitted = False
        #: (n_primary, n_lines): element line areas are spectra @ line_weights (the weights of
        #: `pipeline.element_maps.line_window`); None gives no areas
        self.line_weights: np.ndarray | None = None

    def __call__(self, line: RasterLine) -> TransferredLine:
        """Transferred spectra, emissivity and confidence of the line's valid spots."""
        sec = line.secondary
        n_primary = len(self.model.primary_wavelength_nm)
        valid = np.asarray(sec.valid, bool)
        spectra = np.zeros((valid.size, n_primary), np.float32)
        confidence = np.full(valid.size, np.nan, np.float32)
        where = np.flatnonzero(valid)
        self._fit_on_first_line(line, where)
        for i in range(0, where.size, self.block_spots):
            rows = where[i:i + self.block_spots]
            p, c = self.model(sec.spectra[rows].astype(np.float32))
            spectra[rows] = p
            confidence[rows] = c
        emissivity = total_emissivity(spectra, valid).astype(np.float32)
        return TransferredLine(line.index, spectra, emissivity, confidence,
                               spectra[where[-1]] if where.size else None,
                               _areas(spectra, self.line_weights, valid))

    def in_two_steps(self, line: RasterLine) -> tuple[TransferredLine, ConfidenceStep]:
        """(the line without its confidence, the step computing that confidence); here the
        whole transfer, whose confidence is already known."""
        out = self(line)
        return out, lambda: out.confidence

    def warm_up(self, n_secondary: int) -> None:
        """One inference on a dummy block, so the first real line does not pay the model's
        lazy initialisation (not for a model that must first be fitted on the map)."""
        if not self.model.needs_map_statistics:
            self.model(np.full((2, n_secondary), 1000.0, np.float32))

    def _fit_on_first_line(self, line: RasterLine, where: np.ndarray) -> None:
        if self.model.needs_map_statistics and not self._fitted and where.size:
            self.model.fit_map([line.secondary.spectra[where].astype(np.float32)])
            self._fitted = True


class BlockMeanHead:
    """A decoder's output layer, the primary scaler and the emissivity's block means in one
    linear layer: hidden (n, h) -> block means of the unscaled primary spectra (n, n_blocks).

    Folded in float64, applied in float32."""

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


class LinearHead:
    """A decoder's output layer, the primary scaler and any linear functional of the primary
    spectra (n_primary, k), e.g. element line areas, in one linear layer: hidden (n, h) ->
    (n, k). Folded in float64, applied in float32."""

    def __init__(self, last: torch.nn.Linear, mean: np.ndarray, scale: np.ndarray,
                 functional: np.ndarray) -> None:
        import torch

        f = torch.from_numpy(np.asarray(functional, np.float64))
        with torch.no_grad():
            w = last.weight.detach().double() * torch.from_numpy(
                np.asarray(scale, np.float64)[:, None])
            b = (last.bias.detach().double() * torch.from_numpy(np.asarray(scale, np.float64))
                 + torch.from_numpy(np.asarray(mean, np.float64)))
            self.weight = (w.T @ f).float().contiguous()
            self.bias = (b @ f).float()

    def __call__(self, hidden: torch.Tensor) -> np.ndarray:
        import torch

        return torch.addmm(self.bias, hidden, self.weight).numpy()


class PackageLineTransfer(LineTransfer):
    """A model package's vae_mlp transfer with the "consistency" confidence, in the float32
    arithmetic of `PackageTransfer` (scaling in float32 rather than the scalers' float64);
    `in_two_steps` gives the emissivity through the folded output layer first. Its
    confidence is fp32; a whole-map transfer's may come from a bf16 branch
    (`PackageTransfer.confidence_precision`), within 1.5e-3 of it."""

    folds = True

    model: PackageTransfer

    def __init__(self, model: PackageTransfer, block_spots: int = 4096) -> None:
        super().__init__(model, block_spots)
        self._scalers: dict[int, tuple[SpectralScaler, np.ndarray, np.ndarray]] = {}
        # (key, (composed transfer, features, output layer, BlockMeanHead)) of the system
        self._decoder_parts: tuple | None = None

    def in_two_steps(self, line: RasterLine) -> tuple[TransferredLine, ConfidenceStep]:
        import torch

        from plumelink.models.confidence import confidence_from_distance

        models: TransferModels = self.model.models
        sec = line.secondary
        valid = np.asarray(sec.valid, bool)
        where = np.flatnonzero(valid)
        self._fit_on_first_line(line, where)
        emissivity = np.full(valid.size, np.nan, np.float32)
        confidence = np.full(valid.size, np.nan, np.float32)
        weights = self.line_weights
        areas = None if weights is None else np.full((valid.size, weights.shape[1]), np.nan,
                                                      np.float32)
        if not where.size:
            return (TransferredLine(line.index, None, emissivity, confidence, None, areas),
                    lambda: confidence)
        pre = models.preprocessor
        sec_mean, sec_scale = self._float32(pre.secondary)
        prim_mean, prim_scale = self._float32(pre.primary)
        composed, features, last, head = self._decoder(models, prim_mean, prim_scale)
        scaled = pre.correct(sec.spectra[where].astype(np.float32))
        scaled -= sec_mean
        scaled /= sec_scale
        with torch.no_grad():
            x = torch.from_numpy(scaled)
            z = composed.mlp(x)
            hidden = features(z, x)
            emissivity[where] = emissivity_from_block_means(head(hidden), np.ones(where.size, bool),
                                                            head.block)
            if areas is not None:
                areas[where] = self._line_head(last, prim_mean, prim_scale, weights)(hidden)
            latest = last(hidden[-1:]).numpy()[0] * prim_scale + prim_mean

        def consistency() -> np.ndarray:
            vae = composed.vae
            with torch.no_grad():
                mean2, _ = vae.encode(last(hidden))
                d = torch.linalg.vector_norm(mean2 - z, dim=1) / math.sqrt(vae.latent)
            confidence[where] = confidence_from_distance(d.numpy().astype(np.float64))
            return confidence

        return (TransferredLine(line.index, None, emissivity, confidence, latest, areas),
                consistency)

    def _line_head(self, last: torch.nn.Linear, mean: np.ndarray, scale: np.ndarray,
                   weights: np.ndarray) -> LinearHead:
        """The output layer folded with the element line weights, rebuilt when they change."""
        cached = getattr(self, "_line_head_parts", None)
        if cached is None or cached[0] is not weights or cached[1] is not last:
            self._line_head_parts = (weights, last, LinearHead(last, mean, scale, weights))
        return self._line_head_parts[2]

    def _float32(self, scaler: SpectralScaler) -> tuple[np.ndarray, np.ndarray]:
        """A scaler's mean and scale in float32: scaling a line in float32 rather than the
        scaler's float64 saves ~30 ms per 500 spectra, for differences of float32 rounding."""
        if self._scalers.get(id(scaler), (None,))[0] is not scaler:
            self._scalers[id(scaler)] = (scaler, scaler.mean.astype(np.float32),
                                         scaler.scale.astype(np.float32))
        return self._scalers[id(scaler)][1:]

    def _decoder(self, models: TransferModels, prim_mean: np.ndarray,
                 prim_scale: np.ndarray) -> tuple:
        """(composed transfer, features, output layer, `BlockMeanHead`) of the system, built
        once per system and primary scaler (the split and folding are not redone every line)."""
        key = (id(models), models.system, id(models.preprocessor.primary))
        if self._decoder_parts is None or self._decoder_parts[0] != key:
            composed = models.package.composed(models.system)
            features, last = composed.split_output_layer()
            head = BlockMeanHead(last, prim_mean, prim_scale)
            self._decoder_parts = (key, (composed, features, last, head))
        return self._decoder_parts[1]


def line_transfer_for(model: PackageTransfer) -> LineTransfer:
    """The line transfer of a model package for one map: folded when it writes the vae_mlp's
    spectra and its confidence is the "consistency" one computed from the networks alone
    (no training latent statistics)."""
    if (model.confidence_method == "consistency" and model.models.latent_stats is None
            and model.model_name == "vae_mlp"):
        return PackageLineTransfer(model)
    return LineTransfer(model)


def single_threaded_inference() -> None:
    """Torch on one thread for this process: inference of one raster line needs no thread
    pool, and a pool's spinning workers would take the CPU the GUI and the acquisition need.
    Call it on the thread that runs the transfer (a no-op without torch)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def load_package_transfer(model_dir: str | os.PathLike[str],
                          system: str | None = None) -> PackageTransfer:
    """A model package as a `PackageTransfer`, on one torch thread and warmed up (it is slow:
    call it off a GUI thread)."""
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package

    single_threaded_inference()
    # fp32 confidence: the two-step line transfer's is fp32, and both paths show one value
    model = PackageTransfer(load_package(model_dir), system, confidence_precision="fp32")
    try:  # prediction intervals for the live map, when the validation map is still there
        model.calibrate()
    except (FileNotFoundError, ValueError) as exc:
        log.info("no prediction intervals for %s: %s", model_dir, exc)
    axis = model.package.secondary_wavelength_nm[model.models.system]
    model.line_transfer().warm_up(len(axis))
    return model


__all__ = [
    "BlockMeanHead",
    "ConfidenceStep",
    "LineTransfer",
    "LinearHead",
    "PackageLineTransfer",
    "TransferredLine",
    "line_transfer_for",
    "load_package_transfer",
    "single_threaded_inference",
]
