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
    emission that makes grains visible. Pixels past the last whole block are left out;
    spectra shorter than a block form one block.
    """
    n_px = spectra.shape[1]
    block = min(FLOOR_BLOCK_PX, n_px)
    usable = n_px - n_px % block
    starts = np.arange(0, usable, block)
    accumulate = np.uint32 if spectra.dtype.kind == "u" else np.float64
    sums = np.add.reduceat(spectra[:, :usable], starts, axis=1, dtype=accumulate)
    blocks = sums.astype(np.float32) / np.float32(block)
    padded = np.pad(blocks, ((0, 0), (1, 1)), mode="edge")
    baseline = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    total = block * (blocks - baseline).sum(axis=1)
    total[~valid] = np.nan
    return total
