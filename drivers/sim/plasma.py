"""LTE emission of a laser-induced plasma, vectorised over shots and lines.

Each shot has one plume (temperature, electron density, ablated mass, composition) that
both spectrometers see. Line emissivities follow Saha ionisation balance and Boltzmann
populations with the tabulated partition functions; strong resonance lines are damped by
self-absorption of a homogeneous slab; a recombination/bremsstrahlung continuum scales as
ne²/√T. Absolute scale is arbitrary: the spectrograph model turns it into counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tables import HC_EV_NM, ElementTable, LineTable, element_table, line_table

K_B_EV = 8.617333262e-5  # eV/K
SAHA_CONSTANT_CM3 = 4.8294e15  # 2 (2π m_e k T / h²)^{3/2} / T^{3/2}, cm^-3 K^-1.5

# Shot-to-shot plume statistics (gate delay ~1 µs, 266 nm, ~10 mJ on silicates).
MEAN_TEMPERATURE_K = 8700.0
SIGMA_LOG_TEMPERATURE = 0.05
MEAN_DENSITY_CM3 = 1.0e17
SIGMA_LOG_DENSITY = 0.15
SIGMA_LOG_MASS = 0.15
# A few % of the previous shot's crater material is re-ablated (raster order).
CARRY_OVER_FRACTION = 0.03

# Self-absorption scale: optical depth of a line is this constant times
# λ⁴ gA exp(-E_i/kT)/U n_species / Δλ (homogeneous slab, relative units).
SELF_ABSORPTION_SCALE = 6.0e-10
CONTINUUM_SCALE = 2.5e-30
DOPPLER_FWHM_NM = 0.004


@dataclass(frozen=True)
class Plume:
    """The plasma of each shot, shared by both spectrometers."""

    temperature_k: np.ndarray  # (n,)
    electron_density_cm3: np.ndarray  # (n,)
    ablated_mass: np.ndarray  # (n,) relative
    composition_wt_pct: np.ndarray  # (n, n_elements)

    def __len__(self) -> int:
        return len(self.temperature_k)


@dataclass(frozen=True)
class Emission:
    """What a spectrometer receives from each shot, before its optics."""

    line_intensity: np.ndarray  # (n, n_lines), integrated over each line profile
    stark_scale: np.ndarray  # (n,) electron density / 1e17 cm^-3 (Stark width factor)
    continuum_amplitude: np.ndarray  # (n,)
    temperature_k: np.ndarray  # (n,)


def draw_plumes(
    rng: np.random.Generator,
    composition_wt_pct: np.ndarray,
    mass_factor: np.ndarray,
    previous_composition: np.ndarray | None = None,
) -> Plume:
    """Random plume conditions for shots on the given material (in shot order).

    `previous_composition` is the material of the shot before the first one, so carry-over
    continues across raster lines.
    """
    n = len(mass_factor)
    mass = mass_factor * np.exp(SIGMA_LOG_MASS * rng.standard_normal(n))
    # More ablated mass cools the plume a little (energy spent on atomisation).
    temperature = MEAN_TEMPERATURE_K * np.exp(
        SIGMA_LOG_TEMPERATURE * rng.standard_normal(n) - 0.04 * np.log(mass)
    )
    density = MEAN_DENSITY_CM3 * np.exp(
        SIGMA_LOG_DENSITY * rng.standard_normal(n) + 0.5 * np.log(temperature / MEAN_TEMPERATURE_K)
    )
    before = composition_wt_pct[:-1]
    if previous_composition is not None:
        before = np.concatenate([previous_composition[None, :], before])
    else:
        before = np.concatenate([composition_wt_pct[:1], before])
    composition = (1 - CARRY_OVER_FRACTION) * composition_wt_pct + CARRY_OVER_FRACTION * before
    return Plume(temperature, density, mass, composition)


class PlasmaModel:
    """Saha–Boltzmann line emission from the shipped line and element tables."""

    def __init__(self, lines: LineTable | None = None, elements: ElementTable | None = None):
        self.lines = lines or line_table()
        self.elements = elements or element_table()

    def stage_fractions(self, temperature_k: np.ndarray, density_cm3: np.ndarray) -> np.ndarray:
        """Fraction of each element in stages I, II, III: (n, n_el, 3)."""
        t = np.asarray(temperature_k, dtype=np.float64)[:, None]
        ne = np.asarray(density_cm3, dtype=np.float64)[:, None]
        u = self.elements.partition_functions(t[:, 0])  # (n, n_el, 3)
        kt = K_B_EV * t
        saha = SAHA_CONSTANT_CM3 * t**1.5 / ne
        chi = self.elements.ionisation_ev
        r1 = saha * u[..., 1] / u[..., 0] * np.exp(-chi[:, 0] / kt)
        r2 = saha * u[..., 2] / u[..., 1] * np.exp(-chi[:, 1] / kt)
        f1 = 1.0 / (1.0 + r1 + r1 * r2)
        return np.stack([f1, r1 * f1, r1 * r2 * f1], axis=-1)

    def emission(
        self,
        plume: Plume,
        temperature_factor: float = 1.0,
        density_factor: float = 1.0,
        self_absorption: bool = True,
        path_factor: float = 1.0,
    ) -> Emission:
        """Line intensities seen by a collection path viewing part of the plume.

        A fibre that looks at a cooler or denser zone of the same plume sees other line
        ratios: `temperature_factor` and `density_factor` describe that zone, and
        `path_factor` the length of its line of sight through the plume relative to the
        reference view (longer paths self-absorb strong lines more).
        """
        lines = self.lines
        t = plume.temperature_k * temperature_factor
        ne = plume.electron_density_cm3 * density_factor
        kt = (K_B_EV * t)[:, None]
        atoms = plume.ablated_mass[:, None] * plume.composition_wt_pct / self.elements.mass_u
        species = atoms[:, :, None] * self.stage_fractions(t, ne)  # (n, n_el, 3)
        u = self.elements.partition_functions(t)
        n_species = species[:, lines.element, lines.ion]  # (n, L)
        u_line = u[:, lines.element, lines.ion]
        emissivity = (
            n_species / u_line * lines.gk_aki * np.exp(-lines.upper_energy_ev / kt)
            / lines.wavelength_nm
        )
        stark_scale = ne / 1e17
        width = lines.stark_fwhm_nm * stark_scale[:, None] + DOPPLER_FWHM_NM
        tau = (
            SELF_ABSORPTION_SCALE
            * path_factor
            * (lines.wavelength_nm / 300.0) ** 4
            * lines.gk_aki
            * np.exp(-lines.lower_energy_ev / kt)
            / u_line
            * n_species
            / width
        )
        if not self_absorption:
            tau = np.zeros_like(tau)
        escape = np.where(tau > 1e-6, -np.expm1(-tau) / np.maximum(tau, 1e-12), 1.0)
        continuum = CONTINUUM_SCALE * ne**2 / np.sqrt(t)
        return Emission(emissivity * escape, stark_scale, continuum, t)


def photon_energy_ev(wavelength_nm: np.ndarray) -> np.ndarray:
    return HC_EV_NM / np.asarray(wavelength_nm)
