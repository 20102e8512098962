"""Atomic and mineral tables shipped in `plumelink.resources`.

The simulator reads the NIST line list, the element table (ionisation energies,
partition-function fits) and the mineral table once, into plain numpy arrays, so the
physics can be vectorised over lines, elements and shots.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

RESOURCES = "plumelink.resources"


def _rows(name: str) -> list[dict[str, str]]:
    text = files(RESOURCES).joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _float(value: str, default: float = np.nan) -> float:
    return float(value) if value.strip() else default


@dataclass(frozen=True)
class ElementTable:
    """Per-element constants, indexed like `symbols`."""

    symbols: tuple[str, ...]
    mass_u: np.ndarray  # (n_el,)
    ionisation_ev: np.ndarray  # (n_el, 2): first and second ionisation energy
    partition_fit: np.ndarray  # (n_el, 3 stages, 4 coefficients) of ln U(ln(T/1e4 K))

    def index(self, symbol: str) -> int:
        return self.symbols.index(symbol)

    def partition_functions(self, temperature_k: np.ndarray) -> np.ndarray:
        """U(T) of stages I, II, III for each element: shape (..., n_el, 3)."""
        x = np.log(np.asarray(temperature_k, dtype=np.float64) / 1e4)[..., None, None]
        c = self.partition_fit
        log_u = c[..., 0] + x * (c[..., 1] + x * (c[..., 2] + x * c[..., 3]))
        return np.exp(log_u)


@dataclass(frozen=True)
class LineTable:
    """Emission lines in air wavelengths, one row per transition."""

    element: np.ndarray  # (n,) int index into ElementTable.symbols
    ion: np.ndarray  # (n,) 0 = neutral (I), 1 = singly ionised (II)
    wavelength_nm: np.ndarray
    gk_aki: np.ndarray  # statistical weight x transition probability, s^-1
    upper_energy_ev: np.ndarray
    lower_energy_ev: np.ndarray
    stark_fwhm_nm: np.ndarray  # at ne = 1e17 cm^-3, T = 10 kK
    label: tuple[str, ...]  # e.g. "Si I 251.61"

    def __len__(self) -> int:
        return len(self.wavelength_nm)


@dataclass(frozen=True)
class Mineral:
    name: str
    formula: str
    role: str
    density_g_cm3: float
    ideal_wt_pct: dict[str, float]
    # element -> (typical, min, max) wt%, drawn per grain
    trace_wt_pct: dict[str, tuple[float, float, float]]


@functools.cache
def element_table() -> ElementTable:
    rows = _rows("elements.csv")
    fits = np.zeros((len(rows), 3, 4))
    for i, row in enumerate(rows):
        for stage in range(3):
            coeffs = [_float(row[f"U{stage + 1}_fit_c{k}"], 0.0) for k in range(4)]
            fits[i, stage] = coeffs
    return ElementTable(
        symbols=tuple(r["element"] for r in rows),
        mass_u=np.array([_float(r["mass_u"]) for r in rows]),
        ionisation_ev=np.array(
            [[_float(r["ionisation_eV_1"]), _float(r["ionisation_eV_2"], 99.0)] for r in rows]
        ),
        partition_fit=fits,
    )


# Lines whose transition probability NIST does not list carry only arc/spark relative
# intensities. They are put on the gA scale of a strong allowed transition: the strongest
# such line of each species gets this gA, the others in proportion to their NIST intensity.
REL_INT_REFERENCE_GA = 2.0e9
# Where the upper level is unknown too, assume it lies this far above the photon energy
# (a typical lower-level energy of strong lines of these transition metals).
REL_INT_LOWER_LEVEL_EV = 0.4
# Stark widths not in the table: typical LIBS values at 1e17 cm^-3 for neutral and ion lines.
DEFAULT_STARK_FWHM_NM = (0.015, 0.025)
HC_EV_NM = 1239.841984


@functools.cache
def line_table() -> LineTable:
    elements = element_table()
    rows = [r for r in _rows("libs_lines.csv") if r["element"] in elements.symbols]
    n = len(rows)
    element = np.array([elements.index(r["element"]) for r in rows])
    ion = np.array([int(r["ion"]) - 1 for r in rows])
    wavelength = np.array([float(r["wavelength_nm"]) for r in rows])
    aki = np.array([_float(r["Aki_s-1"]) for r in rows])
    gk = np.array([_float(r["gk"]) for r in rows])
    ek = np.array([_float(r["Ek_eV"]) for r in rows])
    ei = np.array([_float(r["Ei_eV"]) for r in rows])
    rel_int = np.array([_float(r["nist_rel_int"], 0.0) for r in rows])
    stark = np.array([_float(r["stark_fwhm_nm_ne1e17_T10kK"]) for r in rows])

    gk_aki = gk * aki
    missing = ~np.isfinite(gk_aki)
    for species in {(e, i) for e, i in zip(element[missing], ion[missing], strict=True)}:
        sel = missing & (element == species[0]) & (ion == species[1])
        gk_aki[sel] = REL_INT_REFERENCE_GA * rel_int[sel] / rel_int[sel].max()
    upper = np.where(np.isfinite(ek), ek, np.where(np.isfinite(ei), ei, REL_INT_LOWER_LEVEL_EV)
                     + HC_EV_NM / wavelength)
    lower = np.where(np.isfinite(ei), ei, upper - HC_EV_NM / wavelength)
    stark = np.where(np.isfinite(stark), stark, np.take(DEFAULT_STARK_FWHM_NM, ion))
    roman = ("I", "II", "III")
    labels = tuple(
        f"{r['element']} {roman[int(r['ion']) - 1]} {float(r['wavelength_nm']):.2f}" for r in rows
    )
    assert len(labels) == n
    return LineTable(element, ion, wavelength, gk_aki, upper, lower, stark, labels)


@functools.cache
def minerals() -> dict[str, Mineral]:
    ideal: dict[str, dict[str, float]] = {}
    trace: dict[str, dict[str, tuple[float, float, float]]] = {}
    meta: dict[str, tuple[str, str, float]] = {}
    for r in _rows("minerals.csv"):
        name = r["mineral"]
        if r["basis"] == "ideal":
            ideal.setdefault(name, {})[r["element"]] = float(r["wt_pct"])
            meta[name] = (r["formula"], r["role_in_sample"], float(r["density_g_cm3"]))
        else:
            trace.setdefault(name, {})[r["element"]] = (
                float(r["wt_pct"]),
                _float(r["wt_pct_min"], float(r["wt_pct"])),
                _float(r["wt_pct_max"], float(r["wt_pct"])),
            )
    return {
        name: Mineral(name, *meta[name], ideal_wt_pct=ideal[name], trace_wt_pct=trace.get(name, {}))
        for name in ideal
    }
