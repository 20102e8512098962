"""Per-spectrum confidence of the VAE + latent MLP transfer.

The transfer maps a (scaled) secondary spectrum s to a latent vector z = MLP(s) and decodes
it, x̂ = decoder(z). Nothing measures the primary spectrum at transfer time, so the
confidence has to come from the model itself. Candidates (all in the model's scaled space):

- "consistency": re-encode the transferred spectrum with the VAE encoder and compare its
  latent mean with the MLP's latent: d = ||encoder_mean(x̂) − z|| / √latent. A latent the
  decoder maps to a spectrum the encoder does not map back lies off the manifold the VAE
  learned from primary spectra.
- "prior": distance of z from the VAE prior, d = ||z|| / √latent (the Mahalanobis distance
  w.r.t. N(0, I), which the KL term pulls the training latents towards).
- "posterior_var": mean posterior variance of the re-encoded spectrum, exp(log_var).
- "mahalanobis": Mahalanobis distance of z from the training latents (needs their mean and
  covariance, `LatentStats`; evaluation can compute them, a package does not store them).

The chosen method (`DEFAULT_METHOD`, picked by the Spearman correlation with the actual
per-spectrum error of vae_mlp measured by `plumelink evaluate`) turns its distance d into

    confidence = exp(−d)   in (0, 1]; HIGHER = MORE TRUSTWORTHY.

So a good confidence has a NEGATIVE rank correlation with the transfer error.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, SystemDecoder
from plumelink.pipeline.preprocess import Preprocessor

METHODS = ("consistency", "prior", "posterior_var", "mahalanobis")
DEFAULT_METHOD = "consistency"
DEFINITION = (
    "confidence = exp(-d), higher = more trustworthy, in (0, 1]; d for method "
    "'consistency': RMS difference between the latent latent_mlp(secondary) and the VAE "
    "encoder's latent mean of the transferred spectrum (both in the model's scaled space)"
)


@dataclass(frozen=True)
class LatentStats:
    """Mean and inverse covariance of training latents (for the "mahalanobis" method)."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, latents: np.ndarray, ridge: float = 1e-3) -> LatentStats:
        z = np.asarray(latents, dtype=np.float64)
        cov = np.atleast_2d(np.cov(z, rowvar=False))
        cov += ridge * np.eye(cov.shape[0]) * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
        return cls(mean=z.mean(axis=0), precision=np.linalg.inv(cov))


@dataclass(frozen=True)
class TransferOutput:
    """One block through the composed model: latent, transferred spectrum (scaled), distances."""

    latent: np.ndarray  # (n, latent) MLP output
    scaled: np.ndarray  # (n, n_px) decoded, still in the primary scaler's space
    distances: dict[str, np.ndarray]  # method -> (n,) d, larger = less trustworthy


@torch.no_grad()
def transfer_with_distances(
    mlp: LatentMLP,
    vae: VAE,
    secondary_scaled: np.ndarray,
    *,
    stats: LatentStats | None = None,
    batch_size: int = 4096,
    decoder: SystemDecoder | None = None,
) -> TransferOutput:
    """Run MLP + decoder on scaled secondary spectra and compute every candidate distance.

    decoder: the system's fine-tuned decoder (`ModelPackage.decoders`), with its linear path
    if it has one; None: the VAE's."""
    composed = ComposedTransfer(mlp, vae, decoder).eval()
    x = np.ascontiguousarray(secondary_scaled, dtype=np.float32)
    zs, xs, dist = [], [], {m: [] for m in METHODS if m != "mahalanobis" or stats is not None}
    scale = float(np.sqrt(vae.latent))
    for start in range(0, len(x), batch_size):
        z, decoded = composed.latent_and_output(torch.from_numpy(x[start : start + batch_size]))
        mean2, log_var2 = vae.encode(decoded)
        zs.append(z.numpy())
        xs.append(decoded.numpy())
        dist["consistency"].append((torch.linalg.vector_norm(mean2 - z, dim=1) / scale).numpy())
        dist["prior"].append((torch.linalg.vector_norm(z, dim=1) / scale).numpy())
        dist["posterior_var"].append(log_var2.exp().mean(dim=1).numpy())
        if stats is not None:
            d = z.numpy().astype(np.float64) - stats.mean
            m = np.sqrt(np.einsum("ij,jk,ik->i", d, stats.precision, d)) / scale
            dist["mahalanobis"].append(m)
    n_px = vae.n_pixels
    return TransferOutput(
        latent=np.concatenate(zs) if zs else np.zeros((0, vae.latent), np.float32),
        scaled=np.concatenate(xs) if xs else np.zeros((0, n_px), np.float32),
        distances={
            k: (np.concatenate(v) if v else np.zeros(0)).astype(np.float64)
            for k, v in dist.items()
        },
    )


