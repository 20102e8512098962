"""`plumelink repack IN OUT`: rewrite a map with another compression of its spectra."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import add_compression, compression_arg
from plumelink.pipeline.map_layout import MapFileError


def _repack(args: argparse.Namespace) -> int:
    from plumelink.pipeline.map_filters import spectra_filter
    from plumelink.pipeline.repack import repack

    compression = compression_arg(args.compression)
    try:
        with tqdm(total=None, unit="chunk", desc="repack", disable=args.quiet,
                  file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.total = total
                    bar.refresh()
                bar.update(done - bar.n)

            out = repack(args.input, args.output, compression, overwrite=args.overwrite,
                         progress=progress)
    except MapFileError as exc:  # not a map, damaged, missing plugin: reported as errors
        raise ValueError(str(exc)) from exc
    text = spectra_filter(compression)
    print(f"repacked {args.input} -> {out}: spectra {text.description}; readers need "
          f"{'no plugin' if text.plugin == 'none' else text.plugin}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `repack` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "repack",
        help="rewrite a map with another compression (e.g. lz4 -> the portable default)",
        description="Copy map file IN to OUT with its spectra stored with --compression "
        "(default: deflate + shuffle, which every HDF5 reader decodes without plugins; lz4 "
        "needs hdf5plugin in every reader). Everything else is copied as stored; lines not "
        "yet written stay unwritten.",
    )
    p.add_argument("input", type=Path, metavar="IN", help="map file to read")
    p.add_argument("output", type=Path, metavar="OUT", help="map file to write")
    add_compression(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_repack)
