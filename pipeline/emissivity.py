"""Total emissivity of a spot: the one number per spectrum that the maps show.

Computed once where a raster line is built (the acquisition engine, the simulator), so the
map store, the live maps and scripts all show the same values and none recomputes them.
"""

from __future__ import annotations

import numpy as np

FLOOR_BLOCK_PX = 32


def total_emissivity(spectra: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Line emission of each spot: counts above a coarse baseline, summed; NaN where invalid.

    The baseline (per 32-pixel block, the lowest block mean among it and its neighbours)
    removes the dark level and the sloped continuum, which would otherwise swamp the line
    emission that makes grains visible. Pixels past the last whole block are left out.
    """
    n_px = spectra.shape[1]
    usable = n_px - n_px % FLOOR_BLOCK_PX
    starts = np.arange(0, usable, FLOOR_BLOCK_PX)
    sums = np.add.reduceat(spectra[:, :usable], starts, axis=1, dtype=np.uint32)
    blocks = sums.astype(np.float32) / np.float32(FLOOR_BLOCK_PX)
    padded = np.pad(blocks, ((0, 0), (1, 1)), mode="edge")
    baseline = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    total = FLOOR_BLOCK_PX * (blocks - baseline).sum(axis=1)
    total[~valid] = np.nan
    return total
