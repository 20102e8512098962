"""The line transfer of a loaded model package: whole lines equal the block transfer, the
two-step transfer (folded decoder head) equals the whole one, per-map scalers are fitted on
each map's first line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plumelink.models.evaluate import PackageTransfer
from plumelink.models.line_transfer import (
    BlockMeanHead,
    LineTransfer,
    PackageLineTransfer,
    load_package_transfer,
)
from plumelink.models.networks import SystemDecoder
from plumelink.models.package import load_package
from plumelink.pipeline.emissivity import total_emissivity
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.preprocess import correct_baseline


def read_line(path: Path, index: int):
    with MapReader(path) as reader:
        return reader.read_line(index)


def test_whole_line_matches_the_block_transfer(tiny_gui_model):
    maps, model = tiny_gui_model
    transfer = PackageTransfer(load_package(model))
    line = read_line(maps["test"], 0)
    out = transfer.line_transfer()(line)
    valid = line.secondary.valid
    p, c = transfer(line.secondary.spectra[valid].astype(np.float32))
    np.testing.assert_allclose(out.spectra[valid], p, rtol=1e-5)
    np.testing.assert_allclose(out.confidence[valid], c, rtol=1e-5)
    np.testing.assert_allclose(out.emissivity, total_emissivity(out.spectra, valid), rtol=1e-5)
    assert np.isnan(out.confidence[~valid]).all() and (out.spectra[~valid] == 0).all()


@pytest.mark.parametrize("linear_path", [False, True])
def test_two_steps_give_the_whole_transfer(tiny_gui_model, linear_path):
    maps, model = tiny_gui_model
    package = load_package(model)
    if linear_path:  # a fine-tuned decoder with a (non-zero) linear path from the secondary
        system = package.systems[0]
        n_in = package.latent_mlps[system].n_pixels
        decoder = SystemDecoder.from_vae(package.vae, n_in, 4)
        with torch.no_grad():
            decoder.path.up.weight.normal_(0.0, 0.05)
        package.decoders[system] = decoder
    # fp32: the two steps' confidence is fp32; the whole transfer's branch may be bf16
    transfer = PackageTransfer(package, confidence_precision="fp32")
    line = read_line(maps["test"], 1)
    line.secondary.valid[3] = False
    lines = transfer.line_transfer()
    assert isinstance(lines, PackageLineTransfer) and lines.folds
    first, confidence = lines.in_two_steps(line)
    assert np.isnan(first.confidence).all()  # the map does not wait for it
    whole = lines(line)
    # the emissivity from the folded output layer equals that of the decoded spectra
    valid = line.secondary.valid
    np.testing.assert_allclose(first.emissivity[valid], whole.emissivity[valid], rtol=1e-4,
                               atol=1e-4 * np.abs(whole.emissivity[valid]).max())
    last = np.flatnonzero(valid)[-1]
    np.testing.assert_allclose(first.last_spectrum, whole.spectra[last], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(confidence(), whole.confidence, rtol=1e-5)
    assert np.isnan(first.emissivity[3]) and np.isnan(confidence()[3])
    if linear_path:  # the path is in both computations, not left out of both
        plain = PackageTransfer(load_package(model)).line_transfer()(line)
        assert not np.allclose(plain.emissivity[valid], whole.emissivity[valid], rtol=1e-3)


def test_split_output_layer_gives_the_composed_output(tiny_gui_model):
    _, model = tiny_gui_model
    package = load_package(model)
    system = package.systems[0]
    decoder = SystemDecoder.from_vae(package.vae, package.latent_mlps[system].n_pixels, 3)
    with torch.no_grad():
        decoder.path.up.weight.normal_(0.0, 0.05)
    package.decoders[system] = decoder
    composed = package.composed(system)
    features, last = composed.split_output_layer()
    x = torch.randn(5, composed.mlp.n_pixels)
    with torch.no_grad():
        np.testing.assert_allclose(last(features(composed.mlp(x), x)).numpy(),
                                   composed(x).numpy(), rtol=1e-5, atol=1e-5)
    assert last.in_features == package.vae.hidden[0] + 3


def test_block_mean_head_gives_the_block_means_of_the_unscaled_output():
    torch.manual_seed(0)
    last = torch.nn.Linear(6, 40)
    mean, scale = np.linspace(10, 50, 40), np.linspace(1, 3, 40)
    head = BlockMeanHead(last, mean, scale)
    hidden = torch.randn(4, 6)
    with torch.no_grad():
        spectra = last(hidden).numpy() * scale + mean
    usable = 40 - 40 % head.block
    expected = spectra[:, :usable].reshape(4, -1, head.block).mean(2)
    np.testing.assert_allclose(head(hidden), expected, rtol=1e-5)


def test_a_per_map_package_is_fitted_on_each_maps_first_line(tiny_gui_model):
    maps, model = tiny_gui_model
    package = load_package(model)
    package.scalers["primary"].mode = "per-map"
    transfer = PackageTransfer(package)
    assert transfer.needs_map_statistics
    trained = transfer.models.secondary_scaler
    first, second = read_line(maps["test"], 0), read_line(maps["test"], 1)
    lines = transfer.line_transfer()
    lines.in_two_steps(first)
    fitted = transfer.models.secondary_scaler
    assert fitted is not trained and fitted.mode == "per-map"
    valid = first.secondary.valid
    np.testing.assert_allclose(
        fitted.mean, correct_baseline(first.secondary.spectra[valid].astype(np.float32)).mean(0),
        rtol=1e-4, atol=1e-3)
    lines(second)  # the same map: its first line's statistics stay
    assert transfer.models.secondary_scaler is fitted
    transfer.line_transfer()(second)  # a new map: fitted on its own first line
    assert transfer.models.secondary_scaler is not fitted


def test_other_confidences_run_whole_in_the_first_step(tiny_gui_model):
    maps, model = tiny_gui_model
    transfer = PackageTransfer(load_package(model), method="prior")
    lines = transfer.line_transfer()
    assert type(lines) is LineTransfer and not lines.folds
    line = read_line(maps["test"], 2)
    first, confidence = lines.in_two_steps(line)
    valid = line.secondary.valid
    assert np.isfinite(first.confidence[valid]).all()
    np.testing.assert_array_equal(confidence(), first.confidence)


def test_load_package_transfer_names_a_missing_package(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match=str(tmp_path / "nothing")):
        load_package_transfer(tmp_path / "nothing")
