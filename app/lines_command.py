"""`plumelink lines MAP --line "Ca II 393.37" ...`: element maps of a map's spectra."""

from __future__ import annotations

import argparse
from pathlib import Path

from plumelink.app.arguments import positive_float


def _lines(args: argparse.Namespace) -> int:
    from plumelink.pipeline.element_maps import element_maps, write_element_maps

    source: Path = args.map
    if not source.is_file():
        raise FileNotFoundError(f"map file {source} does not exist")
    result = element_maps(source, args.line, args.ratio, args.system,
                          window_fwhm=args.window_fwhm, temperature_k=args.temperature,
                          normalise=args.normalise, truth=args.truth)
    out = args.out or source.with_name(f"{source.stem}_lines.h5")
    write_element_maps(result, out, overwrite=args.overwrite)
    print(f"{len(result.maps)} map(s) of {source} ({args.system}; resolution "
          f"{result.resolution.source}) -> {out}")
    for m in result.maps:
        if m.window is None:
            print(f"  {m.name:32s} ratio of line areas")
            continue
        w = m.window
        text = f"  {m.name:32s} window {w.window_nm[0]:.3f}-{w.window_nm[1]:.3f} nm"
        if w.interferences:
            text += "; within it: " + ", ".join(
                f"{c.line.label} ({c.strength:.2g}x)" for c in w.interferences[:4])
        if m.truth_spearman is not None:
            text += f"; Spearman with true {w.line.element} wt% {m.truth_spearman:+.2f}"
        print(text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `lines` subcommand to the plumelink CLI's subparsers."""
    from plumelink.pipeline.element_maps import DEFAULT_WINDOW_FWHM, NORMALISATIONS, SYSTEMS
    from plumelink.pipeline.line_catalogue import DEFAULT_TEMPERATURE_K

    p = subparsers.add_parser(
        "lines",
        help="element maps: each line's area above a local baseline, per spot",
        description="One map per emission line (--line, repeatable: 'Ca II 393.37', a "
        "wavelength alone such as '309.42', or an element such as 'Ca' for its strongest line "
        "on the axis), matched to the shipped NIST line table, integrated over a window of "
        "--window-fwhm spectrometer resolutions above a straight baseline fitted on both "
        "sides. Other elements' lines inside the window are named. Ratio maps with --ratio "
        "'A/B'. Output: one NXdata per map (silx, h5py, HDFView).",
    )
    p.add_argument("map", type=Path, metavar="MAP", help="map file (acquired, simulated, "
                   "imported or transferred)")
    p.add_argument("--line", action="append", default=[], metavar="LINE",
                   help="a line to map (repeatable)")
    p.add_argument("--ratio", action="append", default=[], metavar="A/B",
                   help="a ratio of two lines' areas (repeatable)")
    p.add_argument("--system", choices=SYSTEMS, default="primary",
                   help="spectra to map (transferred: the primary spectra of a map made by "
                   "plumelink transfer)")
    p.add_argument("--normalise", choices=NORMALISATIONS, default="none",
                   help="total: divide each line area by the spot's total emission")
    p.add_argument("--window-fwhm", type=positive_float, default=DEFAULT_WINDOW_FWHM,
                   metavar="K", help=f"integration window in resolution FWHMs (default "
                   f"{DEFAULT_WINDOW_FWHM:g})")
    p.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE_K,
                   metavar="K", help="plasma temperature for ranking lines and interferences "
                   f"(default {DEFAULT_TEMPERATURE_K:g} K)")
    p.add_argument("--truth", action="store_true",
                   help="simulated maps: rank-correlate each map with its element's true wt%%")
    p.add_argument("--out", type=Path, default=None, help="output file (default MAP_lines.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_lines)
