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


def test_precision_bf16_without_cpu_support_says_so(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="bf16 needs a CPU with bfloat16 instructions"):
        _run([*_base(tiny_model, tmp_path / "x.h5"), "--precision", "bf16"])
    assert not (tmp_path / "x.h5").exists()
