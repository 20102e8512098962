"""The whole-map transfer's folded kernel (`FusedTransfer`) against the reference
`transfer_with_distances`, and its opt-in bfloat16 arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plumelink.models import confidence as C
from plumelink.models.evaluate import PackageTransfer
from plumelink.models.networks import SystemDecoder
from plumelink.models.package import load_package
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.transfer import SETTINGS_KEY, transfer_map

# float32 rounding of the folded layers (measured < 3e-7 of the largest value)
FP32_SPECTRA = 1e-5
FP32_CONFIDENCE = 1e-5
# bfloat16 products (measured 3.0e-3 of the largest value, 1.9e-3 in confidence, on the
# small test map's quick package; README "Transfer")
BF16_SPECTRA = 1e-2
BF16_CONFIDENCE = 1e-2


@pytest.fixture(scope="module")
def package(tiny_model):
    return load_package(tiny_model[1])


@pytest.fixture(scope="module")
def raw(tiny_model) -> np.ndarray:
    with MapReader(tiny_model[0]["test"]) as reader:
        return next(reader.iter_blocks("secondary", 4096))[0]


def _reference(package, raw, method, decoder=None):
    models = PackageTransfer(package).models
    pre = models.preprocessor
    out = C.transfer_with_distances(package.latent_mlps[models.system], package.vae,
                                    models.scale_secondary(pre.correct(raw)), decoder=decoder)
    return pre.primary_spectra(out.scaled), C.confidence_from_distance(out.distances[method])


def _worst(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("method", ["consistency", "prior", "posterior_var"])
def test_fused_transfer_is_the_reference_to_float32_rounding(package, raw, method):
    expected, conf = _reference(package, raw, method)
    got, got_conf = PackageTransfer(package, method=method, model="vae_mlp",
                                    confidence_precision="fp32")(raw)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert _worst(got, expected) < FP32_SPECTRA
    np.testing.assert_allclose(got_conf, conf, atol=FP32_CONFIDENCE)
    # the distances alone (another model writes the spectra): the same, without the spectra
    transfer = PackageTransfer(package, method=method, model="vae_mlp",
                               confidence_precision="fp32")
    inputs = transfer.prepare(raw)[1]
    none, distance = transfer.fused().run(inputs, spectra=False)
    assert none is None
    np.testing.assert_array_equal(distance, transfer.fused().run(inputs)[1])


def test_folds_hold_with_a_system_decoder_and_its_linear_path(package, raw):
    models = PackageTransfer(package).models
    torch.manual_seed(3)
    decoder = SystemDecoder.from_vae(package.vae, raw.shape[1], path_rank=4)
    with torch.no_grad():  # an untrained path adds nothing: give it weight to test the fold
        decoder.path.up.weight.normal_(0.0, 0.05)
    expected, conf = _reference(package, raw, "consistency", decoder)
    fused = C.FusedTransfer(package.latent_mlps[models.system], package.vae, decoder,
                            models.preprocessor, rows=7,  # rows: several steps per call
                            confidence_precision="fp32")
    got, distance = fused(raw)
    assert _worst(got, expected) < FP32_SPECTRA
    np.testing.assert_allclose(C.confidence_from_distance(distance), conf,
                               atol=FP32_CONFIDENCE)


def test_fused_transfer_follows_a_per_map_fit(package, raw):
    transfer = PackageTransfer(package, model="vae_mlp")
    before = transfer.fused()
    transfer.fit_map([raw])
    assert transfer.fused() is not before
    expected, _ = _reference_with(transfer, raw)
    assert _worst(transfer(raw)[0], expected) < FP32_SPECTRA


def _reference_with(transfer, raw):
    pred, out = transfer.models.transfer(transfer.preprocessor.correct(raw))
    return pred, out


needs_bf16 = pytest.mark.skipif(not C.bf16_supported(), reason="CPU without bf16 instructions")


@needs_bf16
@pytest.mark.parametrize("method", ["consistency", "posterior_var"])
def test_the_default_confidence_branch_is_bf16_and_leaves_the_spectra_alone(package, raw,
                                                                             method):
    exact = PackageTransfer(package, method=method, model="vae_mlp",
                            confidence_precision="fp32")
    default = PackageTransfer(package, method=method, model="vae_mlp")
    assert default.confidence_precision == "bf16"
    assert default.identity()["confidence_precision"] == "bf16"
    (spectra32, conf32), (spectra, conf) = exact(raw), default(raw)
    np.testing.assert_array_equal(spectra, spectra32)  # the same fp32 products
    assert 0 < np.abs(conf - conf32).max() < BF16_CONFIDENCE  # > 0: the bf16 branch ran
    rank = np.corrcoef(np.argsort(np.argsort(conf)), np.argsort(np.argsort(conf32)))[0, 1]
    assert rank > 0.999


@needs_bf16
def test_bf16_is_close_to_fp32_within_the_stated_bound(package, raw):
    fp32, conf32 = PackageTransfer(package, model="vae_mlp", confidence_precision="fp32")(raw)
    bf16, conf16 = PackageTransfer(package, precision="bf16", model="vae_mlp")(raw)
    assert bf16.dtype == np.float32
    assert 0 < _worst(bf16, fp32) < BF16_SPECTRA  # > 0: the bf16 path really ran
    np.testing.assert_allclose(conf16, conf32, atol=BF16_CONFIDENCE)


@needs_bf16
def test_bf16_reaches_the_outputs_recorded_settings(package, tiny_model, tmp_path):
    out = transfer_map(tiny_model[0]["test"], tmp_path / "bf16.h5",
                       PackageTransfer(package, precision="bf16"))
    with MapReader(out) as reader:
        assert reader.settings[SETTINGS_KEY]["precision"] == "bf16"


def test_bf16_on_a_cpu_without_it_is_a_clear_error(package, monkeypatch):
    monkeypatch.setattr(C, "bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="bf16 needs a CPU with bfloat16 instructions"):
        PackageTransfer(package, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        PackageTransfer(package, precision="fp16")
    with pytest.raises(ValueError, match="bf16 needs a CPU with bfloat16 instructions"):
        PackageTransfer(package, confidence_precision="bf16")
    # auto falls back to the transfer's own arithmetic
    assert PackageTransfer(package).confidence_precision == "fp32"


def test_finish_writes_into_the_callers_array(package, raw):
    """transfer_map hands each block its rows of the group's array: the spectra land there,
    as computed without it; an array that cannot take them is refused."""
    transfer = PackageTransfer(package, model="vae_mlp")
    prepared = transfer.prepare(raw[:40])
    expected, conf = transfer.finish(prepared)
    group = np.full((50, expected.shape[1]), np.nan, np.float32)
    got, got_conf = transfer.finish(prepared, out=group[5:45])
    assert np.shares_memory(got, group)
    np.testing.assert_array_equal(group[5:45], expected)
    np.testing.assert_array_equal(got_conf, conf)
    assert np.isnan(group[:5]).all() and np.isnan(group[45:]).all()
    for bad in (group[5:44], group[5:45].astype(np.float64), group[5:45, ::2]):
        with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32"):
            transfer.finish(prepared, out=bad)
