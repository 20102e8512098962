"""`Dense`: the same layer as nn.Linear (parameters, outputs, gradients), whichever product
computes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plumelink.models import dense
from plumelink.models.dense import Dense, onednn_linear_available
from plumelink.models.networks import VAE


def pair(n_in: int, n_out: int, bias: bool = True) -> tuple[Dense, nn.Linear]:
    torch.manual_seed(1)
    layer = Dense(n_in, n_out, bias=bias)
    reference = nn.Linear(n_in, n_out, bias=bias)
    reference.load_state_dict(layer.state_dict())
    return layer, reference


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_outputs_and_gradients_are_those_of_linear(bias: bool, input_grad: bool) -> None:
    layer, reference = pair(37, 19, bias)
    x = torch.randn(23, 37)
    xs = [x.clone().requires_grad_(input_grad) for _ in range(2)]
    g = torch.randn(23, 19)
    outs = [layer(xs[0]), reference(xs[1])]
    for out in outs:
        out.backward(g)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)
    if input_grad:
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_upstream_gradient() -> None:
    layer, reference = pair(16, 8)
    x = torch.randn(16, 12).t()  # a transposed view
    outs = [layer(x), reference(x)]
    g = torch.randn(8, 12).t()
    for out in outs:
        out.backward(g)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)


def test_the_onednn_path_is_taken_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not onednn_linear_available():
        pytest.skip("this torch has no oneDNN fp32 linear")
    calls = []
    original = dense._product
    monkeypatch.setattr(dense, "_product", lambda *a: calls.append(1) or original(*a))
    layer, _ = pair(8, 4)
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    assert len(calls) == 2  # forward and the weight's gradient (x needs none)
    with torch.no_grad():
        layer(x)
    layer.double()(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.float()(x).dtype == torch.bfloat16  # autocast casts torch's linear
    assert len(calls) == 2


def test_the_switch_turns_onednn_off(monkeypatch: pytest.MonkeyPatch) -> None:
    onednn_linear_available.cache_clear()
    monkeypatch.setenv(dense.ENV_SWITCH, "0")
    try:
        assert not onednn_linear_available()
        layer, reference = pair(5, 3)
        x = torch.randn(2, 5)
        torch.testing.assert_close(layer(x), reference(x))
    finally:
        onednn_linear_available.cache_clear()


def test_the_vae_keeps_linear_parameter_names() -> None:
    vae = VAE(30, (12, 6), 4)
    assert all(isinstance(m, Dense) for m in vae.modules() if isinstance(m, nn.Linear))
    assert sorted(vae.state_dict()) == sorted([
        "encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias",
        "to_mean.weight", "to_mean.bias", "to_log_var.weight", "to_log_var.bias",
        "decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias",
        "decoder.4.weight", "decoder.4.bias"])
