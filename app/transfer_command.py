"""`plumelink transfer`: apply a model package to a map, streamed, into a new map file.

The transferred spectra are stored uncompressed by default (float32, exactly as computed:
see `plumelink.pipeline.transfer`); `--precision bf16` runs the networks in bfloat16 where
the CPU has bf16 instructions and is recorded in the output's settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import COMPRESSION_CHOICES, compression_arg, positive_int
from plumelink.pipeline.map_layout import MapFileError


def _transfer(args: argparse.Namespace) -> int:
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package
    from plumelink.pipeline.transfer import transfer_map

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input map {args.input} does not exist")
    try:
        package = load_package(args.model)
        transfer = PackageTransfer(package, args.system, precision=args.precision,
                                   model=args.use,
                                   confidence_precision=args.confidence_precision)
        note = _calibrate(transfer, args.calibration, args.calibration_spots)
        with tqdm(total=None, unit="spectrum", desc="transfer", disable=args.quiet,
                  file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.total = total
                    bar.refresh()
                bar.update(done - bar.n)

            out = transfer_map(
                args.input, args.out, transfer,
                block_spots=args.block_spots,
                compression=compression_arg(args.compression),
                overwrite=args.overwrite, progress=progress,
            )
    except MapFileError as exc:  # not a map, damaged, busy: the CLI reports ValueErrors
        raise ValueError(str(exc)) from exc
    print(f"transferred map written to {out} (model package {Path(args.model)}, "
          f"system {transfer.models.system!r}, spectra by {transfer.model_name}; confidence "
          "in /map/transfer/confidence)")
    if args.use is None:
        print(f"{transfer.model_name}: {transfer.choice.reason}")
    print(note)
    return 0


def _calibrate(transfer, calibration: Path | None, spots: int | None = None) -> str:
    """Prediction intervals from the calibration map (default: the package's validation
    map); without one the map gets the confidence only, and the note says why."""
    if spots is not None and calibration is None:
        raise ValueError("--calibration-spots needs --calibration MAP.h5 (pairs measured on "
                         "the day of the map to transfer)")
    try:
        intervals = transfer.calibrate(calibration, spots=spots)
    except FileNotFoundError as exc:
        if calibration is not None:
            raise
        return f"no prediction intervals: {exc}"
    sizes = ", ".join(f"{r:,.0f}" for r in intervals.radius)
    return (f"{intervals.level:.0%} prediction intervals calibrated on "
            f"{transfer.calibration_map} ({intervals.n_calibration} spots; radii {sizes} counts "
            "from the least to the most confident spots) in /map/transfer/interval_radius")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `transfer` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "transfer",
        help="transfer a map's secondary spectra to primary spectra with a model package",
        description="Apply a model package (by default its best model on validation, "
        "usually the VAE + latent MLP) to every valid secondary "
        "spectrum of MAP.h5, block by block, and write OUT.h5: a plumelink map whose primary "
        "spectra are the transferred (baseline-corrected) spectra on the model's primary "
        "axis, whose secondary is a copy of the input's, with the per-spot confidence in "
        "/map/transfer/confidence and the package's identity in the settings.",
    )
    p.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR",
                   help="model package folder (from plumelink train)")
    p.add_argument("--input", type=Path, required=True, metavar="MAP.h5", help="input map")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.h5", help="output map")
    p.add_argument("--system", default=None,
                   help="secondary system of the package (default: its only one)")
    p.add_argument("--block-spots", type=positive_int, default=4096, metavar="N",
                   help="spectra transferred at a time (memory bound; default 4096)")
    p.add_argument("--compression", choices=COMPRESSION_CHOICES, default="none",
                   help="filter of the stored spectra (default none: float32 as computed, "
                   "read by every HDF5 reader; gzip saves ~19 %% of a transferred spectrum "
                   "at ~25 x the CPU time of writing it; lz4 and zstd need hdf5plugin)")
    p.add_argument("--use", default=None, metavar="NAME",
                   help="which of the package's models writes the spectra: vae_mlp, "
                   "one_step_mlp, pls, knn or pds (default: the one with the lowest "
                   "validation RSE, as plumelink evaluate recommends)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="arithmetic of the networks (default fp32; bf16 needs a CPU with "
                   "bfloat16 instructions, see the README for its measured error)")
    p.add_argument("--confidence-precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic of the confidence's re-encoding alone (default auto: "
                   "bf16 where the CPU has it; the spectra are unchanged, the confidence "
                   "within 1.5e-3 of fp32)")
    p.add_argument("--calibration", type=Path, default=None, metavar="MAP.h5",
                   help="paired map that calibrates the prediction intervals (default: the "
                   "package's validation map, when it is still there)")
    p.add_argument("--calibration-spots", type=positive_int, default=None, metavar="N",
                   help="calibrate on N paired spots spread over the --calibration map (a "
                   "few hundred pairs of the same day keep the 90 %% coverage that a map of "
                   "another day loses)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.h5")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_transfer)
