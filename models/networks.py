"""The networks of the transfer method: a VAE of primary spectra and an MLP into its latent.

Architecture as in Vrábel et al. (JAAS 2023): dense layers with LeakyReLU, a linear
bottleneck and a linear output. The VAE's decoder is shared by every secondary system: each
system only needs its own latent MLP (the shared latent space).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

from .dense import Dense

LEAKY_SLOPE = 0.01


def dense_stack(sizes: Sequence[int], *, linear_last: bool = True) -> nn.Sequential:
    """Linear layers between consecutive sizes, LeakyReLU between them (`Dense`: nn.Linear
    trained on oneDNN on the CPU)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(Dense(a, b))
        if i < len(sizes) - 2 or not linear_last:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Variational autoencoder: n_px -> hidden... -> latent (mean, log variance) -> n_px."""

    def __init__(self, n_pixels: int, hidden: Sequence[int] = (1024, 512), latent: int = 64):
        super().__init__()
        self.n_pixels = int(n_pixels)
        self.hidden = tuple(int(h) for h in hidden)
        self.latent = int(latent)
        self.encoder = dense_stack([self.n_pixels, *self.hidden], linear_last=False)
        self.to_mean = Dense(self.hidden[-1], self.latent)
        self.to_log_var = Dense(self.hidden[-1], self.latent)
        self.decoder = dense_stack([self.latent, *reversed(self.hidden), self.n_pixels])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mean(h), self.to_log_var(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
        return self.decode(z), mean, log_var

    def config(self) -> dict:
        return {"kind": "vae", "n_pixels": self.n_pixels, "hidden": list(self.hidden),
                "latent": self.latent}


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, summed over latent dimensions."""
    return -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp(), dim=1)


class LatentMLP(nn.Module):
    """Secondary spectrum -> VAE latent mean of the paired primary spectrum."""

    def __init__(self, n_pixels: int, hidden: Sequence[int] = (128, 512), latent: int = 64):
        super().__init__()
        self.n_pixels = int(n_pixels)
        self.hidden = tuple(int(h) for h in hidden)
        self.latent = int(latent)
        self.net = dense_stack([self.n_pixels, *self.hidden, self.latent])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def config(self) -> dict:
        return {"kind": "latent_mlp", "n_pixels": self.n_pixels, "hidden": list(self.hidden),
                "latent": self.latent}


