"""`plumelink acquire SCAN.toml [--out FILE] [--resume] [--dry-run]`: a thin call into
`pipeline.engine.acquire`, with a progress bar (lines, shots/s, invalid spots, ETA)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from plumelink.app.arguments import add_compression, compression_arg
from plumelink.drivers.errors import InstrumentError


def _acquire(args: argparse.Namespace) -> int:
    from plumelink.pipeline.engine import ScanHandle, acquire
    from plumelink.pipeline.line_events import LineEvent
    from plumelink.pipeline.map_layout import MapFileError
    from plumelink.pipeline.plan import dry_run, format_plan, make_plan
    from plumelink.pipeline.scan import load_scan

    scan = load_scan(args.scan)
    if args.dry_run:
        report = dry_run(scan)
        print(format_plan(report.plan))
        for warning in report.warnings:
            print(f"warning: {warning}")
        print("dry run: no device was opened")
        return 0
    out = args.out if args.out is not None else scan.output_path()
    handle = ScanHandle()
    # SIGTERM ends the scan as cleanly as Ctrl-C: DDG disabled, file marked interrupted.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: handle.abort("terminated (SIGTERM)"))
    with tqdm(total=make_plan(scan).n_lines, unit="line", desc=f"acquire {Path(args.scan).name}",
              disable=args.quiet, file=sys.stderr) as bar:

        def on_line(event: LineEvent) -> None:
            p = event.progress
            eta = "" if p.eta_s is None else f"{p.eta_s:,.0f}s"
            bar.set_postfix_str(f"{p.shots_per_s:,.0f} shots/s, invalid {p.invalid_primary}/"
                                f"{p.invalid_secondary}, ETA {eta}", refresh=False)
            bar.update(p.lines_done - bar.n)

        try:
            result = acquire(scan, out=out, resume=args.resume, on_line=on_line,
                             handle=handle, compression=compression_arg(args.compression))
        except MapFileError as exc:  # e.g. --resume of a complete or foreign file
            print(f"plumelink acquire: error: {exc}", file=sys.stderr)
            return 2
        except InstrumentError as exc:  # a device failed (past its [recovery] retries)
            print(f"plumelink acquire: error: {exc}; the map {out} is closed as interrupted "
                  f"with its finished lines (resume with --resume)", file=sys.stderr)
            return 3
    print(f"map: {result.path}")
    print(f"status: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    print(f"lines written: {result.lines_written} (map has {result.lines_total}); shots: "
          f"{result.shots}; invalid spots: primary {result.invalid_primary}, secondary "
          f"{result.invalid_secondary}; {result.elapsed_s:.1f} s")
    if result.device_faults:
        print(f"device faults: {result.device_faults}, lines shot again: {result.retries}, "
              f"reconnects: {result.reconnects} (logged in the map's /map/log/device_events)")
    return 0 if result.status == "complete" else 3


def register(sub: Any) -> None:
    """Add the ``acquire`` subcommand to the CLI's subparsers."""
    acq = sub.add_parser(
        "acquire",
        help="run a scripted raster acquisition (scan TOML) into an HDF5 map",
        description="Run the raster scan described by SCAN.toml on its bench profile: paired "
        "primary and secondary spectra streamed line by line into an HDF5 map. Ctrl-C or "
        "SIGTERM stops safely (DDG outputs disabled, file marked interrupted); --resume "
        "continues an interrupted map from its first unfinished line.",
    )
    acq.add_argument("scan", type=Path, metavar="SCAN.toml", help="scan description")
    acq.add_argument("--out", type=Path, default=None, metavar="FILE",
                     help="map file (default: the scan's output)")
    acq.add_argument("--resume", action="store_true",
                     help="continue an interrupted map into the same file")
    acq.add_argument("--dry-run", action="store_true",
                     help="print the plan (positions, shots, duration) without any hardware")
    add_compression(acq)
    acq.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    acq.set_defaults(func=_acquire)
