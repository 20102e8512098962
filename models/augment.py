"""Day-to-day instrument drift and detector noise as training-time augmentations of the
secondary spectra.

A transfer model trained on one measurement day is applied to maps of other days, when the
secondary spectrometer's throughput, spectral response and wavelength calibration have
drifted a little (the simulator draws them per day: `drivers.sim.spectrograph`). A linear
model (PLS) follows a gain change proportionally; a network extrapolates. `SpectralDrift`
draws such a drift for every training spectrum, on the fly per batch, so the networks learn
to map drifted secondary spectra to the undrifted primary target. It never sees a test day.

The drift acts on unscaled, baseline-corrected counts (scaled batches are unscaled with the
training scaler, drifted, and scaled again), in this order:

- wavelength shift: δ pixels, uniform in [-shift_px, shift_px], by linear interpolation
  between neighbouring pixels (each pixel's counts spread evenly over its width);
- spectral response: × (1 + Σ_k a_k P_k(t)), Legendre polynomials P_1..P_n of the pixel
  position t in [-1, 1], a_k ~ N(0, response²) (a smooth tilt and curvature of the response);
- gain: × exp(g), g ~ N(0, gain²) (throughput: fibre coupling, laser energy at the sample).

Random numbers come from torch's default generator on the batch's device, so a seeded run is
deterministic and a resumed one (whose checkpoint holds that generator's state) exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plumelink.models.fit import BatchSource, MappedSource


@dataclass(frozen=True)
class DriftConfig:
    """Magnitudes of the drawn drift; zero turns a part off (all zero: the identity)."""

    gain: float = 0.0  # standard deviation of the log gain
    shift_px: float = 0.0  # largest wavelength shift, pixels (at most 1)
    response: float = 0.0  # standard deviation of each Legendre coefficient
    response_order: int = 2  # highest Legendre order of the response curve

    def __post_init__(self) -> None:
        for name in ("gain", "shift_px", "response"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"DriftConfig.{name} must be a number >= 0, got {value!r}")
        if self.shift_px > 1:
            raise ValueError(f"DriftConfig.shift_px must be at most 1 pixel, got "
                             f"{self.shift_px!r}")
        if (isinstance(self.response_order, bool) or not isinstance(self.response_order, int)
                or self.response_order < 1):
            raise ValueError(f"DriftConfig.response_order must be an integer >= 1, got "
                             f"{self.response_order!r}")

    @property
    def active(self) -> bool:
        return self.gain > 0 or self.shift_px > 0 or self.response > 0


def shift_pixels(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Spectra (n, n_px) moved by shift (n,) pixels towards higher index (|shift| ≤ 1),
    linear interpolation, edge pixels repeated."""
    left = torch.cat([x[:, :1], x[:, :-1]], dim=1)  # x(p - 1)
    right = torch.cat([x[:, 1:], x[:, -1:]], dim=1)  # x(p + 1)
    d = shift[:, None]
    return x + d.clamp(min=0) * (left - x) + (-d).clamp(min=0) * (right - x)


def legendre_basis(n_px: int, order: int, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """P_1..P_order at n_px evenly spaced points of [-1, 1]: (order, n_px) float32."""
    t = np.linspace(-1.0, 1.0, n_px)
    rows = [np.polynomial.legendre.Legendre.basis(k)(t) for k in range(1, order + 1)]
    return torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(device)


class SpectralDrift:
    """Draws a drift per spectrum and applies it to a batch of *scaled* spectra.

    mean, scale: the scaler that scaled the batch (`SpectralScaler.mean` / `.scale`).
    floor: optional per-channel counts that gain and response leave alone (the pedestal that
    baseline-corrected spectra keep above the sliding minimum: dark pattern, read noise).
    """

    def __init__(self, config: DriftConfig, mean: np.ndarray, scale: np.ndarray,
                 floor: np.ndarray | None = None):
        self.config = config
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))
        self.floor = torch.zeros_like(self.mean) if floor is None else torch.as_tensor(
            np.asarray(floor, dtype=np.float32))
        self._basis: torch.Tensor | None = None

    def _on(self, device: torch.device) -> None:
        if self.mean.device != device:
            self.mean, self.scale = self.mean.to(device), self.scale.to(device)
            self.floor = self.floor.to(device)
        if self.config.response > 0 and (self._basis is None or self._basis.device != device):
            self._basis = legendre_basis(self.mean.numel(), self.config.response_order, device)

    def counts(self, x: torch.Tensor) -> torch.Tensor:
        """Drift applied to unscaled spectra (n, n_px)."""
        c = self.config
        n = x.shape[0]
        self._on(x.device)
        if c.shift_px > 0:
            shift = (torch.rand(n, device=x.device) * 2 - 1) * c.shift_px
            x = shift_pixels(x, shift)
        factor = None
        if c.response > 0:
            assert self._basis is not None
            coef = torch.randn(n, self._basis.shape[0], device=x.device) * c.response
            factor = 1 + coef @ self._basis
        if c.gain > 0:
            gain = torch.exp(torch.randn(n, 1, device=x.device) * c.gain)
            factor = gain if factor is None else factor * gain
        return x if factor is None else self.floor + (x - self.floor) * factor

    @torch.no_grad()
    def __call__(self, x_scaled: torch.Tensor) -> torch.Tensor:
        if not self.config.active:
            return x_scaled
        self._on(x_scaled.device)  # mean and scale on the batch's device
        x = x_scaled * self.scale + self.mean
        return ((self.counts(x) - self.mean) / self.scale).to(x_scaled.dtype)

    @property
    def active(self) -> bool:
        return self.config.active

    def first(self, batch: tuple) -> tuple:
        """A batch (inputs, targets...) with the inputs drifted (for `fit.MappedSource`)."""
        return (self(batch[0]), *batch[1:])


class InputNoise:
    """White Gaussian noise of standard deviation `sd` (in units of the scaled secondary, the
    network's input) added to every training spectrum of a batch.

    Training on noisier copies of the inputs is a regulariser (to first order Tikhonov
    regularisation of the network's input gradient, Bishop 1995): the network cannot fit the
    detector noise of the few thousand training spectra, and extrapolates more smoothly to
    another region and day. Measured on the small preset (docs/transfer_experiments.md): it
    helps the end-to-end one-step MLP most, the VAE + MLP less (its decoder is already held
    to the VAE's latent space). The noise of a noise-only channel of the scaled secondary is
    about 0.25 in these units."""

    def __init__(self, sd: float):
        if not (isinstance(sd, (int, float)) and np.isfinite(sd) and sd >= 0):
            raise ValueError(f"input_noise (the input noise's standard deviation) must be a "
                             f"number >= 0 (0: none), got {sd!r}")
        self.sd = float(sd)

    @property
    def active(self) -> bool:
        return self.sd > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sd * torch.randn_like(x) if self.sd else x

    def first(self, batch: tuple) -> tuple:
        """A batch (inputs, targets...) with noise on the inputs (for `fit.MappedSource`)."""
        return (self(batch[0]), *batch[1:])


def augmented(source: BatchSource, device: torch.device | str,
              *augmentations: SpectralDrift | InputNoise) -> BatchSource:
    """The training source with each active augmentation applied in turn to the inputs of
    every batch (on `device`); the source itself when none is active."""
    active = [a for a in augmentations if a.active]
    if not active:
        return source

    def apply(batch: tuple) -> tuple:
        for augmentation in active:
            batch = augmentation.first(batch)
        return batch

    return MappedSource(source, apply, device)


__all__ = ["DriftConfig", "InputNoise", "SpectralDrift", "augmented", "legendre_basis",
           "shift_pixels"]
