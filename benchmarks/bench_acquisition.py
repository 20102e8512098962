"""Acquisition benchmark: a fly-scan map through the whole simulated bench.

The engine runs a 200 x 200 fly scan at a simulated 1 kHz laser rate (20x the Firefly's 50 Hz)
on the simulated bench (real drivers over their transports, trigger bus, physics of both
spectrometers, pairing, HDF5 map with one flush per line). In the same run, the reference:
generation + write of the same number of pairs in lines of the same length, without any
instrument (the foundation figure). Reported: sustained pairs/s, invalid spots with no fault
injected (must be 0), the ratio engine / reference (target >= 0.8) and the engine's overhead
per spot in µs ((engine time - reference time) / spots). Each round measures the reference
before and after the engine run (a shared machine's speed drifts by several per cent within a
minute); the median round of ``--rounds`` is reported, every round is listed.

    python benchmarks/bench_acquisition.py [--lines 200] [--nx 200] [--speedup 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path

from plumelink.drivers.bench import write_simulated_profile
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.map_filters import DEFAULT_COMPRESSION
from plumelink.pipeline.scan import parse_scan

STEP_UM = 25.0
RATE_HZ = 1000.0


def fly_scan(folder: Path, lines: int, nx: int, speedup: float, trigger: str = "ddg-clock",
          order: str = "snake-horizontal"):
    text = textwrap.dedent(f"""\
        sample = "benchmark"
        operator = "bench_acquisition"
        bench = "{write_simulated_profile(folder, speedup)}"
        output = "{folder / 'fly.h5'}"
        [region]
        origin_um = [1000.0, 1000.0]
        size_um = [{nx * STEP_UM}, {lines * STEP_UM}]
        step_um = {STEP_UM}
        order = "{order}"
        [acquisition]
        mode = "fly"
        line_overhead_s = 0.0
        [fly]
        trigger = "{trigger}"
        speed_um_s = {STEP_UM * RATE_HZ}
        run_up_um = 50.0
        [laser]
        rate_hz = {RATE_HZ}
        [stage]
        speed_um_s = 100000.0
        settle_s = 0.0
        [ddg]
        laser_delay_s = 180e-6
        spectrometer_delay_s = 1e-6
        gate_s = 10e-6
        [spectrometers.primary]
        integration_time_s = 0.5e-3
        [spectrometers.secondary]
        integration_time_s = 0.5e-3
        """)
    return parse_scan(text, source="bench_acquisition.toml")


def bench_engine(lines: int, nx: int, speedup: float, folder: Path, trigger: str = "ddg-clock",
                 order: str = "snake-horizontal") -> dict:
    """``lines`` raster lines of ``nx`` spots (rows, or columns for a vertical order)."""
    if order.endswith("vertical"):
        scan = fly_scan(folder, nx, lines, speedup, trigger, order)
    else:
        scan = fly_scan(folder, lines, nx, speedup, trigger, order)
    arrivals: list[float] = []
    result = acquire(scan, on_line=lambda event: arrivals.append(time.perf_counter()))
    # sustained: from the first line on disk to the last (bench opening and the physics'
    # set-up excluded, as the reference excludes its set-up)
    elapsed = (arrivals[-1] - arrivals[0]) * lines / (len(arrivals) - 1)
    spots = lines * nx
    return {"pairs_per_s": spots / elapsed, "elapsed_s": elapsed, "status": result.status,
            "invalid_primary": result.invalid_primary,
            "invalid_secondary": result.invalid_secondary, "spots": spots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--nx", type=int, default=200)
    parser.add_argument("--speedup", type=float, default=200.0,
                        help="simulated seconds per real second (1 kHz needs >> 1)")
    parser.add_argument("--trigger", choices=["ddg-clock", "stage-distance"],
                        default="ddg-clock", help="what spaces the shots of a fly line")
    parser.add_argument("--order", default="snake-horizontal",
                        choices=["snake-horizontal", "snake-vertical"])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of reference, engine, reference; the median is reported")
    args = parser.parse_args()
    from bench_foundation import bench_generation_and_write

    spots = args.lines * args.nx
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.rounds):
            here = folder / f"round{i}"
            here.mkdir()
            # the reference brackets the engine run: a shared machine's speed drifts
            before = bench_generation_and_write(args.lines, args.nx, here, DEFAULT_COMPRESSION)
            engine = bench_engine(args.lines, args.nx, args.speedup, here, args.trigger,
                                  args.order)
            (here / "gen.h5").unlink()
            after = bench_generation_and_write(args.lines, args.nx, here, DEFAULT_COMPRESSION)
            reference = 2.0 / (1.0 / before + 1.0 / after)  # mean time per pair
            rounds.append({
                "engine_pairs_per_s": round(engine["pairs_per_s"], 1),
                "reference_pairs_per_s": round(reference, 1),
                "ratio": round(engine["pairs_per_s"] / reference, 3),
                "overhead_us_per_spot": round(
                    1e6 * (engine["elapsed_s"] - spots / reference) / spots, 1),
                "invalid_spots": engine["invalid_primary"] + engine["invalid_secondary"],
                "status": engine["status"],
            })
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]  # the median round
    out = {
        "map": f"{args.lines} lines x {args.nx} spots fly scan ({args.order}, trigger "
               f"{args.trigger}) at {RATE_HZ:g} Hz (speedup {args.speedup:g})",
        "engine_pairs_per_s": median["engine_pairs_per_s"],
        "reference_generation_write_pairs_per_s": median["reference_pairs_per_s"],
        "ratio": median["ratio"],
        "invalid_spots": sum(r["invalid_spots"] for r in rounds),
        "engine_overhead_us_per_spot": median["overhead_us_per_spot"],
        "status": sorted({r["status"] for r in rounds}),
        "rounds": rounds,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
