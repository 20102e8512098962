"""The compression filters of a map's spectra, and what a reader needs to decode them.

The default, deflate with byte shuffle, is built into every HDF5 (h5py, HDFView, MATLAB,
silx, HyperSpy, the C library), so a default map opens anywhere with no plugin. HDF5's own
deflate runs on the writing thread and caps a writer at a few thousand pairs/s; plumelink
therefore shuffles and deflates each chunk itself, on worker threads, and hands the finished
bytes to HDF5 with a direct chunk write. The bytes are exactly what HDF5's shuffle + deflate
filters decode: shuffle is the byte transpose of the chunk (byte j of element i goes to
j * n + i), deflate a zlib stream (ISA-L's implementation when installed: same format, about
ten times faster than zlib at level 1).

blosc-lz4 (and zstd) stay opt-in for kHz benches; they need the hdf5plugin package (or the
filter's plugin library on HDF5_PLUGIN_PATH) in every program that reads the spectra, and
the spectra dataset says so in its ``filter_plugin`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

try:  # ISA-L writes the same zlib streams as zlib, several times faster
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same format
    import zlib as _zlib
try:  # libdeflate inflates a whole chunk of known size 2.4x faster than ISA-L (8.1 against
    # 19.3 us per 3,872-pixel uint16 spectrum of a default map), releasing the GIL
    from deflate import DeflateError as _DeflateError
    from deflate import zlib_decompress as _inflate_exact
except ImportError:  # pragma: no cover - deflate is a dependency; ISA-L does the same
    _inflate_exact = None

COMPRESSIONS = ("gzip", "lz4", "zstd", None)
DEFAULT_COMPRESSION = "gzip"
"""The one default of every map writer (acquire, simulate, import, transfer, repack)."""

DEFLATE_LEVEL = 1
"""Level 1: within 2 % of level 4's size on LIBS spectra, and the fastest."""

FILTER_ATTR = "filter_plugin"
"""Attribute of each spectra dataset: the plugin a reader needs, or "none"."""
COMPRESSION_ATTR = "compression"
NO_PLUGIN = "none"

_HDF5PLUGIN = "the Python package hdf5plugin (`import hdf5plugin` before reading)"
# HDF5 filter id -> (name, what provides it outside plumelink)
KNOWN_PLUGINS = {
    32001: ("Blosc", f"{_HDF5PLUGIN}, or the Blosc HDF5 filter (id 32001) on HDF5_PLUGIN_PATH"),
    32004: ("LZ4", f"{_HDF5PLUGIN}, or the LZ4 HDF5 filter (id 32004) on HDF5_PLUGIN_PATH"),
    32008: ("Bitshuffle", f"{_HDF5PLUGIN}, or the Bitshuffle filter (id 32008)"),
    32015: ("Zstandard", f"{_HDF5PLUGIN}, or the Zstandard filter (id 32015) on HDF5_PLUGIN_PATH"),
}


@dataclass(frozen=True)
class SpectraFilter:
    """How one map stores its spectra: h5py's creation keywords, and who encodes the chunks."""

    name: str | None
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    direct: bool = False
    """True: plumelink encodes each chunk (`encode`) and writes it with write_direct_chunk."""
    description: str = "uncompressed"
    plugin: str = NO_PLUGIN

    def encode(self, block: np.ndarray) -> bytes:
        """One whole chunk, as stored: shuffled and deflated, or raw for no filter."""
        data = np.ascontiguousarray(block)
        if self.name is None:
            return data.tobytes()
        shuffled = data.reshape(-1).view(np.uint8).reshape(-1, data.itemsize).T.tobytes()
        return _zlib.compress(shuffled, DEFLATE_LEVEL)

    def attrs(self) -> dict[str, str]:
        """What the spectra dataset says about its filter (written once, at creation)."""
        return {COMPRESSION_ATTR: self.description, FILTER_ATTR: self.plugin}


def spectra_filter(name: str | None) -> SpectraFilter:
    """The filter of a --compression name (see COMPRESSIONS; None: no compression)."""
    if name is None:
        return SpectraFilter(None, direct=True)
    if name == "gzip":
        return SpectraFilter(
            "gzip",
            {"compression": "gzip", "compression_opts": DEFLATE_LEVEL, "shuffle": True},
            direct=True,
            description=f"deflate level {DEFLATE_LEVEL} with byte shuffle (HDF5 built-in "
            "filters 2 and 1: every HDF5 reads it)",
        )
    if name in ("lz4", "zstd"):
        import hdf5plugin

        if name == "lz4":
            kwargs = hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
            text, plugin = "blosc-lz4 level 5 with bitshuffle (HDF5 filter 32001)", 32001
        else:
            kwargs = hdf5plugin.Zstd(clevel=1)
            text, plugin = "zstd level 1 (HDF5 filter 32015)", 32015
        return SpectraFilter(name, dict(kwargs), description=text,
                             plugin=KNOWN_PLUGINS[plugin][1])
    raise ValueError(f"unknown compression {name!r}; expected one of {COMPRESSIONS}")


