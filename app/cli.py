"""The `plumelink` command line: thin calls into pipeline and models."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("plumelink")


def _simulate(args: argparse.Namespace) -> int:
    from plumelink.pipeline.simulate import PRESETS, simulate_dataset

    total = PRESETS[args.preset].n_spots
    with tqdm(total=total, unit="pair", desc=f"simulate {args.preset}",
              disable=args.quiet, file=sys.stderr) as bar:
        paths = simulate_dataset(
            args.preset,
            args.out,
            seed=args.seed,
            truth=args.truth,
            compression=None if args.compression == "none" else args.compression,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"simulated {args.preset} data set ({total} paired spectra) in {Path(args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plumelink",
        description="LIBS bench with two spectrometers: acquisition, maps and spectral transfer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="write simulated train/val/test maps of a pegmatite sample",
        description="Write train.h5, val.h5 and test.h5 (three regions of one simulated "
        "pegmatite; the test map on another day) measured by both spectrometers.",
    )
    sim.add_argument("--preset", choices=["tiny", "small", "paper"], default="small")
    sim.add_argument("--out", type=Path, required=True, help="output folder")
    sim.add_argument("--seed", type=int, default=0, help="sample, instrument and noise seed")
    sim.add_argument("--truth", action="store_true",
                     help="store ground truth (mineral, composition) per spot")
    sim.add_argument("--compression", choices=["lz4", "zstd", "gzip", "none"], default="lz4")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"plumelink {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
