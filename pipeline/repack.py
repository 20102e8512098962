"""Rewrite a map file with another compression of its spectra, everything else as it is.

`plumelink repack` turns an opt-in blosc-lz4 map into one any HDF5 reads (deflate, the
default), or back. Every group, attribute, link and small dataset is copied as stored (H5Ocopy);
each spectra dataset is recreated with the new filter and the same chunks, and only the chunks
that were written are copied, so unwritten lines stay unwritten and a partial map resumes the
same. The copy is built next to the target and renamed over it at the end: a failure part way
leaves no half-written target. A map without the per-system NXdata cubes (written before
they existed) gets them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from . import map_layout as L
from .map_filters import (
    DEFAULT_COMPRESSION,
    SpectraFilter,
    missing_filter_message,
    missing_filters,
    spectra_filter,
)
from .map_reader import open_map_file
from .map_writer import add_spectra_cubes

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (chunks done, chunks total)


def repack(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    compression: str | None = DEFAULT_COMPRESSION,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write target: the map source with its spectra stored with `compression`."""
    source, target = Path(source), Path(target)
    new_filter = spectra_filter(compression)
    if not source.is_file():
        raise FileNotFoundError(f"map file {L.describe(source)} does not exist")
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"repack writes a new file: target {L.describe(target)} is the source")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{L.describe(target)} already exists; not overwriting")
    tmp = target.with_name(f".{target.name}.repack")
    src = open_map_file(source)
    try:
        spectra = _spectra_datasets(src)
        for dataset in spectra:
            missing = missing_filters(dataset)
            if missing:
                raise L.MissingFilterError(
                    f"cannot repack {L.describe(source)}: "
                    + missing_filter_message(dataset, missing))
        with h5py.File(tmp, "w", libver="latest", track_order=True) as dst:
            recompress = {_key(d) for d in spectra}
            copied: dict[tuple[int, int], str] = {}
            _copy_group(src, dst, recompress, copied, new_filter)
            total = sum(d.id.get_num_chunks() for d in spectra)
            done = 0
            with ThreadPoolExecutor(2, thread_name_prefix="plumelink-repack") as pool:
                for dataset in spectra:
                    done = _copy_chunks(dataset, dst[copied[_key(dataset)]], new_filter, pool,
                                        done, total, progress)
            add_spectra_cubes(dst)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    log.info("repacked %s -> %s (%s)", source, target, new_filter.description)
    return target


def _spectra_datasets(file: h5py.File) -> list[h5py.Dataset]:
    """Every spectra cube: the systems' (``spectra``) and any other dataset with a filter."""
    found: dict[str, h5py.Dataset] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.chunks is None or obj.ndim != 3:
            return
        if name.rsplit("/", 1)[-1] == L.SPECTRA or obj.id.get_create_plist().get_nfilters():
            found.setdefault(_key(obj), obj)

    file.visititems(visit)
    return list(found.values())


def _key(obj: h5py.HLObject) -> tuple[int, int]:
    info = h5py.h5o.get_info(obj.id)
    return (info.fileno, info.addr)


def _copy_group(src: h5py.Group, dst: h5py.Group, recompress: set[tuple[int, int]],
                copied: dict[tuple[int, int], str], new: SpectraFilter) -> None:
    """Copy attributes and members in creation order; hard links stay links to one object.

    The spectra (keys in recompress) are created empty with the new filter; `copied` maps
    each source object to its path in dst.
    """
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        link = src.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            dst[name] = link
            continue
        obj = src[name]
        key = _key(obj)
        if key in copied:  # a second hard link to an object already copied
            dst[name] = dst.file[copied[key]]
            continue
        copied[key] = f"{dst.name.rstrip('/')}/{name}"
        if isinstance(obj, h5py.Group):
            _copy_group(obj, dst.create_group(name, track_order=True), recompress, copied, new)
        elif key in recompress:
            made = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype, chunks=obj.chunks,
                                      fillvalue=obj.fillvalue, **new.create_kwargs)
            for attr, value in {**obj.attrs, **new.attrs()}.items():
                made.attrs[attr] = value
        else:
            src.copy(obj, dst, name=name)


def _copy_chunks(src: h5py.Dataset, dataset: h5py.Dataset, new: SpectraFilter,
                 pool: ThreadPoolExecutor, done: int, total: int,
                 progress: ProgressCallback | None) -> int:
    """Copy every written chunk of src, decoded, into dataset through its new filter."""
    offsets = [tuple(src.id.get_chunk_info(i).chunk_offset)
               for i in range(src.id.get_num_chunks())]
    batch = 64
    for start in range(0, len(offsets), batch):
        part = offsets[start:start + batch]
        blocks = [src[tuple(slice(a, a + c) for a, c in zip(o, src.chunks, strict=True))]
                  for o in part]
        if new.direct:
            blocks = [_full_chunk(b, src) for b in blocks]
            for offset, encoded in zip(part, pool.map(new.encode, blocks), strict=True):
                dataset.id.write_direct_chunk(offset, encoded)
        else:
            for offset, block in zip(part, blocks, strict=True):
                dataset[tuple(slice(a, a + n) for a, n in zip(offset, block.shape,
                                                               strict=True))] = block
        done += len(part)
        if progress is not None:
            progress(done, total)
    return done


def _full_chunk(block: np.ndarray, src: h5py.Dataset) -> np.ndarray:
    """A chunk cut by the dataset's edge, padded with the fill value (direct writes are whole)."""
    if block.shape == src.chunks:
        return block
    full = np.full(src.chunks, src.fillvalue, dtype=src.dtype)
    full[tuple(slice(0, n) for n in block.shape)] = block
    return full
