"""`plumelink peaks MAP [--spot IY,IX]`: the peak table of a spot or of the map's mean
spectrum, with the candidate lines of each peak."""

from __future__ import annotations

import argparse
from pathlib import Path

from plumelink.app.arguments import positive_float, positive_int
from plumelink.app.export_command import spot_arg
from plumelink.pipeline.map_layout import SYSTEMS


def _peaks(args: argparse.Namespace) -> int:
    from plumelink.pipeline.peaks import peak_table, write_peak_csv

    source: Path = args.map
    if not source.is_file():
        raise FileNotFoundError(f"map file {source} does not exist")
    elements = tuple(e.strip() for e in args.elements.split(",")) if args.elements else None
    table = peak_table(source, args.system, args.spot, min_snr=args.min_snr,
                       temperature_k=args.temperature, elements=elements,
                       max_peaks=args.max_peaks)
    print(f"{len(table.peaks)} peaks of {source} ({args.system}, {table.what}):")
    print(f"  {'nm':>9s} {'height':>9s} {'area':>9s}  candidates (strongest first)")
    for p in table.peaks:
        print(f"  {p.wavelength_nm:9.3f} {p.height:9.4g} {p.area:9.4g}  {p.best}")
    if args.csv:
        write_peak_csv(table, args.csv, overwrite=args.overwrite)
        print(f"peak table written to {args.csv}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `peaks` subcommand to the plumelink CLI's subparsers."""
    from plumelink.pipeline.line_catalogue import DEFAULT_TEMPERATURE_K
    from plumelink.pipeline.peaks import DEFAULT_MIN_SNR

    p = subparsers.add_parser(
        "peaks", help="peak table of a spot or of the mean spectrum, with candidate lines",
        description="Peaks standing --min-snr noise levels above their surroundings, each with "
        "its height and area above a local baseline and the NIST table lines within the "
        "resolution, strongest first by LTE strength at --temperature (equal mass fractions).")
    p.add_argument("map", type=Path, metavar="MAP", help="map file")
    p.add_argument("--system", choices=SYSTEMS, default="primary")
    p.add_argument("--spot", type=spot_arg, default=None, metavar="IY,IX",
                   help="one spot (default: the mean of the map's valid spectra)")
    p.add_argument("--elements", default="", metavar="EL,EL",
                   help="candidates only from these elements (e.g. Ca,Al,Si)")
    p.add_argument("--min-snr", type=positive_float, default=DEFAULT_MIN_SNR, metavar="K")
    p.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE_K,
                   metavar="K", help="plasma temperature ranking the candidates")
    p.add_argument("--max-peaks", type=positive_int, default=40, metavar="N")
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    p.set_defaults(func=_peaks)
