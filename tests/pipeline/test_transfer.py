"""Transfer of a whole map through a model package, streamed block by block."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from plumelink.models.evaluate import PackageTransfer, TransferModels, package_identity
from plumelink.models.package import PackageMismatchError, load_package
from plumelink.pipeline.map_layout import CorruptMapError, ForeignFileError
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.preprocess import correct_baseline
from plumelink.pipeline.transfer import (
    PREPARE_THREADS,
    SETTINGS_KEY,
    read_confidence,
    transfer_map,
)

INVALID_SECONDARY = [(0, 3), (2, 0), (2, 15), (7, 8)]
INVALID_PRIMARY_ONLY = (4, 4)


@pytest.fixture(scope="module")
def holey_map(tiny_model, tmp_path_factory) -> Path:
    """The test map with some secondary shots missed (and one primary-only miss)."""
    path = tmp_path_factory.mktemp("holey") / "holey.h5"
    shutil.copy(tiny_model[0]["test"], path)
    with h5py.File(path, "r+") as f:
        valid = f["map/secondary/valid"][()]
        for iy, ix in INVALID_SECONDARY:
            valid[iy, ix] = False
        f["map/secondary/valid"][...] = valid
        f["map/primary/valid"][INVALID_PRIMARY_ONLY] = False
    return path


@pytest.fixture(scope="module")
def package(tiny_model):
    return load_package(tiny_model[1])


@pytest.fixture(scope="module")
def transferred(package, holey_map, tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    out = tmp_path_factory.mktemp("out") / "transferred.h5"
    calls: list[tuple[int, int]] = []
    transfer_map(holey_map, out, PackageTransfer(package),
                 progress=lambda d, t: calls.append((d, t)))
    return out, calls


def test_output_is_a_map_with_the_right_shape_axes_and_validity(transferred, holey_map, package):
    out, calls = transferred
    with MapReader(out) as r, MapReader(holey_map) as src:
        assert r.shape == src.shape == (8, 16)
        assert r.status == "complete"
        np.testing.assert_allclose(r.primary_wavelength_nm, package.primary_wavelength_nm)
        np.testing.assert_array_equal(r.secondary_wavelength_nm, src.secondary_wavelength_nm)
        np.testing.assert_array_equal(r.x_um, src.x_um)
        for iy in range(8):
            line, orig = r.read_line(iy), src.read_line(iy)
            np.testing.assert_array_equal(line.primary.valid, orig.secondary.valid)
            np.testing.assert_array_equal(line.secondary.valid, orig.secondary.valid)
            np.testing.assert_array_equal(line.secondary.spectra,
                                          orig.secondary.spectra.astype(np.float32))
            assert line.primary.spectra.dtype == np.float32
            assert not line.primary.spectra[~line.primary.valid].any()
            np.testing.assert_array_equal(line.truth.mineral, orig.truth.mineral)
        for iy, ix in INVALID_SECONDARY:
            assert not r.read_line(iy).primary.valid[ix]
        assert r.read_line(INVALID_PRIMARY_ONLY[0]).primary.valid[INVALID_PRIMARY_ONLY[1]]
        assert r.settings[SETTINGS_KEY]["manifest_sha256"] == \
            package_identity(package)["manifest_sha256"]
        assert "laser" in r.settings  # the input's instrument settings are kept
        emissivity = r.emissivity("primary")
        assert np.isnan(emissivity[0, 3]) and np.isfinite(emissivity[0, 4])
    assert calls[-1] == (128, 128)


def test_transferred_spectra_are_the_models_prediction(transferred, holey_map, package):
    out, _ = transferred
    with MapReader(out) as r, MapReader(holey_map) as src:
        got, index = next(r.iter_blocks("primary"))
        sec, sec_index = next(src.iter_blocks("secondary"))
    np.testing.assert_array_equal(index, sec_index)
    assert got.shape == (128 - len(INVALID_SECONDARY), 4062)
    used = PackageTransfer(package).model_name  # the package's recommended model
    with MapReader(out) as r:
        assert r.settings[SETTINGS_KEY]["model"] == used
    expected = TransferModels.from_package(package).predict(used, correct_baseline(sec))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


def test_confidence_is_stored_and_nan_where_nothing_was_transferred(transferred):
    out, _ = transferred
    conf = read_confidence(out)
    assert conf.shape == (8, 16)
    for iy, ix in INVALID_SECONDARY:
        assert np.isnan(conf[iy, ix])
    ok = np.isfinite(conf)
    assert ok.sum() == 128 - len(INVALID_SECONDARY)
    assert ((conf[ok] > 0) & (conf[ok] <= 1)).all()
    with h5py.File(out, "r") as f:
        assert f["map/transfer/confidence"].attrs["method"] == "consistency"
        assert "higher = more trustworthy" in f["map/transfer/confidence"].attrs["definition"]


def test_blocks_smaller_than_a_line_give_the_same_map(transferred, package, holey_map, tmp_path):
    out, _ = transferred
    small = tmp_path / "small_blocks.h5"
    calls: list[tuple[int, int]] = []
    transfer_map(holey_map, small, PackageTransfer(package), block_spots=5,
                 progress=lambda d, t: calls.append((d, t)))
    # start, then one group per read: the fewest lines that give every prepare thread one
    per_group = 16 * PREPARE_THREADS
    assert calls == [(0, 128)] + [(min(d, 128), 128) for d in range(per_group, 128 + per_group,
                                                                   per_group)]
    with MapReader(out) as a, MapReader(small) as b:
        pa, _ = next(a.iter_blocks("primary"))
        pb, _ = next(b.iter_blocks("primary"))
    np.testing.assert_allclose(pb, pa, rtol=1e-4, atol=1e-3 * np.abs(pa).max())
    np.testing.assert_allclose(read_confidence(small), read_confidence(out), rtol=1e-4,
                               equal_nan=True)


def test_axis_mismatch_names_the_system_and_the_axis(package, tiny_model, tmp_path):
    bad = tmp_path / "other_axis.h5"
    shutil.copy(tiny_model[0]["test"], bad)
    with h5py.File(bad, "r+") as f:
        f["map/secondary/wavelength"][...] += 0.3
    with pytest.raises(PackageMismatchError, match=r"secondary \(secondary\) axis differs"):
        transfer_map(bad, tmp_path / "out.h5", PackageTransfer(package))
    assert not (tmp_path / "out.h5").exists()


def test_missing_and_foreign_inputs_are_clear_errors(package, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        transfer_map(tmp_path / "nope.h5", tmp_path / "out.h5", PackageTransfer(package))
    text = tmp_path / "notes.h5"
    text.write_text("not a map")
    with pytest.raises(CorruptMapError, match="not an HDF5 file"):
        transfer_map(text, tmp_path / "out.h5", PackageTransfer(package))
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(ForeignFileError, match="not a plumelink map"):
        transfer_map(foreign, tmp_path / "out.h5", PackageTransfer(package))


def test_existing_output_is_refused_unless_overwrite(transferred, package, holey_map):
    out, _ = transferred
    with pytest.raises(FileExistsError):
        transfer_map(holey_map, out, PackageTransfer(package))
    with pytest.raises(ValueError, match="is the input map"):
        transfer_map(holey_map, holey_map, PackageTransfer(package), overwrite=True)


def test_stored_spectra_are_the_computed_float32_exactly(transferred, holey_map, package):
    """The storage choice (float32, no filter) loses nothing of what the transfer computed."""
    out, _ = transferred
    with MapReader(out) as r, MapReader(holey_map) as src:
        got, _ = next(r.iter_blocks("primary"))
        sec, _ = next(src.iter_blocks("secondary"))
    computed, _ = PackageTransfer(package)(sec)
    np.testing.assert_array_equal(got, computed)


def test_secondary_is_the_input_as_stored(transferred, holey_map):
    """The input's secondary chunks are copied as they are: same dtype, filter and values."""
    out, _ = transferred
    with h5py.File(out, "r") as f, h5py.File(holey_map, "r") as g:
        got, want = f["map/secondary/spectra"], g["map/secondary/spectra"]
        assert got.dtype == want.dtype and got.compression == want.compression
        assert got.shuffle == want.shuffle
        np.testing.assert_array_equal(got[()], want[()])
        assert got.id.read_direct_chunk((3, 0, 0)) == want.id.read_direct_chunk((3, 0, 0))