def filter_ids(dataset: h5py.Dataset) -> list[int]:
    """HDF5 filter ids of a dataset's pipeline, in encoding order."""
    plist = dataset.id.get_create_plist()
    return [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]


def line_chunk_decoder(
    dataset: h5py.Dataset,
) -> Callable[[bytes, np.ndarray | None], np.ndarray] | None:
    """For a spectra dataset stored one raster line per chunk with no filter or with
    shuffle + deflate: a function from a chunk's stored bytes (``read_direct_chunk``) to the
    line (nx, n_px) in the dataset's dtype, written into ``out`` when given (no copy);
    ValueError for a chunk that does not decode to one line. None for any other layout or
    filter.

    Why: HDF5 inflates on the calling thread while holding the GIL (h5py); this decoder
    inflates with libdeflate (2.8x zlib, 2.4x ISA-L on a default map's chunks; ISA-L where
    the deflate package is missing) and releases the GIL, so a reader can decode lines on
    worker threads while its own thread goes on."""
    if dataset.ndim != 3 or dataset.chunks != (1, *dataset.shape[1:]):
        return None
    ids = filter_ids(dataset)
    if ids not in ([], [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]):
        return None
    dtype, shape = dataset.dtype, dataset.shape[1:]
    n, size = int(np.prod(shape)), dataset.dtype.itemsize
    deflated = bool(ids)

    def inflate(stored: bytes) -> bytes:
        if _inflate_exact is not None:
            try:
                return _inflate_exact(stored, n * size)
            except _DeflateError:  # damaged, or not one line: zlib says which, below
                pass
        try:
            return _zlib.decompress(stored)
        except _zlib.error as exc:  # a damaged stream (bad checksum, truncated)
            raise ValueError(f"a chunk of {dataset.name} cannot be inflated: {exc}") from exc

    def decode(stored: bytes, out: np.ndarray | None = None) -> np.ndarray:
        data = inflate(stored) if deflated else stored
        if len(data) != n * size:
            raise ValueError(f"a chunk of {dataset.name} decodes to {len(data)} bytes, not the "
                             f"{n * size} of one raster line")
        if out is not None and (out.shape != shape or out.dtype != dtype
                                or not out.flags.c_contiguous):
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {shape}")
        line = np.empty(shape, dtype) if out is None else out
        if not deflated or size == 1:
            line[...] = np.frombuffer(data, dtype).reshape(shape)
            return line
        lanes = np.frombuffer(data, np.uint8).reshape(size, n)  # shuffle: byte j of all, then j+1
        if size == 2 and dtype.byteorder in "=<|" and np.little_endian:
            # uint16 counts: high byte << 8 | low byte, two contiguous passes (2x the strided
            # byte copies below)
            flat = line.reshape(-1).view(np.uint16)
            np.left_shift(lanes[1], 8, out=flat, dtype=np.uint16)
            np.bitwise_or(flat, lanes[0], out=flat)
            return line
        dest = line.reshape(-1).view(np.uint8).reshape(n, size)
        for j in range(size):
            dest[:, j] = lanes[j]
        return line

    return decode


def missing_filters(dataset: h5py.Dataset) -> list[int]:
    """Filters of the dataset this process cannot decode, after trying hdf5plugin."""
    ids = filter_ids(dataset)
    if all(h5py.h5z.filter_avail(i) for i in ids):
        return []
    with suppress(ImportError):
        import hdf5plugin  # noqa: F401  (registers its filters with HDF5)
    return [i for i in ids if not h5py.h5z.filter_avail(i)]


def missing_filter_message(dataset: h5py.Dataset, missing: Iterable[int]) -> str:
    """Which plugin the reader lacks, in the words of the file and of KNOWN_PLUGINS."""
    parts = []
    for i in missing:
        name, source = KNOWN_PLUGINS.get(i, (f"filter {i}", f"the HDF5 plugin of filter {i}"))
        parts.append(f"{name} (HDF5 filter {i}) from {source}")
    stated = dataset.attrs.get(FILTER_ATTR)
    if isinstance(stated, bytes):
        stated = stated.decode("utf-8", errors="replace")
    note = f"; the file says readers need: {stated}" if stated is not None else ""
    return (f"{dataset.name} is compressed with a filter this program lacks: "
            + "; ".join(parts) + note
            + ". `plumelink repack IN OUT` rewrites it with deflate, which needs no plugin")
