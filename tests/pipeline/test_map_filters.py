"""Portable maps: deflate chunks encoded by plumelink decode in any HDF5; plugins are named.

The reading side of every portability test runs in a fresh Python that only has h5py and
numpy, with hdf5plugin made unimportable and HDF5_PLUGIN_PATH pointing at an empty folder:
what a colleague's notebook without plumelink sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from _maps import SPEC, create_map, lines_equal, make_line

from plumelink.pipeline import map_filters
from plumelink.pipeline.map_filters import DEFAULT_COMPRESSION, FILTER_ATTR, spectra_filter
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.raster_line import RasterLine, SystemLine
from plumelink.pipeline.repack import repack

_PLAIN_READER = textwrap.dedent(
    """
    import sys
    sys.modules["hdf5plugin"] = None  # any `import hdf5plugin` now fails
    import h5py, numpy as np
    path, expected = sys.argv[1], np.load(sys.argv[2])
    with h5py.File(path, "r") as f:
        for name in ("primary", "secondary"):
            np.testing.assert_array_equal(f[f"map/{name}/spectra"][()], expected[name])
            print(name, f[f"map/{name}/spectra"].attrs["filter_plugin"])
    print("read without plugins")
    """
)


def _plain_env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "no-plugins"
    empty.mkdir(exist_ok=True)
    return {**os.environ, "HDF5_PLUGIN_PATH": str(empty)}


def read_without_plugins(tmp_path: Path, path: Path, expected: dict[str, np.ndarray]
                         ) -> subprocess.CompletedProcess[str]:
    npz = tmp_path / "expected.npz"
    np.savez(npz, **expected)
    return subprocess.run([sys.executable, "-c", _PLAIN_READER, str(path), str(npz)],
                          capture_output=True, text=True, timeout=60, env=_plain_env(tmp_path))


def smooth_line(iy: int, dtype: str = "uint16") -> RasterLine:
    """make_line(iy) with spectra that look like LIBS (baseline, lines, Poisson noise), so
    that deflate has something to compress."""
    line = make_line(iy, truth=False)
    rng = np.random.default_rng(iy)

    def spectra(n_px: int) -> np.ndarray:
        px = np.arange(n_px)
        shape = 200 + 3000 * np.exp(-0.5 * ((px - n_px / 3) / 1.5) ** 2)
        counts = rng.poisson(shape, size=(SPEC.nx, n_px))
        return counts.astype(np.float32) * 0.5 if dtype == "float32" else counts.astype(dtype)

    return replace(line, primary=replace(line.primary, spectra=spectra(SPEC.n_primary)),
                   secondary=replace(line.secondary, spectra=spectra(SPEC.n_secondary)))


def _column(ix: int, rows: list[RasterLine]) -> RasterLine:
    def system(name: str) -> SystemLine:
        parts = [getattr(r, name) for r in rows]
        return SystemLine(spectra=np.stack([p.spectra[ix] for p in parts]),
                          valid=np.array([p.valid[ix] for p in parts]),
                          frame_id=np.array([p.frame_id[ix] for p in parts]),
                          timestamp_s=np.array([p.timestamp_s[ix] for p in parts]))

    def spot(name: str) -> np.ndarray:
        return np.array([getattr(r, name)[ix] for r in rows])

    return RasterLine(index=ix, x_um=spot("x_um"), y_um=spot("y_um"),
                      x_measured_um=spot("x_measured_um"), y_measured_um=spot("y_measured_um"),
                      shot_id=spot("shot_id"), primary=system("primary"),
                      secondary=system("secondary"))


def write_map(path: Path, rows: list[int], *, dtype: str = "uint16", vertical: bool = False,
              **overrides: Any) -> dict[str, np.ndarray]:
    """Write rows (or, vertical, every column of those rows' map) and return the spectra
    a reader must see, unwritten spots as the fill value 0."""
    lines = {iy: smooth_line(iy, dtype) for iy in range(SPEC.ny)}
    expected = {
        name: np.zeros((SPEC.ny, SPEC.nx, n_px), dtype=dtype)
        for name, n_px in (("primary", SPEC.n_primary), ("secondary", SPEC.n_secondary))
    }
    with create_map(path, truth_elements=None, mineral_names=None, spectra_dtype=dtype,
                    raster_order="snake-vertical" if vertical else "snake-horizontal",
                    **overrides) as writer:
        if vertical:
            for ix in rows:
                writer.append_column(_column(ix, [lines[iy] for iy in range(SPEC.ny)]))
                for name in expected:
                    expected[name][:, ix] = [getattr(lines[iy], name).spectra[ix]
                                             for iy in range(SPEC.ny)]
        else:
            for iy in rows:
                writer.append_line(lines[iy])
                for name in expected:
                    expected[name][iy] = getattr(lines[iy], name).spectra
    return expected


def test_default_is_deflate_with_shuffle(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    write_map(path, [0])
    with h5py.File(path, "r") as f:
        spectra = f["map/primary/spectra"]
        assert map_filters.filter_ids(spectra) == [h5py.h5z.FILTER_SHUFFLE,
                                                   h5py.h5z.FILTER_DEFLATE]
        assert spectra.attrs[FILTER_ATTR] == "none"
        assert "deflate" in spectra.attrs["compression"]
    assert DEFAULT_COMPRESSION == "gzip"


@pytest.mark.parametrize(
    ("dtype", "vertical", "rows"),
    [("uint16", False, [0, 2, 3]), ("float32", False, [1]), ("uint16", True, [0, 5, 7])],
    ids=["uint16-rows", "float32-rows", "uint16-columns"],
)
def test_default_map_reads_in_plain_h5py_without_plugins(
    tmp_path: Path, dtype: str, vertical: bool, rows: list[int]
) -> None:
    path = tmp_path / "map.h5"
    expected = write_map(path, rows, dtype=dtype, vertical=vertical)
    done = read_without_plugins(tmp_path, path, expected)
    assert done.returncode == 0, done.stderr
    assert "read without plugins" in done.stdout


def test_stdlib_zlib_encoder_writes_the_same_format(tmp_path: Path, monkeypatch) -> None:
    """Without ISA-L the writer falls back to zlib; both give streams HDF5 decodes."""
    monkeypatch.setattr(map_filters, "_zlib", zlib)
    path = tmp_path / "map.h5"
    expected = write_map(path, [0, 4])
    done = read_without_plugins(tmp_path, path, expected)
    assert done.returncode == 0, done.stderr


def test_direct_chunks_decode_like_hdf5s_own_filters(tmp_path: Path) -> None:
    """Our encoder and HDF5's shuffle + deflate store the same data; the chunk holds a
    shuffled (byte-transposed) block, as HDF5's shuffle filter defines it."""
    block = smooth_line(0).primary.spectra[None]
    encoded = spectra_filter("gzip").encode(block)
    raw = block.view(np.uint8).reshape(-1, 2)
    assert zlib.decompress(encoded) == np.concatenate([raw[:, 0], raw[:, 1]]).tobytes()
    with h5py.File(tmp_path / "two.h5", "w") as f:
        ours = f.create_dataset("ours", shape=block.shape, dtype=block.dtype,
                                chunks=block.shape, **spectra_filter("gzip").create_kwargs)
        ours.id.write_direct_chunk((0, 0, 0), encoded)
        theirs = f.create_dataset("theirs", data=block, chunks=block.shape,
                                  **spectra_filter("gzip").create_kwargs)
        np.testing.assert_array_equal(ours[()], theirs[()])
        assert ours.id.get_storage_size() < block.nbytes  # compressed, not stored raw


def test_lz4_map_says_which_plugin_readers_need(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    write_map(path, [0], compression="lz4")
    with h5py.File(path, "r") as f:
        for name in ("primary", "secondary"):
            assert "hdf5plugin" in f[f"map/{name}/spectra"].attrs[FILTER_ATTR]
    with MapReader(path) as reader:  # plumelink itself registers the plugin when needed
        assert lines_equal(reader.read_line(0), smooth_line(0))


_READER_WITHOUT_PLUGIN = textwrap.dedent(
    """
    import sys
    sys.modules["hdf5plugin"] = None
    from plumelink.pipeline.map_reader import MapReader
    from plumelink.pipeline.map_layout import MissingFilterError
    with MapReader(sys.argv[1]) as reader:
        print("emissivity readable:", bool(reader.emissivity("primary").size))
        try:
            reader.read_line(0)
        except MissingFilterError as exc:
            print("ERROR", exc)
    """
)


def test_missing_plugin_is_named_when_spectra_are_read(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    write_map(path, [0], compression="lz4")
    done = subprocess.run([sys.executable, "-c", _READER_WITHOUT_PLUGIN, str(path)],
                          capture_output=True, text=True, timeout=60, env=_plain_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "emissivity readable: True" in done.stdout
    error = done.stdout.split("ERROR", 1)[1]
    assert "Blosc (HDF5 filter 32001)" in error and "hdf5plugin" in error
    assert "plumelink repack" in error and str(path) in error


@pytest.mark.parametrize("vertical", [False, True], ids=["rows", "columns"])
def test_repack_lz4_to_default_and_back(tmp_path: Path, vertical: bool) -> None:
    lz4 = tmp_path / "lz4.h5"
    rows = [0, 3] if not vertical else [1, 2]
    expected = write_map(lz4, rows, compression="lz4", vertical=vertical)
    portable = repack(lz4, tmp_path / "portable.h5")
    done = read_without_plugins(tmp_path, portable, expected)
    assert done.returncode == 0, done.stderr
    again = repack(portable, tmp_path / "again.h5", "lz4")
    with MapReader(lz4) as a, MapReader(portable) as b, MapReader(again) as c:
        assert a.lines_done.tolist() == b.lines_done.tolist() == c.lines_done.tolist()
        assert a.settings == b.settings == c.settings and a.metadata == c.metadata
        for iy in range(SPEC.ny):
            assert lines_equal(a.read_line(iy), b.read_line(iy))
            assert lines_equal(a.read_line(iy), c.read_line(iy))
    with h5py.File(portable, "r") as f, h5py.File(again, "r") as g:
        assert map_filters.filter_ids(f["map/primary/spectra"]) == [2, 1]
        assert map_filters.filter_ids(g["map/primary/spectra"]) == [32001]
        # unwritten lines stay unwritten: one chunk per written line (or spot)
        chunks = len(rows) * (SPEC.ny if vertical else 1)
        assert f["map/primary/spectra"].id.get_num_chunks() == chunks
        # the emissivity NXdata keeps its axes as links to the raster's, not copies
        assert f["map/emissivity/x"].id == f["map/raster/x"].id


def test_repack_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    write_map(path, [0])
    with pytest.raises(ValueError, match="is the source"):
        repack(path, path)
    repack(path, tmp_path / "out.h5")
    with pytest.raises(FileExistsError, match="already exists"):
        repack(path, tmp_path / "out.h5")
    with pytest.raises(ValueError, match="unknown compression"):
        repack(path, tmp_path / "x.h5", "brotli")
    with pytest.raises(FileNotFoundError):
        repack(tmp_path / "absent.h5", tmp_path / "y.h5")
    assert not list(tmp_path.glob(".*.repack"))


def test_resumed_lz4_map_keeps_its_filter(tmp_path: Path) -> None:
    from plumelink.pipeline.map_writer import MapWriter

    path = tmp_path / "map.h5"
    with create_map(path, truth_elements=None, mineral_names=None,
                    compression="lz4") as writer:
        writer.append_line(smooth_line(0))
        writer.close("interrupted", "stopped")
    with MapWriter.resume(path) as writer:
        writer.append_line(smooth_line(1))
    with h5py.File(path, "r") as f:
        assert map_filters.filter_ids(f["map/primary/spectra"]) == [32001]
    with MapReader(path) as reader:
        assert lines_equal(reader.read_line(1), smooth_line(1))



@pytest.mark.parametrize(("compression", "dtype"),
                         [("gzip", "uint16"), ("gzip", "float32"), (None, "uint16")])
def test_line_chunk_decoder_gives_what_hdf5_reads(tmp_path: Path, compression: str | None,
                                                  dtype: str) -> None:
    path = tmp_path / "m.h5"
    with create_map(path, compression=compression, spectra_dtype=dtype) as w:
        for iy in range(2):
            line = make_line(iy)
            if dtype == "float32":
                line = replace(line, secondary=replace(
                    line.secondary, spectra=line.secondary.spectra.astype(np.float32) / 7))
                line = replace(line, primary=replace(
                    line.primary, spectra=line.primary.spectra.astype(np.float32)))
            w.append_line(line)
    with h5py.File(path, "r") as f:
        d = f["map/secondary/spectra"]
        decode = map_filters.line_chunk_decoder(d)
        assert decode is not None
        for iy in range(2):
            got = decode(d.id.read_direct_chunk((iy, 0, 0))[1])
            assert got.dtype == d.dtype
            np.testing.assert_array_equal(got, d[iy])
            into = np.zeros(d.shape[1:], d.dtype)
            assert decode(d.id.read_direct_chunk((iy, 0, 0))[1], into) is into
            np.testing.assert_array_equal(into, d[iy])
        with pytest.raises(ValueError, match="decodes to"):
            decode(zlib.compress(b"\0" * 10) if compression else b"\0" * 10)


def test_line_chunk_decoder_declines_other_layouts_and_filters(tmp_path: Path) -> None:
    vertical = tmp_path / "v.h5"
    create_map(vertical, raster_order="snake-vertical").close()
    with h5py.File(vertical, "r") as f:  # one spot per chunk
        assert map_filters.line_chunk_decoder(f["map/secondary/spectra"]) is None
    pytest.importorskip("hdf5plugin")
    plain, lz4 = tmp_path / "p.h5", tmp_path / "lz4.h5"
    with create_map(plain) as w:
        w.append_line(make_line(0))
    repack(plain, lz4, "lz4")
    with h5py.File(lz4, "r") as f:
        assert map_filters.line_chunk_decoder(f["map/secondary/spectra"]) is None


def test_line_chunk_decoder_refuses_a_damaged_stream(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    with create_map(path) as w:
        w.append_line(make_line(0))
    with h5py.File(path, "r") as f:
        d = f["map/secondary/spectra"]
        stored = bytearray(d.id.read_direct_chunk((0, 0, 0))[1])
        stored[len(stored) // 2 : len(stored) // 2 + 16] = b"\xff" * 16
        with pytest.raises(ValueError, match="cannot be inflated"):
            map_filters.line_chunk_decoder(d)(bytes(stored))


def test_line_chunk_decoder_gives_the_same_lines_without_libdeflate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libdeflate (the deflate package) inflates when installed, ISA-L otherwise: the same
    lines, and the same refusals of a damaged or foreign stream."""
    pytest.importorskip("deflate")
    path = tmp_path / "m.h5"
    with create_map(path) as w:
        w.append_line(make_line(0))
    with h5py.File(path, "r") as f:
        d = f["map/secondary/spectra"]
        stored = d.id.read_direct_chunk((0, 0, 0))[1]
        damaged = bytearray(stored)
        damaged[len(damaged) // 2 : len(damaged) // 2 + 16] = b"\xff" * 16
        fast = map_filters.line_chunk_decoder(d)(stored)
        monkeypatch.setattr(map_filters, "_inflate_exact", None)
        np.testing.assert_array_equal(map_filters.line_chunk_decoder(d)(stored), fast)
        np.testing.assert_array_equal(fast, d[0])
        with pytest.raises(ValueError, match="cannot be inflated"):
            map_filters.line_chunk_decoder(d)(bytes(damaged))
