"""A new secondary system from a few pairs: which pairs, and a latent MLP that fits them.

A lab adding a spectrometer may measure only tens or hundreds of spots with both the primary
and the new system. `select_pairs` picks such a budget from a training map, either spread
over the map (farthest-point sampling on the spots' grid positions: every region of the
sample is seen, as a lab would place a few calibration spots) or at random (seeded).

`AdaptedMLP` reuses what an existing system's latent MLP has learned instead of training
2048 x 128 first-layer weights from a few hundred spectra: the new system's spectra are
resampled onto the existing system's wavelength axis (the same plasma, seen through another
slit and grating), matched channel by channel to the existing system's spread, given a
learned per-channel gain and offset, and fed to the existing MLP, whose layers get low-rank
(LoRA-style) updates; the first layer's update reads the new system's own pixels, so lines
outside the existing system's range can still be used. Every step is linear up to the MLP's
activations, so the trained adapter folds exactly into a plain `LatentMLP` of the new
system's pixels (`fold`): the package stores that, and transfer, evaluation, the live view
and the confidence distances use it unchanged.

With few pairs PLS extrapolates to another region and day better than a network does (it
beat every network join on the simulated broadband CCD's test map, 200 pairs), and the two
err differently: `choose_blend` picks, on the held-out pairs, a weight w and PLS components
for ``w * network + (1 - w) * PLS``, which `Blend.decoder` stores exactly as the system's own
decoder (a copy of the VAE decoder, its last layer scaled by w, with the PLS map as its
low-rank linear path: the package's `SystemDecoder` format, used by every transfer path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from plumelink.models.baselines import PLSModel
from plumelink.models.networks import LEAKY_SLOPE, VAE, LatentMLP, SystemDecoder

PairSelection = Literal["spread", "random"]
PAIR_SELECTIONS: tuple[str, ...] = ("spread", "random")


def select_pairs(index: np.ndarray, shape: tuple[int, int], n: int, how: PairSelection,
                 seed: int, *, what: str = "the training map") -> np.ndarray:
    """Rows of `index` (flat spot indices iy * nx + ix of a map of `shape`) for a budget of
    `n` pairs, in the order chosen.

    "spread": farthest-point sampling on (iy, ix): the first spot drawn with the seed, each
    next one the spot farthest from every spot chosen so far (ties: the lowest row), so any
    prefix of the order is itself spread over the map. "random": a seeded permutation.
    Deterministic for a seed; a budget larger than the map's pairs is an error.
    """
    index = np.asarray(index, dtype=np.int64)
    available = int(index.size)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"the number of pairs must be an integer >= 1, got {n!r}")
    if n > available:
        raise ValueError(f"{n} pairs asked for, but {what} has only {available} spots valid "
                         f"in both systems")
    if how not in PAIR_SELECTIONS:
        raise ValueError(f"pair selection must be one of {PAIR_SELECTIONS}, got {how!r}")
    rng = np.random.default_rng(seed)
    if how == "random":
        return rng.permutation(available)[:n].astype(np.int64)
    nx = int(shape[1])
    points = np.stack([index // nx, index % nx], axis=1).astype(np.float64)
    order = np.empty(n, dtype=np.int64)
    order[0] = int(rng.integers(available))
    dist = np.sum((points - points[order[0]]) ** 2, axis=1)
    for i in range(1, n):
        order[i] = int(np.argmax(dist))
        dist = np.minimum(dist, np.sum((points - points[order[i]]) ** 2, axis=1))
    return order


def split_budget(order: np.ndarray, every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The budget's rows for fitting and for early stopping: every `every`-th row of the
    selection order (from the `every`-th) stops early, so a spread budget gives a spread
    early-stopping set too. Each part in storage order."""
    order = np.asarray(order, dtype=np.int64)
    held = np.zeros(order.size, dtype=bool)
    held[every - 1::every] = True
    if order.size < 2:
        raise ValueError(f"a budget of {order.size} pair cannot be split into fitting and "
                         f"early-stopping pairs")
    if not held.any():
        held[-1] = True
    return np.sort(order[~held]), np.sort(order[held])