PRECISIONS = ("fp32", "bf16")
CONFIDENCE_PRECISIONS = ("auto", "fp32", "bf16")
"""Arithmetic of the confidence branch of `FusedTransfer` (the re-encoding of the decoded
spectrum). "auto": bf16 on a CPU with bf16 instructions, the transfer's own otherwise."""
FUSED_ROWS = 1024
"""Spectra per matrix product of `FusedTransfer`. Measured with two torch threads on the
2-core development machine (the small map's package, min of 5 interleaved runs, us per
spectrum): 500 rows 101, 1,000 96, 1,500 94, 2,048 97, 4,096 113 (the 4,096-row activations,
17-66 MB per layer, leave the cache; the networks alone in 4,096-row blocks: 107). An earlier
session measured 1,024 up to 1.5x slower than 4,096 on the then-shared machine."""


def bf16_supported() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) that torch uses."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precisions(precision: str, confidence_precision: str = "auto") -> tuple[str, str]:
    """(precision, confidence_precision) checked, "auto" resolved (bf16 where the CPU has
    it, else the transfer's own); ValueError naming the bad value or the missing bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if confidence_precision not in CONFIDENCE_PRECISIONS:
        raise ValueError(f"confidence_precision must be one of {CONFIDENCE_PRECISIONS}, got "
                         f"{confidence_precision!r}")
    if "bf16" in (precision, confidence_precision) and not bf16_supported():
        raise ValueError("precision bf16 needs a CPU with bfloat16 instructions (AVX512-BF16 "
                         "or AMX); this one has neither: use fp32")
    if confidence_precision == "auto":
        confidence_precision = "bf16" if bf16_supported() else precision
    return precision, confidence_precision


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


class FusedTransfer:
    """The vae_mlp transfer of raw secondary counts and one confidence distance, in one pass
    over small groups of spectra, with its linear steps folded (the whole-map transfer's
    kernel; `transfer_with_distances` stays the reference that computes every candidate).

    Why: the transfer's arithmetic beyond the networks (float64 scaling of both systems, the
    encoder re-reading a 4062-pixel spectrum for the confidence) cost as much as the networks.
    The folds, exact in real arithmetic and done once:

    - the latent MLP's first layer and the linear path's down projection read the scaled
      secondary spectrum together (one matrix product);
    - the decoder's output layer, the linear path's up projection and the primary scaler's
      inverse are one layer that writes unscaled primary spectra straight into the result;
    - the VAE encoder's first layer applied to the decoded (scaled) spectrum is linear in the
      decoder's last hidden layer (and the path's rank-r features), so "consistency" and
      "posterior_var" re-encode from those 1,024 + r features instead of 4,062 pixels.

    The secondary scaling is done in float32 (the scaler's float64 in `Preprocessor`).
    Against `TransferModels.transfer` the spectra differ by float32 rounding (measured
    2.4e-7 of the largest value on the small test map's package, the confidence by 1.2e-7;
    tests/models/test_fused_transfer.py bounds both at 1e-5). `prepare` (numpy: baseline,
    scaling) and `run` (torch) are apart so that a caller can overlap them.

    precision "bf16": every matrix product in bfloat16 (weights and activations; the folds
    are done in float32 first), results and distances in float32. Needs a CPU with bf16
    instructions (`bf16_supported`). Measured on the small test map: max |bf16 - fp32| /
    max |fp32| = 3.0e-3, confidence within 1.9e-3 (tests bound both at 1e-2).

    confidence_precision: the arithmetic of the confidence branch alone (the encoder's
    re-reading, a fifth of the products). "auto" (the default) runs it in bf16 where the CPU
    has bf16 instructions, whatever `precision`: the confidence ranks spots and bins them for
    the intervals, and needs no fp32. Measured on the small map's package, against fp32:
    distance within 0.4 %, confidence within 1.5e-3 (Spearman 0.99999), the fused kernel
    1.22 x faster; the spectra are untouched (the same fp32 products).
    """

    def __init__(self, mlp: LatentMLP, vae: VAE, decoder: SystemDecoder | None,
                 preprocessor: Preprocessor, method: str = DEFAULT_METHOD, *,
                 precision: str = "fp32", rows: int = FUSED_ROWS,
                 confidence_precision: str = "auto") -> None:
        if method not in METHODS or method == "mahalanobis":
            raise ValueError(f"FusedTransfer computes {[m for m in METHODS if m != 'mahalanobis']}"
                             f", not {method!r}")
        precision, confidence_precision = resolve_precisions(precision, confidence_precision)
        composed = ComposedTransfer(mlp, vae, decoder)
        net = decoder.net if decoder is not None else vae.decoder
        path = composed.path
        first, last = mlp.net[0], net[-1]
        if not (isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
                and isinstance(vae.encoder[0], nn.Linear)):
            raise TypeError("FusedTransfer needs linear first and last layers")
        self.method, self.precision, self.rows = method, precision, int(rows)
        self.preprocessor = preprocessor
        self.n_hidden = first.out_features
        self.latent = vae.latent
        self.n_px = last.out_features
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.confidence_precision = confidence_precision
        self._cdtype = torch.bfloat16 if confidence_precision == "bf16" else torch.float32
        # Folded in float32 (each weight one product or one scaling, rounded once), the
        # biases in float64: a float64 fold took 0.55 s for the small map's package, a fixed
        # cost as large as transferring 1,500 spectra. Weights are kept (out, in) and used
        # transposed (addmm(bias, x, w.T) = x @ w.T + bias), without a transposed copy.
        with torch.no_grad():
            # input: [MLP first layer; path down] on the scaled secondary
            w_in, b_in = first.weight.detach(), first.bias.detach()
            if path is not None:
                w_in = torch.cat([w_in, path.down.weight.detach()])
                b_in = torch.cat([b_in, b_in.new_zeros(path.rank)])
            # output: scaled = W_last @ [hidden; path features] + b_last
            w_last, b_last = last.weight.detach(), _f64(last.bias)
            if path is not None:
                w_last = torch.cat([w_last, path.up.weight.detach()], dim=1)
            p_mean = torch.from_numpy(preprocessor.primary.mean).to(torch.float64)
            p_scale = torch.from_numpy(preprocessor.primary.scale).to(torch.float64)
            w_out = w_last * p_scale.float()[:, None]
            b_out = b_last * p_scale + p_mean
            enc = vae.encoder[0]
            w_enc = enc.weight.detach() @ w_last
            b_enc = _f64(enc.weight @ last.bias.detach()) + _f64(enc.bias)
        cast, ccast = self._dtype, self._cdtype
        self._w_in, self._b_in = w_in.to(cast), b_in.to(cast)
        self._w_out, self._b_out = w_out.to(cast), b_out.to(cast)
        self._w_enc, self._b_enc = w_enc.to(ccast), b_enc.to(ccast)

        def layers(module: nn.Module, dtype: torch.dtype = cast) -> nn.Module:
            """The package's own layers in fp32 (shared, no copy), a bf16 copy otherwise."""
            return (module if dtype == torch.float32
                    else copy.deepcopy(module).to(dtype).eval())

        self._mlp_rest = layers(mlp.net[1:])
        self._hidden = layers(net[:-1])
        self._enc_rest = layers(vae.encoder[1:], ccast)
        self._to_mean = layers(vae.to_mean, ccast)
        self._to_log_var = layers(vae.to_log_var, ccast)
        self._scale = math.sqrt(vae.latent)

    def __call__(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw secondary counts (n, n_secondary_px) -> (unscaled, baseline-corrected primary
        spectra (n, n_px) float32, distance d of the method (n,) float64)."""
        return self.run(self.prepare(raw))

    def prepare(self, raw: np.ndarray) -> torch.Tensor:
        """The numpy part: baseline-corrected, scaled network inputs (n, n_secondary_px).

        Apart from `run` so that a caller can prepare blocks on its own threads
        (`pipeline.transfer` does: the baseline correction is the only step torch does not
        spread over the cores)."""
        return scaled_inputs(self.preprocessor, raw)

    @torch.inference_mode()
    def run(self, inputs: torch.Tensor, spectra: bool = True, out: np.ndarray | None = None
            ) -> tuple[np.ndarray | None, np.ndarray]:
        """The torch part, on prepared inputs: (primary spectra, distances) as `__call__`;
        spectra=False: the distances alone (None for the spectra: another model writes them,
        and the output layer, the largest product, is skipped). out: a C-contiguous float32
        (n, n_px) array the spectra are written into (and returned): the caller's own
        buffer, so a group's spectra are not copied again (16 MB per 1,024 spectra)."""
        n = len(inputs)
        if out is not None and (out.shape != (n, self.n_px) or out.dtype != np.float32
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous float32 array of shape "
                             f"{(n, self.n_px)}, got {out.dtype} {out.shape}")
        primary = (out if out is not None else np.empty((n, self.n_px), np.float32)
                   ) if spectra else None
        distance = torch.empty(n, dtype=torch.float64)
        result = None if primary is None else torch.from_numpy(primary)
        for start in range(0, n, self.rows):
            rows = slice(start, min(n, start + self.rows))
            distance[rows] = self._rows(inputs[rows],
                                        None if result is None else result[rows])
        return primary, distance.numpy()

    def _rows(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        x = x.to(self._dtype)
        a = torch.addmm(self._b_in, x, self._w_in.T)
        z = self._mlp_rest(a[:, : self.n_hidden])
        features = self._hidden(z)
        if a.shape[1] > self.n_hidden:  # the linear path's rank-r features
            features = torch.cat([features, a[:, self.n_hidden :]], dim=1)
        if out is not None and self._dtype == torch.float32:
            torch.addmm(self._b_out, features, self._w_out.T, out=out)
        elif out is not None:
            out.copy_(torch.addmm(self._b_out, features, self._w_out.T))
        if self.method == "prior":
            return torch.linalg.vector_norm(z.float(), dim=1).double() / self._scale
        h = self._enc_rest(torch.addmm(self._b_enc, features.to(self._cdtype), self._w_enc.T))
        if self.method == "posterior_var":
            return self._to_log_var(h).float().exp().mean(dim=1).double()
        mean2 = self._to_mean(h)
        return torch.linalg.vector_norm(mean2.float() - z.float(), dim=1).double() / self._scale


def scaled_inputs(preprocessor: Preprocessor, raw: np.ndarray) -> torch.Tensor:
    """Raw secondary counts -> baseline-corrected inputs scaled in float32, as
    `FusedTransfer.run` takes them (no kernel needed: a caller can prepare the first block
    while the kernel's folds are still being computed)."""
    x = preprocessor.correct(raw)
    x -= preprocessor.secondary.mean.astype(np.float32)
    x /= preprocessor.secondary.scale.astype(np.float32)
    return torch.from_numpy(x)


def confidence_from_distance(d: np.ndarray) -> np.ndarray:
    """exp(-d) as float32: 1 = fully consistent, towards 0 = untrustworthy."""
    return np.exp(-np.asarray(d, dtype=np.float64)).astype(np.float32)


__all__ = [
    "CONFIDENCE_PRECISIONS",
    "DEFAULT_METHOD",
    "DEFINITION",
    "FUSED_ROWS",
    "METHODS",
    "PRECISIONS",
    "FusedTransfer",
    "LatentStats",
    "TransferOutput",
    "bf16_supported",
    "confidence_from_distance",
    "resolve_precisions",
    "scaled_inputs",
    "transfer_with_distances",
]
