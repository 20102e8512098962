"""Strong emission lines of the shipped line table, for labelling spectra."""

from __future__ import annotations

import functools

import numpy as np

from plumelink.drivers.sim.tables import element_table, line_table

KT_EV = 1.0  # plasma temperature used only to rank lines by expected strength


@functools.cache
def _ranked() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    table = line_table()
    strength = table.gk_aki * np.exp(-table.upper_energy_ev / KT_EV)
    order = np.argsort(strength)[::-1]
    labels = tuple(table.label[i] for i in order)
    return table.wavelength_nm[order], strength[order], labels


def strong_lines(lo_nm: float, hi_nm: float, n: int = 12,
                 min_gap_nm: float = 3.0) -> list[tuple[float, str]]:
    """The ``n`` strongest lines in [lo_nm, hi_nm], at least ``min_gap_nm`` apart."""
    wl, _, labels = _ranked()
    chosen: list[tuple[float, str]] = []
    for w, label in zip(wl, labels, strict=True):
        if lo_nm <= w <= hi_nm and all(abs(w - c) >= min_gap_nm for c, _ in chosen):
            chosen.append((float(w), label))
            if len(chosen) >= n:
                break
    return sorted(chosen)


def element_symbols() -> tuple[str, ...]:
    return tuple(element_table().symbols)
