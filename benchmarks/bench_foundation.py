"""Foundation benchmark: simulated pairs/s, and the map store against plain h5py.

Measures, in one run on this machine:
  1. generation alone (physics of both spectrometers, raster lines of 500 spots);
  2. generation + HDF5 write through MapWriter (SWMR, one flush per line);
  3. MapWriter vs plain h5py writing the same bytes (spectra and every per-spot array, same
     chunks, same filter, one flush per line, default libver): the store's overhead, i.e.
     checks, SWMR and the two-phase commit of each line. (Emissivity is computed where a
     line is built, so it counts in generation, not in the store.) With the default deflate
     the store compresses on worker threads (direct chunk writes) and plain h5py through
     HDF5's own filter on its one thread: the same bytes decoded, written two ways.
  4. the stored size per spectrum of each compression.
Targets (2 cores): 2 >= 2,000 pairs/s; store >= 0.9 x plain h5py (overhead <= 11 %).

    python benchmarks/bench_foundation.py [--lines 40] [--nx 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.pipeline.map_filters import DEFAULT_COMPRESSION, spectra_filter
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster import RasterGrid
from plumelink.pipeline.simulate import simulate_lines


def _grid(lines: int, nx: int) -> RasterGrid:
    return RasterGrid(lines, nx, 25.0)


def _writer(path: Path, physics: BenchPhysics, grid: RasterGrid, compression: str | None):
    return MapWriter.create(
        path, ny=grid.ny, nx=grid.nx,
        primary_wavelength_nm=physics.wavelength_nm("primary"),
        secondary_wavelength_nm=physics.wavelength_nm("secondary"),
        x_um=grid.x_um, y_um=grid.y_um, compression=compression, overwrite=True,
    )


def bench_generation(lines: int, nx: int) -> float:
    physics = BenchPhysics(seed=0)
    grid = _grid(lines, nx)
    t = time.perf_counter()
    for _ in simulate_lines(physics, grid):
        pass
    return grid.n_spots / (time.perf_counter() - t)


def bench_generation_and_write(lines: int, nx: int, folder: Path, compression: str | None) -> float:
    physics = BenchPhysics(seed=0)
    grid = _grid(lines, nx)
    t = time.perf_counter()
    with _writer(folder / "gen.h5", physics, grid, compression) as writer:
        for line in simulate_lines(physics, grid):
            writer.append_line(line)
    return grid.n_spots / (time.perf_counter() - t)


def bench_store_vs_plain(
    lines: int, nx: int, folder: Path, compression: str | None
) -> tuple[float, float]:
    """Seconds to write pre-generated lines through MapWriter and through plain h5py."""
    physics = BenchPhysics(seed=0)
    grid = _grid(lines, nx)
    generated = list(simulate_lines(physics, grid))

    t = time.perf_counter()
    with _writer(folder / "store.h5", physics, grid, compression) as writer:
        for line in generated:
            writer.append_line(line)
    store = time.perf_counter() - t

    filters = spectra_filter(compression).create_kwargs
    # The same bytes: spectra plus every per-spot array the store writes (the emissivity
    # comes with each line, computed where the line is built), one chunk per line, one flush.
    per_spot = {}
    for line in generated:
        per_spot[line.index] = {
            "x_measured": line.x_measured_um, "y_measured": line.y_measured_um,
            "shot_id": line.shot_id,
            **{f"{name}/{field}": value for name, system in
               (("primary", line.primary), ("secondary", line.secondary))
               for field, value in (("valid", system.valid), ("frame_id", system.frame_id),
                                    ("timestamp", system.timestamp_s),
                                    ("emissivity", system.emissivity))},
        }
    t = time.perf_counter()
    with h5py.File(folder / "plain.h5", "w") as f:
        datasets = {
            name: f.create_dataset(
                name, shape=(grid.ny, grid.nx, n_px), dtype=np.uint16,
                chunks=(1, grid.nx, n_px), **filters,
            )
            for name, n_px in (("primary/spectra", generated[0].primary.n_px),
                               ("secondary/spectra", generated[0].secondary.n_px))
        }
        for key, value in per_spot[0].items():
            datasets[key] = f.create_dataset(key, shape=(grid.ny, grid.nx), dtype=value.dtype,
                                             chunks=(1, grid.nx))
        lines_done = f.create_dataset("lines_done", shape=(grid.ny,), dtype=np.uint8)
        for line in generated:
            datasets["primary/spectra"][line.index] = line.primary.spectra
            datasets["secondary/spectra"][line.index] = line.secondary.spectra
            for key, value in per_spot[line.index].items():
                datasets[key][line.index] = value
            lines_done[line.index] = 1
            f.flush()
    plain = time.perf_counter() - t
    return store, plain


def bytes_per_spectrum(lines: int, nx: int, folder: Path, compression: str | None) -> float:
    """Stored bytes of both systems' spectra, per spectrum, of a simulated map."""
    physics = BenchPhysics(seed=0)
    grid = _grid(lines, nx)
    path = folder / f"size_{compression}.h5"
    with _writer(path, physics, grid, compression) as writer:
        for line in simulate_lines(physics, grid):
            writer.append_line(line)
    with h5py.File(path, "r") as f:
        stored = sum(f[f"map/{name}/spectra"].id.get_storage_size()
                     for name in ("primary", "secondary"))
    return stored / (2 * grid.n_spots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--nx", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results["generation_pairs_per_s"] = max(
            bench_generation(args.lines, args.nx) for _ in range(args.repeats)
        )
        for compression in (DEFAULT_COMPRESSION, "lz4", None):
            key = compression or "none"
            results[f"generation_write_{key}_pairs_per_s"] = max(
                bench_generation_and_write(args.lines, args.nx, folder, compression)
                for _ in range(args.repeats)
            )
            # store and plain run back to back in each repeat; the median of the per-repeat
            # ratios is robust against the disk's slow moments
            runs = [bench_store_vs_plain(args.lines, args.nx, folder, compression)
                    for _ in range(args.repeats)]
            store = min(r[0] for r in runs)
            plain = min(r[1] for r in runs)
            results[f"store_{key}_pairs_per_s"] = args.lines * args.nx / store
            results[f"plain_h5py_{key}_pairs_per_s"] = args.lines * args.nx / plain
            results[f"store_overhead_{key}"] = float(np.median([r[0] / r[1] for r in runs])) - 1
            results[f"bytes_per_spectrum_{key}"] = bytes_per_spectrum(
                args.lines, args.nx, folder, compression)

    pairs = args.lines * args.nx
    print(f"plumelink foundation benchmark: {args.lines} lines x {args.nx} spots "
          f"({pairs} pairs), best of {args.repeats}")
    for key, value in results.items():
        text = f"{100 * value:+.1f} %" if key.startswith("store_overhead") else f"{value:,.0f}"
        print(f"  {key:38s} {text}")
    gw = results[f"generation_write_{DEFAULT_COMPRESSION}_pairs_per_s"]
    ratio = 1 / (1 + results[f"store_overhead_{DEFAULT_COMPRESSION}"])
    print(f"  generation + write ({DEFAULT_COMPRESSION}) / 2,000 pairs/s target: "
          f"{gw / 2000:.2f}x; vs the bench's 50 Hz: {gw / 50:.0f}x")
    print(f"  store / plain h5py ({DEFAULT_COMPRESSION}, median of per-repeat ratios): "
          f"{ratio:.2f}x (target 0.9x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
