"""`plumelink export MAP --format hspy|csv`: a map's spectra for HyperSpy or a spreadsheet."""

from __future__ import annotations

import argparse
from pathlib import Path

from plumelink.app.arguments import positive_float
from plumelink.pipeline.map_layout import SYSTEMS, MapFileError


def spot_arg(text: str) -> tuple[int, int]:
    """'IY,IX' -> (iy, ix)."""
    iy, sep, ix = text.partition(",")
    if not (sep and iy.strip().isdigit() and ix.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"bad spot {text!r}; expected IY,IX, e.g. 3,17")
    return int(iy), int(ix)


def _export(args: argparse.Namespace) -> int:
    from plumelink.pipeline import export

    source: Path = args.map
    if not source.is_file():
        raise FileNotFoundError(f"map file {source} does not exist")
    stem = source.with_suffix("")
    try:
        if args.format == "hspy":
            if args.spot or args.line is not None:
                raise ValueError("--spot and --line belong to --format csv")
            out = args.out or Path(f"{stem}_{args.system}.hspy")
            export.export_hspy(source, out, args.system, overwrite=args.overwrite)
            what = "HyperSpy Signal1D (navigation x, y in µm; wavelength in nm)"
        elif args.line is not None:
            if args.spot:
                raise ValueError("give either --spot (spectra) or --line (a map), not both")
            out = args.out or Path(f"{stem}_{args.system}_{args.line:g}nm.csv")
            export.export_line_map_csv(source, out, args.line, args.width, args.system,
                                       overwrite=args.overwrite)
            what = f"intensity map of the {args.line:g} nm line"
        elif args.spot:
            out = args.out or Path(f"{stem}_{args.system}_spots.csv")
            export.export_spots_csv(source, out, args.spot, args.system,
                                    overwrite=args.overwrite)
            what = f"spectra of {len(args.spot)} spot(s)"
        else:
            raise ValueError("--format csv needs --spot IY,IX (repeatable) or --line NM")
    except (MapFileError, ImportError) as exc:  # reported as errors, not tracebacks
        raise ValueError(str(exc)) from exc
    print(f"exported {what} of {source} ({args.system}) to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="write a map's spectra as a HyperSpy file or CSV",
        description="--format hspy: one system's spectra as a HyperSpy Signal1D (.hspy, "
        "written by rosettasciio; navigation axes x and y in µm, signal axis the wavelength in "
        "nm, per-spot validity in original_metadata). --format csv: the spectra of chosen "
        "spots (--spot IY,IX, repeatable), or the intensity map of one line (--line NM, "
        "counts above a straight baseline across the window, summed over --width).",
    )
    p.add_argument("map", type=Path, metavar="MAP", help="map file")
    p.add_argument("--format", choices=["hspy", "csv"], required=True)
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: next to MAP, named after system and content)")
    p.add_argument("--system", choices=SYSTEMS, default="primary")
    p.add_argument("--spot", type=spot_arg, action="append", default=[], metavar="IY,IX",
                   help="a spot whose spectrum goes to the CSV (row IY, column IX)")
    p.add_argument("--line", type=positive_float, default=None, metavar="NM",
                   help="wavelength of the line whose intensity map goes to the CSV")
    p.add_argument("--width", type=positive_float, default=0.3, metavar="NM",
                   help="width of the line's window (default 0.3 nm)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_export)
