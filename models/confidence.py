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

from dataclasses import dataclass

import numpy as np
import torch

from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, SystemDecoder

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


def confidence_from_distance(d: np.ndarray) -> np.ndarray:
    """exp(-d) as float32: 1 = fully consistent, towards 0 = untrustworthy."""
    return np.exp(-np.asarray(d, dtype=np.float64)).astype(np.float32)


__all__ = [
    "DEFAULT_METHOD",
    "DEFINITION",
    "METHODS",
    "LatentStats",
    "TransferOutput",
    "confidence_from_distance",
    "transfer_with_distances",
]