class LinearPath(nn.Module):
    """A rank-r linear map of the scaled secondary spectrum, added to a network's output.

    Not in the paper: PLS extrapolates to a new region and day better than the networks do
    (docs/transfer_experiments.md), so a low-rank linear path beside a network lets the network
    model only what is not linear. The output factor starts at zero: an untrained path leaves
    the network's output as it is.
    """

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.n_in, self.n_out, self.rank = int(n_in), int(n_out), int(rank)
        if self.rank < 1:
            raise ValueError(f"a linear path needs rank >= 1, got {rank}")
        self.down = nn.Linear(self.n_in, self.rank, bias=False)
        self.up = nn.Linear(self.rank, self.n_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class SystemDecoder(nn.Module):
    """A copy of the VAE decoder fine-tuned end to end for one secondary system.

    Fine-tuning MLP + decoder of one system must not change the decoder every other system
    shares (the latent space stays the VAE's): the fine-tuned copy is a module of its own,
    stored in its own file, and the VAE is left as trained. It may carry the system's
    `LinearPath` (secondary pixels -> primary), which `ComposedTransfer` adds to its output.
    """

    def __init__(self, sizes: Sequence[int], path_inputs: int = 0, path_rank: int = 0):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2:
            raise ValueError(f"a decoder needs at least 2 layer sizes, got {self.sizes}")
        self.net = dense_stack(self.sizes)
        self.path = (LinearPath(path_inputs, self.sizes[-1], path_rank) if path_rank
                     else None)

    @classmethod
    def from_vae(cls, vae: VAE, path_inputs: int = 0, path_rank: int = 0) -> SystemDecoder:
        """A copy of the VAE's decoder (same weights), to fine-tune without touching the VAE;
        with `path_rank` > 0 also a linear path from `path_inputs` secondary pixels."""
        decoder = cls([vae.latent, *reversed(vae.hidden), vae.n_pixels], path_inputs,
                      path_rank)
        decoder.net.load_state_dict(vae.decoder.state_dict())
        return decoder

    @property
    def latent(self) -> int:
        return self.sizes[0]

    @property
    def n_pixels(self) -> int:
        return self.sizes[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def config(self) -> dict:
        cfg: dict = {"kind": "decoder", "sizes": list(self.sizes)}
        if self.path is not None:
            cfg.update(path_inputs=self.path.n_in, path_rank=self.path.rank)
        return cfg


class ComposedTransfer(nn.Module):
    """Latent MLP followed by a decoder: secondary spectrum -> primary spectrum.

    The decoder is the VAE's shared one, or a system's own fine-tuned `SystemDecoder`.
    """

    def __init__(self, mlp: LatentMLP, vae: VAE, decoder: SystemDecoder | None = None):
        super().__init__()
        if mlp.latent != vae.latent:
            raise ValueError(f"latent sizes differ: MLP {mlp.latent}, VAE {vae.latent}")
        if decoder is not None and (decoder.latent != vae.latent
                                    or decoder.n_pixels != vae.n_pixels):
            raise ValueError(f"the system decoder maps {decoder.latent} -> {decoder.n_pixels}, "
                             f"the VAE {vae.latent} -> {vae.n_pixels}")
        if decoder is not None and decoder.path is not None and decoder.path.n_in != mlp.n_pixels:
            raise ValueError(f"the system decoder's linear path takes {decoder.path.n_in} "
                             f"secondary pixels, the latent MLP {mlp.n_pixels}")
        self.mlp = mlp
        self.vae = vae
        self.decoder = decoder

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) if self.decoder is not None else self.vae.decode(z)

    @property
    def path(self) -> LinearPath | None:
        return self.decoder.path if self.decoder is not None else None

    def latent_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's latent and the transferred spectrum (decoder, plus the path if any)."""
        z = self.mlp(x)
        y = self.decode(z)
        return z, (y if self.path is None else y + self.path(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent_and_output(x)[1]

    def split_output_layer(self) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                          nn.Linear]:
        """The output as (features, last): ``output = last(features(mlp(x), x))`` with
        ``last`` one Linear, so that a caller can fold it with later linear steps. features(z,
        x) are the decoder's last hidden layer, with the linear path's rank-r projection of x
        appended when the decoder has a path (``last`` then joins both output factors)."""
        decoder = self.decoder.net if self.decoder is not None else self.vae.decoder
        if not isinstance(decoder[-1], nn.Linear):
            raise TypeError("the decoder does not end in a linear layer")
        hidden_layers, last = decoder[:-1], decoder[-1]
        path = self.path
        if path is None:
            return (lambda z, x: hidden_layers(z)), last
        joined = nn.Linear(last.in_features + path.rank, last.out_features)
        with torch.no_grad():
            joined.weight.copy_(torch.cat([last.weight, path.up.weight], dim=1))
            joined.bias.copy_(last.bias)
        return (lambda z, x: torch.cat([hidden_layers(z), path.down(x)], dim=1)), joined


class OneStepMLP(nn.Module):
    """Baseline: the same layers as MLP + decoder, trained end to end without a VAE."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: Sequence[int] = (128, 512),
        latent: int = 64,
        decoder_hidden: Sequence[int] = (512, 1024),
        path_rank: int = 0,
    ):
        super().__init__()
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.sizes = [self.n_in, *hidden, latent, *decoder_hidden, self.n_out]
        self.net = dense_stack(self.sizes)
        self.path = LinearPath(self.n_in, self.n_out, path_rank) if path_rank else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y if self.path is None else y + self.path(x)

    def config(self) -> dict:
        cfg: dict = {"kind": "one_step_mlp", "sizes": list(self.sizes)}
        if self.path is not None:
            cfg["path_rank"] = self.path.rank
        return cfg
