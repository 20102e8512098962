"""`Dense`: torch's Linear layer whose training products run on oneDNN on the CPU.

Why: on this project's AMD EPYC (AVX-512) machine torch's fp32 matrix products go to MKL, which
takes a generic path on non-Intel processors; oneDNN (in torch's build, on the same OpenMP
threads) dispatches on the instruction set. Measured with one thread on the VAE's layer shapes
(128 x 4062 x 1024 and the backward products): 62-93 GFLOP/s against MKL's 34-77, the
backward ones (batch 128 as the inner dimension) most; a whole VAE training step 12-35 %
faster (benchmarks/bench_keras.py compares it with Keras, whose TensorFlow uses oneDNN too).

Only training on the CPU in float32 takes this path (gradients enabled, a weight that
requires them): inference, other devices and dtypes, and a torch without the operator keep
`torch.nn.functional.linear`. The parameters are those of `nn.Linear` (same names, same
initialisation), so state dicts and model files do not change.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ENV_SWITCH", "Dense", "onednn_linear_available"]


def _op():
    return torch.ops.mkldnn._linear_pointwise


# set to 0 to train on torch's own linear (a comparison, or a torch whose oneDNN misbehaves)
ENV_SWITCH = "PLUMELINK_ONEDNN_LINEAR"


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch runs oneDNN's fp32 linear (checked once on a small product against
    torch's own), unless the environment variable PLUMELINK_ONEDNN_LINEAR is 0."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(4, 8, generator=gen), torch.randn(3, 8, generator=gen)
        b = torch.randn(3, generator=gen)
        got = _op()(x, w, b, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _autocast_cpu() -> bool:
    """Whether CPU autocast (e.g. bfloat16) is on: then torch's linear, which it casts."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) on oneDNN; weight may be a transposed view."""
    return _op()(x.contiguous(), weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_w = _product(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Dense(nn.Linear):
    """nn.Linear; trained on oneDNN when on the CPU in float32 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and torch.is_grad_enabled() and self.weight.requires_grad
                and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not _autocast_cpu()
                and onednn_linear_available()):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
