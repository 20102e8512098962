"""`plumelink import-firefly FILE --out MAP.h5`: a Lightigo Firefly measurement as a map."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import add_compression, compression_arg, positive_float
from plumelink.pipeline.map_layout import MapFileError


def window_arg(text: str) -> tuple[float, float]:
    """'260:370' -> (260.0, 370.0), nm."""
    low, sep, high = text.partition(":")
    try:
        window = (float(low), float(high)) if sep else None
    except ValueError:
        window = None
    if window is None or not window[0] < window[1]:
        raise argparse.ArgumentTypeError(f"bad window {text!r}; expected LOW:HIGH in nm, "
                                         "e.g. 260:370")
    return window


def _import_firefly(args: argparse.Namespace) -> int:
    from plumelink.pipeline.import_firefly import import_firefly

    try:
        with tqdm(total=None, unit="spot", desc="import-firefly", disable=args.quiet,
                  file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.total = total
                    bar.refresh()
                bar.update(done - bar.n)

            out = import_firefly(
                args.file, args.out, measurement=args.measurement,
                secondary_nm=args.secondary_nm, step_um=args.step_um,
                compression=compression_arg(args.compression), overwrite=args.overwrite,
                progress=progress,
            )
    except MapFileError as exc:
        raise ValueError(str(exc)) from exc
    print(f"imported {args.file} into {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import-firefly` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "import-firefly",
        help="import a Lightigo Firefly HDF5 measurement as a map file",
        description="Write MAP.h5 from one measurement of a Firefly HDF5 file "
        "(measurements/<key>/libs/{calibration, data, metadata/{X, Y, X_pos, Y_pos, "
        "Invalid}}): its spectra as the primary system, the pixels inside --secondary-nm as "
        "the secondary, grid indices, stage positions (mm -> µm), Invalid as per-spot "
        "validity and every attribute in /map/instrument/firefly.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="Firefly HDF5 file")
    p.add_argument("--out", type=Path, required=True, metavar="MAP.h5", help="map to write")
    p.add_argument("--measurement", default=None, metavar="KEY",
                   help="the measurement under /measurements (needed when there are several)")
    p.add_argument("--secondary-nm", type=window_arg, default=(260.0, 370.0),
                   metavar="LOW:HIGH", help="wavelength window cut from the spectra as the "
                   "secondary system (default 260:370)")
    p.add_argument("--step-um", type=positive_float, default=None, metavar="UM",
                   help="spot spacing, used only when the file holds no stage positions")
    add_compression(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing MAP.h5")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_import_firefly)
