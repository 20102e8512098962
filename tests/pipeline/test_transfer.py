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


def test_stored_spectra_are_the_computed_float32_exactly(holey_map, package, tmp_path):
    """The storage choice (float32, no filter) loses nothing of what the transfer computed:
    the stored spectra are the networks' own output, bit for bit. (Recomputed in one block,
    they may differ in the last bits: a matrix product's rounding depends on how many rows
    it gets on some CPUs.)"""
    computed = []

    class Recording(PackageTransfer):
        def finish(self, prepared, out=None):
            primary, confidence = super().finish(prepared, out)
            computed.append(primary.copy())
            return primary, confidence

    out = transfer_map(holey_map, tmp_path / "out.h5", Recording(package))
    with MapReader(out) as r:
        got = np.concatenate([b for b, _ in r.iter_blocks("primary")])
    assert len(computed) > 1  # several groups, each its own product
    np.testing.assert_array_equal(got, np.concatenate(computed))


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


def _as_vertical(src: Path, out: Path, n_columns: int) -> Path:
    """The map at src rewritten as a vertical raster (column by column), its first
    n_columns columns done."""
    from plumelink.pipeline.map_writer import MapWriter
    from plumelink.pipeline.raster_line import LineTruth, RasterLine, SystemLine

    with MapReader(src) as r:
        rows = [r.read_line(iy) for iy in range(r.shape[0])]
        meta = r.metadata
        writer = MapWriter.create(
            out, ny=r.shape[0], nx=r.shape[1], primary_wavelength_nm=r.primary_wavelength_nm,
            secondary_wavelength_nm=r.secondary_wavelength_nm, x_um=r.x_um, y_um=r.y_um,
            raster_order="snake-vertical", settings=r.settings, sample=meta["sample"],
            truth_elements=r.truth_elements, mineral_names=r.mineral_names)
    with writer:
        for ix in range(n_columns):
            def column(system: str, ix: int = ix) -> SystemLine:
                lines = [getattr(row, system) for row in rows]
                return SystemLine(
                    spectra=np.stack([s.spectra[ix] for s in lines]),
                    valid=np.array([s.valid[ix] for s in lines]),
                    frame_id=np.array([s.frame_id[ix] for s in lines]),
                    timestamp_s=np.array([s.timestamp_s[ix] for s in lines]))
            writer.append_column(RasterLine(
                index=ix, x_um=np.full(len(rows), rows[0].x_um[ix]),
                y_um=np.array([row.y_um[ix] for row in rows]),
                x_measured_um=np.array([row.x_measured_um[ix] for row in rows]),
                y_measured_um=np.array([row.y_measured_um[ix] for row in rows]),
                shot_id=np.array([row.shot_id[ix] for row in rows]),
                primary=column("primary"), secondary=column("secondary"),
                truth=LineTruth(mineral=np.array([row.truth.mineral[ix] for row in rows]),
                                composition=np.stack([row.truth.composition[ix]
                                                      for row in rows]))))
        if n_columns < len(rows[0].x_um):
            writer.close("interrupted", "stopped")
    return out


@pytest.mark.parametrize("n_columns", [16, 5])
def test_a_vertical_raster_transfers_like_the_same_map_in_rows(package, holey_map, transferred,
                                                               tmp_path, n_columns):
    """A vertical raster's lines are columns (its rows are flagged only when every column is
    in); the transfer writes rows, keeps the raster order on record, and transfers the spots
    of the columns done: the same spectra as the map acquired in rows."""
    vertical = _as_vertical(holey_map, tmp_path / "vertical.h5", n_columns)
    out = transfer_map(vertical, tmp_path / "out.h5", PackageTransfer(package))
    with MapReader(out) as r, MapReader(transferred[0]) as rows:
        assert r.metadata["raster_order"] == "snake-vertical"
        assert r.columns_done is None and r.lines_done.all()
        assert r.status == ("complete" if n_columns == 16 else "interrupted")
        if n_columns < 16:
            assert f"{n_columns} of 16 columns done" in r.status_reason
        for iy in range(8):
            got, expected = r.read_line(iy), rows.read_line(iy)
            done = np.arange(16) < n_columns
            np.testing.assert_array_equal(got.primary.valid, expected.primary.valid & done)
            np.testing.assert_allclose(got.primary.spectra[done], expected.primary.spectra[done],
                                       rtol=1e-5, atol=1e-3)
            assert not got.primary.spectra[~done].any()