def test_plain_h5py_without_hdf5plugin_reads_the_transferred_map(transferred):
    """A colleague's notebook: h5py alone, no plugin imported, in a fresh interpreter."""
    out, _ = transferred
    script = (
        "import sys, h5py, numpy as np\n"
        "f = h5py.File(sys.argv[1], 'r')\n"
        "for name in ('map/primary/spectra', 'map/secondary/spectra', "
        "'map/transfer/confidence'):\n"
        "    d = f[name]\n"
        "    plist = d.id.get_create_plist()\n"
        "    ids = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}\n"
        "    assert ids <= ({1, 2} if 'secondary' in name else set()), (name, ids)\n"
        "    np.save(sys.stdout.buffer, d[()]) if name.endswith('primary/spectra') else d[()]\n"
        "assert 'hdf5plugin' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          check=False, env={**os.environ, "HDF5_PLUGIN_PATH": "/nonexistent"})
    assert done.returncode == 0, done.stderr.decode()
    plain = np.load(io.BytesIO(done.stdout))
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(plain, f["map/primary/spectra"][()])


def test_a_damaged_secondary_chunk_is_named_and_stops_the_transfer(package, holey_map,
                                                                   tmp_path):
    damaged = tmp_path / "damaged.h5"
    shutil.copy(holey_map, damaged)
    with h5py.File(damaged, "r") as f:
        info = f["map/secondary/spectra"].id.get_chunk_info_by_coord((5, 0, 0))
    with open(damaged, "r+b") as raw:  # garble the middle of line 5's deflate stream
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(b"\xff" * 64)
    with pytest.raises(CorruptMapError, match=r"damaged\.h5.*line 5"):
        transfer_map(damaged, tmp_path / "out.h5", PackageTransfer(package))
    with h5py.File(damaged, "r") as f:  # the input is left as it was
        assert f["map/secondary/spectra"].id.get_chunk_info_by_coord((5, 0, 0)).size == info.size


def test_an_input_hdf5_must_decode_itself_gives_the_same_transfer(package, holey_map,
                                                                  transferred, tmp_path):
    """Secondary spectra stored with a plugin filter (blosc-lz4) are read by HDF5 and the
    output keeps float32 copies of them: same primary spectra, same secondary values."""
    pytest.importorskip("hdf5plugin")
    from plumelink.pipeline.repack import repack

    lz4 = repack(holey_map, tmp_path / "lz4.h5", "lz4")
    out = transfer_map(lz4, tmp_path / "out.h5", PackageTransfer(package))
    with h5py.File(out, "r") as f, h5py.File(transferred[0], "r") as g, \
            h5py.File(holey_map, "r") as src:
        assert f["map/secondary/spectra"].dtype == np.float32
        np.testing.assert_array_equal(f["map/secondary/spectra"][()],
                                      src["map/secondary/spectra"][()].astype(np.float32))
        np.testing.assert_array_equal(f["map/primary/spectra"][()], g["map/primary/spectra"][()])
