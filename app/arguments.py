"""argparse value types shared by the `plumelink` subcommands (errors name the bad value)."""

from __future__ import annotations

import argparse
import math

from plumelink.pipeline.map_filters import COMPRESSIONS, DEFAULT_COMPRESSION

# --compression of every command that writes a map; "none" stores the spectra uncompressed
COMPRESSION_CHOICES = [name or "none" for name in COMPRESSIONS]


def add_compression(parser: argparse.ArgumentParser) -> None:
    """The --compression option (one default for every map-writing command)."""
    parser.add_argument("--compression", choices=COMPRESSION_CHOICES,
                        default=DEFAULT_COMPRESSION,
                        help=f"filter of the stored spectra (default {DEFAULT_COMPRESSION}: "
                        "deflate + shuffle, read by every HDF5 without plugins; lz4 and zstd "
                        "are faster but every reader then needs hdf5plugin)")


def compression_arg(value: str) -> str | None:
    """The map writer's name of a --compression value (None: uncompressed)."""
    return None if value == "none" else value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value