def resampling(source_nm: np.ndarray, target_nm: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from the source axis onto the target axis as (left pixel, weight
    of the right pixel, inside): target j = (1 - w_j) s[i_j] + w_j s[i_j + 1]; target
    wavelengths outside the source range are marked outside (their value is unused)."""
    source_nm = np.asarray(source_nm, dtype=np.float64)
    target_nm = np.asarray(target_nm, dtype=np.float64)
    if np.any(np.diff(source_nm) <= 0):
        raise ValueError("the source wavelength axis must increase")
    pos = np.interp(target_nm, source_nm, np.arange(source_nm.size, dtype=np.float64))
    left = np.clip(np.floor(pos).astype(np.int64), 0, source_nm.size - 2)
    weight = pos - left
    inside = (target_nm >= source_nm[0]) & (target_nm <= source_nm[-1])
    return left, weight.astype(np.float32), inside


def overlap_fraction(axis_nm: np.ndarray, other_nm: np.ndarray) -> float:
    """Share of `axis_nm`'s range that `other_nm` covers (0..1)."""
    lo, hi = max(axis_nm[0], other_nm[0]), min(axis_nm[-1], other_nm[-1])
    return max(0.0, float(hi - lo)) / float(axis_nm[-1] - axis_nm[0])


class AdaptedMLP(nn.Module):
    """An existing system's latent MLP fed with a new system's spectra (see the module text).

    x (the new system's scaled spectrum) -> resampled onto the base axis, times a fixed
    per-channel match (`match`) and a learned gain, plus a learned offset -> the base MLP,
    each of its linear layers W + U V (rank `rank`; the first layer's V reads x itself),
    its biases trainable. The base weights are frozen buffers; `fold` gives the plain
    LatentMLP that computes the same function.
    """

    def __init__(self, base: LatentMLP, n_pixels: int, left: np.ndarray, weight: np.ndarray,
                 match: np.ndarray, rank: int = 8):
        super().__init__()
        if rank < 0:
            raise ValueError(f"the adapters' rank must be >= 0, got {rank}")
        linears = [m for m in base.net if isinstance(m, nn.Linear)]
        self.n_pixels, self.rank = int(n_pixels), int(rank)
        self.hidden, self.latent = base.hidden, base.latent
        self.register_buffer("left", torch.as_tensor(left, dtype=torch.long))
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("match", torch.as_tensor(match, dtype=torch.float32))
        n_base = linears[0].in_features
        self.gain = nn.Parameter(torch.ones(n_base))
        self.offset = nn.Parameter(torch.zeros(n_base))
        self.frozen = nn.ParameterList(
            [nn.Parameter(lin.weight.detach().clone(), requires_grad=False) for lin in linears])
        self.biases = nn.ParameterList(
            [nn.Parameter(lin.bias.detach().clone()) for lin in linears])
        self.down = nn.ParameterList()
        self.up = nn.ParameterList()
        if self.rank:
            for i, lin in enumerate(linears):
                n_in = self.n_pixels if i == 0 else lin.in_features
                down = torch.empty(self.rank, n_in)
                nn.init.normal_(down, std=1.0 / math.sqrt(n_in))
                self.down.append(nn.Parameter(down))
                self.up.append(nn.Parameter(torch.zeros(lin.out_features, self.rank)))

    def base_input(self, x: torch.Tensor) -> torch.Tensor:
        """x resampled onto the base system's axis, matched, with the learned gain/offset."""
        resampled = x[:, self.left] * (1 - self.weight) + x[:, self.left + 1] * self.weight
        return resampled * (self.match * self.gain) + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_input(x)
        n = len(self.frozen)
        for i in range(n):
            first = h if i > 0 else x
            out = F.linear(h, self.frozen[i], self.biases[i])
            if self.rank:
                out = out + (first @ self.down[i].T) @ self.up[i].T
            h = F.leaky_relu(out, LEAKY_SLOPE) if i < n - 1 else out
        return h

    def trained_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def fold(self) -> LatentMLP:
        """The plain LatentMLP of the new system's pixels computing the same function."""
        mlp = LatentMLP(self.n_pixels, self.hidden, self.latent)
        linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        scale = self.match * self.gain  # (n_base,)
        w0 = self.frozen[0] * scale  # the first layer on the resampled input
        first = torch.zeros(w0.shape[0], self.n_pixels, dtype=w0.dtype)
        first.index_add_(1, self.left, w0 * (1 - self.weight))
        first.index_add_(1, self.left + 1, w0 * self.weight)
        bias0 = self.biases[0] + self.frozen[0] @ self.offset
        for i, lin in enumerate(linears):
            weight = first if i == 0 else self.frozen[i].clone()
            if self.rank:
                weight = weight + self.up[i] @ self.down[i]
            lin.weight.copy_(weight)
            lin.bias.copy_(bias0 if i == 0 else self.biases[i])
        return mlp.eval()


def base_match(base_var: np.ndarray, base_scale: np.ndarray, resampled_std: np.ndarray,
               inside: np.ndarray) -> np.ndarray:
    """Per-channel factor that gives the resampled new spectra (scaled) the spread that the
    base system's scaled spectra had on its training map: std_base / (scale_base *
    std_resampled); 0 outside the new system's range and where a channel does not vary."""
    base_std = np.sqrt(np.maximum(np.asarray(base_var, dtype=np.float64), 0.0))
    floor = 1e-6 * max(float(np.max(resampled_std)), 1e-30)
    ok = inside & (resampled_std > floor) & (base_std > 0)
    match = np.zeros(base_std.size)
    match[ok] = base_std[ok] / (np.asarray(base_scale, dtype=np.float64)[ok] * resampled_std[ok])
    return match.astype(np.float32)


BLEND_WEIGHTS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class Blend:
    """The network's transfer blended with PLS: ``weight * network + (1 - weight) * PLS``,
    the PLS components and the weight chosen on held-out pairs (`choose_blend`)."""

    weight: float  # of the network; 1: no PLS
    components: int
    scores: dict[str, float]  # "components/weight" -> held-out RSE

    def decoder(self, vae: VAE, pls: PLSModel) -> SystemDecoder | None:
        """The blend as the system's own decoder: a copy of the VAE decoder whose last layer
        is scaled by the weight, with the PLS map (scaled by 1 - weight) as its rank-k
        linear path and the PLS intercept in the last bias. None when the weight is 1."""
        if self.weight >= 1.0:
            return None
        assert pls.coef is not None and pls.intercept is not None
        coef = torch.from_numpy(pls.coef.astype(np.float64)) * (1.0 - self.weight)
        u, sv, vt = torch.linalg.svd(coef, full_matrices=False)  # (n_in, n_out) = x -> y
        k = self.components
        decoder = SystemDecoder.from_vae(vae, coef.shape[0], k)
        assert decoder.path is not None
        last = decoder.net[-1]
        with torch.no_grad():
            last.weight.mul_(self.weight)
            last.bias.mul_(self.weight).add_(torch.from_numpy(pls.intercept) *
                                             (1.0 - self.weight))
            decoder.path.down.weight.copy_((u[:, :k] * sv[:k]).T.float())
            decoder.path.up.weight.copy_(vt[:k].T.float())
        return decoder.eval()


def choose_blend(network: np.ndarray, x: tuple[np.ndarray, np.ndarray],
                 y: tuple[np.ndarray, np.ndarray], components: list[int],
                 score: Callable[[np.ndarray, np.ndarray], float],
                 weights: tuple[float, ...] = BLEND_WEIGHTS) -> Blend:
    """The PLS components and blend weight with the lowest held-out score: PLS fitted on the
    fitting pairs (x[0], y[0]) for each candidate, every weight of the network's held-out
    prediction with it scored against y[1] (weight 1, the network alone, always
    a candidate): `network` is the network's prediction of the held-out pairs x[1]."""
    scores: dict[str, float] = {}
    best = (score(y[1], network), 1.0, components[0] if components else 1)
    scores["network"] = best[0]
    for k in components:
        pls = PLSModel(k).fit(x[0], y[0]).predict(x[1])
        for w in weights:
            if w >= 1.0:
                continue
            s = score(y[1], w * network + (1.0 - w) * pls)
            scores[f"{k}/{w:g}"] = s
            if s < best[0]:
                best = (s, w, k)
    return Blend(weight=best[1], components=best[2], scores=scores)


__all__ = ["BLEND_WEIGHTS", "PAIR_SELECTIONS", "AdaptedMLP", "Blend", "PairSelection",
           "base_match", "choose_blend", "overlap_fraction", "resampling", "select_pairs",
           "split_budget"]
