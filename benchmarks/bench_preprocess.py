"""Preprocessing benchmark: vectorised baseline vs the per-spectrum pandas reference, one run.

Both run in the same process on the same simulated primary spectra (uint16, 4062 px, random
spots of a 20 x 20 mm pegmatite): plumelink.pipeline.preprocess.baseline on the whole block,
and the paper's definition written directly with pandas, one spectrum at a time (the way the
authors apply it). Figures are spectra/s, best of the repeats, and their ratio (target >= 10x).
The reference runs on a subset (it is slow); its rate does not depend on the block size.

    python benchmarks/bench_preprocess.py [--spectra 3000] [--reference-spectra 300]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.pipeline.preprocess import MIN_WINDOW, SMOOTH_WINDOW, baseline


def simulated_block(n: int, seed: int = 0, system: str = "primary") -> np.ndarray:
    """(n, n_px) uint16 raw spectra of n random spots, shot 500 at a time like raster lines."""
    physics = BenchPhysics(seed=seed)
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, n, 500):
        k = min(500, n - start)
        shots = physics.shoot(rng.uniform(0, 20000, k), rng.uniform(0, 20000, k))
        parts.append(shots.spectra[system])
    return np.concatenate(parts)


def pandas_baseline(spectrum: np.ndarray) -> np.ndarray:
    """The reference: rolling minima both ways averaged, then a Gaussian rolling mean."""
    s = pd.Series(spectrum, dtype="float64")
    right = s.rolling(MIN_WINDOW, min_periods=1).min()
    left = s[::-1].rolling(MIN_WINDOW, min_periods=1).min()[::-1]
    smooth = ((right + left) / 2).rolling(
        SMOOTH_WINDOW, min_periods=1, win_type="gaussian", center=True
    )
    return smooth.mean(std=SMOOTH_WINDOW / 6).to_numpy()


def _best_rate(f, n: int, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return n / best


def bench(n_spectra: int, n_reference: int, repeats: int) -> dict[str, float]:
    """Spectra/s of both, their ratio, and the worst disagreement on the reference subset."""
    block = simulated_block(n_spectra)
    subset = block[:n_reference]
    vectorised = _best_rate(lambda: baseline(block), len(block), repeats)
    reference = _best_rate(lambda: [pandas_baseline(s) for s in subset], len(subset), repeats)
    ours = baseline(subset).astype(np.float64)
    theirs = np.stack([pandas_baseline(s) for s in subset])
    return {
        "spectra": float(len(block)),
        "n_px": float(block.shape[1]),
        "vectorised_spectra_per_s": vectorised,
        "pandas_reference_spectra_per_s": reference,
        "ratio": vectorised / reference,
        "max_abs_diff_counts": float(np.abs(ours - theirs).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=int, default=3000)
    parser.add_argument("--reference-spectra", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    r = bench(args.spectra, min(args.reference_spectra, args.spectra), args.repeats)
    print(f"plumelink preprocessing benchmark: baseline of {r['spectra']:.0f} x "
          f"{r['n_px']:.0f} px uint16 spectra, best of {args.repeats}")
    print(f"  vectorised (block)         {r['vectorised_spectra_per_s']:>10,.0f} spectra/s")
    print(f"  pandas, per spectrum       {r['pandas_reference_spectra_per_s']:>10,.0f} spectra/s")
    print(f"  ratio                      {r['ratio']:>10.1f}x (target >= 10x)")
    print(f"  max |difference|           {r['max_abs_diff_counts']:>10.2g} counts")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
