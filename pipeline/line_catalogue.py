"""The shipped NIST line table as a scientist names lines: "Ca II 393.37", "309.42", "Be".

One place turns a line's name into a table row, ranks lines by their LTE strength at a plasma
temperature (for choosing an element's best line, naming interferences and drawing sticks),
and lists the candidate lines of a peak. The strengths are per unit mass fraction of each
element, from the same Saha-Boltzmann physics the simulator uses (`drivers.sim.plasma`), so
they rank lines within and across elements before anything is known about the sample.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from plumelink.drivers.sim.plasma import K_B_EV, PlasmaModel
from plumelink.drivers.sim.tables import line_table

ROMAN = ("I", "II", "III")
DEFAULT_TEMPERATURE_K = 10_000.0  # a typical LIBS plasma 1-2 µs after the pulse
DEFAULT_DENSITY_CM3 = 1.0e17
MATCH_TOLERANCE_NM = 0.05  # a named wavelength must be this close to a table line

_SPEC = re.compile(
    r"^\s*(?:(?P<el>[A-Z][a-z]?)\s*(?P<ion>I{1,3})?)?\s*(?P<nm>\d+(?:\.\d*)?)?\s*(?:nm)?\s*$")


class LineNameError(ValueError):
    """A line name that does not match the shipped line table (the message says why)."""


@dataclass(frozen=True)
class EmissionLine:
    """One row of the line table: `ion` 1 is the neutral atom (I), 2 the singly charged ion."""

    index: int
    element: str
    ion: int
    wavelength_nm: float

    @property
    def label(self) -> str:
        return f"{self.element} {ROMAN[self.ion - 1]} {self.wavelength_nm:.2f}"


def _row(i: int) -> EmissionLine:
    t = line_table()
    symbol = PlasmaModel().elements.symbols[int(t.element[i])]
    return EmissionLine(int(i), symbol, int(t.ion[i]) + 1, float(t.wavelength_nm[i]))


def all_lines() -> list[EmissionLine]:
    return [_row(i) for i in range(len(line_table()))]


@functools.cache
def line_strengths(temperature_k: float = DEFAULT_TEMPERATURE_K,
                   density_cm3: float = DEFAULT_DENSITY_CM3) -> np.ndarray:
    """Relative LTE emissivity of every table line for equal mass fractions of all elements.

    Saha balance between stages, Boltzmann population of the upper level, gA / lambda; the
    largest line is 1. Self-absorption and the sample's composition are left out on purpose:
    these numbers rank lines, they do not predict a spectrum."""
    if not (temperature_k > 0 and density_cm3 > 0):
        raise ValueError(f"plasma temperature and density must be positive, got "
                         f"{temperature_k} K and {density_cm3} cm^-3")
    plasma = PlasmaModel()
    t = line_table()
    el = plasma.elements
    fractions = plasma.stage_fractions(np.array([temperature_k]), np.array([density_cm3]))[0]
    u = el.partition_functions(np.array([temperature_k]))[0]
    per_mass = fractions[t.element, t.ion] / el.mass_u[t.element] / u[t.element, t.ion]
    kt = K_B_EV * temperature_k
    strength = per_mass * t.gk_aki * np.exp(-t.upper_energy_ev / kt) / t.wavelength_nm
    return strength / strength.max()


def _species(element: str, ion: int | None) -> np.ndarray:
    t = line_table()
    symbols = PlasmaModel().elements.symbols
    if element not in symbols:
        raise LineNameError(f"element {element!r} is not in the shipped line table; it has "
                            f"{', '.join(symbols)}")
    mask = t.element == symbols.index(element)
    if ion is not None:
        mask &= t.ion == ion - 1
    return mask


def parse_line(name: str, range_nm: tuple[float, float] | None = None,
               temperature_k: float = DEFAULT_TEMPERATURE_K) -> EmissionLine:
    """The table line a scientist means by NAME.

    "Ca II 393.37" or "Ca 393.37": that element's line nearest the wavelength (within
    MATCH_TOLERANCE_NM); "393.37": the strongest table line within the tolerance; "Ca" or
    "Ca II": the element's strongest line inside range_nm (the spectrometer's axis)."""
    m = _SPEC.match(name)
    if not m or not (m["el"] or m["nm"]):
        raise LineNameError(f"bad line {name!r}: expected e.g. 'Ca II 393.37', '393.37' or 'Ca'")
    t = line_table()
    ion = ROMAN.index(m["ion"]) + 1 if m["ion"] else None
    mask = _species(m["el"], ion) if m["el"] else np.ones(len(t), bool)
    strength = line_strengths(temperature_k)
    if m["nm"] is None:
        lo, hi = range_nm if range_nm is not None else (-np.inf, np.inf)
        inside = mask & (t.wavelength_nm >= lo) & (t.wavelength_nm <= hi)
        if not inside.any():
            raise LineNameError(f"{name!r} has no line in the table within {lo:g}-{hi:g} nm")
        return _row(int(np.flatnonzero(inside)[np.argmax(strength[inside])]))
    nm = float(m["nm"])
    near = mask & (np.abs(t.wavelength_nm - nm) <= MATCH_TOLERANCE_NM)
    if not near.any():
        candidates = np.flatnonzero(mask)
        closest = candidates[np.argsort(np.abs(t.wavelength_nm[candidates] - nm))[:3]]
        raise LineNameError(
            f"no line of the table within {MATCH_TOLERANCE_NM} nm of {name!r}; the nearest are "
            + ", ".join(_row(int(i)).label for i in closest))
    chosen = np.flatnonzero(near)
    if m["el"]:
        return _row(int(chosen[np.argmin(np.abs(t.wavelength_nm[chosen] - nm))]))
    return _row(int(chosen[np.argmax(strength[chosen])]))


@dataclass(frozen=True)
class Candidate:
    """A table line that could be a peak: its offset and relative LTE strength."""

    line: EmissionLine
    offset_nm: float
    strength: float


def candidates(wavelength_nm: float, within_nm: float,
               temperature_k: float = DEFAULT_TEMPERATURE_K,
               elements: tuple[str, ...] | None = None,
               exclude: tuple[str, ...] = ()) -> list[Candidate]:
    """Table lines within +-within_nm of a wavelength, strongest first."""
    t = line_table()
    strength = line_strengths(temperature_k)
    near = np.flatnonzero(np.abs(t.wavelength_nm - wavelength_nm) <= within_nm)
    out = [Candidate(_row(int(i)), float(t.wavelength_nm[i] - wavelength_nm), float(strength[i]))
           for i in near]
    out = [c for c in out if (elements is None or c.line.element in elements)
           and c.line.element not in exclude]
    return sorted(out, key=lambda c: -c.strength)


def sticks(element: str, range_nm: tuple[float, float],
           temperature_k: float = DEFAULT_TEMPERATURE_K) -> tuple[np.ndarray, np.ndarray]:
    """(wavelengths, relative LTE intensities) of an element's table lines within range_nm,
    all its stages together, the strongest in range 1: the stick spectrum a scientist lays
    over a measured one."""
    t = line_table()
    mask = _species(element, None) & (t.wavelength_nm >= range_nm[0]) & (
        t.wavelength_nm <= range_nm[1])
    if not mask.any():
        return np.empty(0), np.empty(0)
    strength = line_strengths(temperature_k)[mask]
    return t.wavelength_nm[mask], strength / strength.max()
