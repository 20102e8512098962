"""`plumelink transfer` options of the whole-map transfer: --precision and the storage."""

from __future__ import annotations

import argparse

import h5py
import pytest

from plumelink.app import transfer_command
from plumelink.models import confidence as C
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.transfer import SETTINGS_KEY


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plumelink")
    transfer_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _base(tiny_model, out) -> list[str]:
    maps, model = tiny_model
    return ["transfer", "--model", str(model), "--input", str(maps["test"]), "--out", str(out),
            "-q"]


def test_default_output_is_fp32_uncompressed(tiny_model, tmp_path):
    out = tmp_path / "t.h5"
    assert _run(_base(tiny_model, out)) == 0
    with h5py.File(out, "r") as f:
        spectra = f["map/primary/spectra"]
        assert spectra.dtype == "float32" and spectra.compression is None
    with MapReader(out) as reader:
        assert reader.settings[SETTINGS_KEY]["precision"] == "fp32"


@pytest.mark.skipif(not C.bf16_supported(), reason="CPU without bf16 instructions")
def test_precision_bf16_is_recorded(tiny_model, tmp_path):
    out = tmp_path / "bf16.h5"
    assert _run([*_base(tiny_model, out), "--precision", "bf16"]) == 0
    with MapReader(out) as reader:
        assert reader.settings[SETTINGS_KEY]["precision"] == "bf16"


def test_confidence_precision_is_chosen_and_recorded(tiny_model, tmp_path):
    out = tmp_path / "c32.h5"
    assert _run([*_base(tiny_model, out), "--confidence-precision", "fp32"]) == 0
    with MapReader(out) as reader:
        assert reader.settings[SETTINGS_KEY]["confidence_precision"] == "fp32"
    auto = tmp_path / "auto.h5"
    assert _run(_base(tiny_model, auto)) == 0
    with MapReader(auto) as reader:
        recorded = reader.settings[SETTINGS_KEY]["confidence_precision"]
    assert recorded == ("bf16" if C.bf16_supported() else "fp32")


def test_precision_bf16_without_cpu_support_says_so(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="bf16 needs a CPU with bfloat16 instructions"):
        _run([*_base(tiny_model, tmp_path / "x.h5"), "--precision", "bf16"])
    assert not (tmp_path / "x.h5").exists()


def test_transferred_map_carries_calibrated_interval_radii(tiny_model, tmp_path, capsys):
    import numpy as np

    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package

    maps, model = tiny_model
    out = tmp_path / "t.h5"
    assert _run(_base(tiny_model, out)) == 0
    assert "90% prediction intervals calibrated on" in capsys.readouterr().out
    expected = PackageTransfer(load_package(model)).calibrate(maps["val"])
    with h5py.File(out, "r") as f:
        confidence = f["map/transfer/confidence"][()]
        radius = f["map/transfer/interval_radius"]
        assert radius.attrs["level"] == 0.9 and str(maps["val"]) in radius.attrs[
            "calibration_map"]
        np.testing.assert_allclose(radius[()], expected.radius_for(confidence), rtol=1e-5)
        bands = f["map/transfer/band_interval_radius"]
        assert bands.shape == (*confidence.shape, 81)
        np.testing.assert_allclose(bands[()], expected.band_radius_for(confidence), rtol=1e-5)
        lo, hi = bands.attrs["band_lo_nm"], bands.attrs["band_hi_nm"]
        assert lo.shape == hi.shape == (81,) and (lo < hi).all() and (hi[:-1] < lo[1:]).all()
        # a plain reader's question: how far off can this spot's Ca II 393 nm band be?
        k = int(np.searchsorted(hi, 393.37))
        assert lo[k] <= 393.37 <= hi[k] and np.isfinite(bands[0, 0, k])


def test_a_missing_calibration_map_is_refused_or_said(tiny_model, tmp_path, capsys):
    import shutil

    from plumelink.app.cli import main

    maps, model = tiny_model
    # given explicitly and missing: an error naming it, no output
    out = tmp_path / "t.h5"
    assert main([*_base(tiny_model, out)[0:], "--calibration", str(tmp_path / "none.h5")]) == 2
    assert "none.h5" in capsys.readouterr().err and not out.exists()
    # the package's recorded validation map gone: the map is written, the note says why
    moved = tmp_path / "model"
    shutil.copytree(model, moved)
    manifest = moved / "manifest.json"
    text = manifest.read_text(encoding="utf-8").replace(str(maps["val"]),
                                                        str(tmp_path / "gone.h5"))
    manifest.write_text(text, encoding="utf-8")
    assert main(["transfer", "--model", str(moved), "--input", str(maps["test"]), "--out",
                 str(out), "-q"]) == 0
    assert "no prediction intervals" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert "interval_radius" not in f["map/transfer"]


def test_intervals_calibrated_on_a_few_spots_of_the_day(tiny_model, tmp_path, capsys):
    """--calibration-spots N: N spots spread over the calibration map (pairs of the day)."""
    import numpy as np

    from plumelink.models.adapt import select_pairs
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.intervals import calibrate
    from plumelink.models.package import load_package

    maps, model = tiny_model
    out = tmp_path / "t.h5"
    day = maps["test"]  # the map itself stands for pairs measured on its day
    assert _run([*_base(tiny_model, out), "--calibration", str(day),
                 "--calibration-spots", "20"]) == 0
    assert "(20 spots;" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert f["map/transfer/interval_radius"].attrs["n_calibration"] == 20
    # the same as calibrating by hand on the spread subset
    transfer = PackageTransfer(load_package(model))
    few = transfer.calibrate(day, spots=20)
    everything = transfer.calibrate(day)
    assert everything.n_calibration == 128 and few.n_calibration == 20
    from plumelink.models import confidence as C
    from plumelink.models.evaluate import TransferModels
    from plumelink.models.metrics import euclidean_distances
    from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs
    pairs = preprocess_pairs(load_pairs(day))
    models = TransferModels.from_package(load_package(model))
    _, extra = models.transfer(pairs.secondary)
    pred = models.predict(transfer.model_name, pairs.secondary)
    keep = select_pairs(pairs.index, (8, 16), 20, "spread", 0)
    by_hand = calibrate(euclidean_distances(pairs.primary, pred)[keep],
                        C.confidence_from_distance(extra.distances["consistency"])[keep])
    np.testing.assert_allclose(few.radius, by_hand.radius, rtol=1e-5)
    with pytest.raises(ValueError, match="only 128 spots"):
        transfer.calibrate(day, spots=500)


def test_calibration_spots_need_a_calibration_map(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="needs --calibration"):
        _run([*_base(tiny_model, tmp_path / "t.h5"), "--calibration-spots", "20"])
