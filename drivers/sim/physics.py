"""The simulated bench's physics: sample -> plume -> both spectrometers, per shot.

Both spectrometers observe the same plume of every shot, so a shot yields an exact pair of
spectra. Calls are vectorised over a block of shots (a raster line), in acquisition order,
and the model keeps the state that links consecutive shots (crater carry-over, shot ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plasma import PlasmaModel, draw_plumes
from .sample import MINERAL_NAMES, PegmatiteSample
from .spectrograph import InstrumentProfile, Spectrograph
from .tables import element_table


@dataclass(frozen=True)
class ShotTruth:
    """Ground truth of each shot (only a simulator can know it)."""

    mineral: np.ndarray  # (n,) int16 index into MINERAL_NAMES
    composition_wt_pct: np.ndarray  # (n, n_elements), after carry-over
    mixed: np.ndarray  # (n,) spot straddles a grain boundary
    temperature_k: np.ndarray
    electron_density_cm3: np.ndarray


@dataclass(frozen=True)
class ShotBlock:
    """Paired spectra of consecutive shots, in the order they were fired."""

    shot_id: np.ndarray  # (n,) int64
    x_um: np.ndarray
    y_um: np.ndarray
    spectra: dict[str, np.ndarray]  # system name -> (n, n_pixels) uint16
    truth: ShotTruth


class BenchPhysics:
    """One sample, one measurement day, two (or more) spectrometers on the same plume.

    `seed` fixes the sample and the instruments; `day` the session drift; `run` the
    shot-to-shot randomness, so two maps measured on one day differ in their noise.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        day: int = 0,
        run: int = 0,
        systems: tuple[str, ...] = ("primary", "secondary"),
        sample: PegmatiteSample | None = None,
    ) -> None:
        self.seed = int(seed)
        self.day = int(day)
        self.sample = sample or PegmatiteSample(seed)
        self.plasma = PlasmaModel()
        self.spectrographs = {
            name: Spectrograph(InstrumentProfile.load(name), day=day, seed=seed)
            for name in systems
        }
        self._rng = np.random.default_rng([self.seed, 77, self.day, int(run)])
        self._previous: np.ndarray | None = None
        self._next_shot = 0

    @property
    def element_symbols(self) -> tuple[str, ...]:
        return element_table().symbols

    @property
    def mineral_names(self) -> tuple[str, ...]:
        return MINERAL_NAMES

    def wavelength_nm(self, system: str) -> np.ndarray:
        return self.spectrographs[system].wavelength_nm

    def reset_carry_over(self) -> None:
        """Forget the previous crater (a fresh area of the sample, e.g. a new map)."""
        self._previous = None

    def shoot(self, x_um: np.ndarray, y_um: np.ndarray) -> ShotBlock:
        """Fire one shot at each position, in the given order."""
        x = np.asarray(x_um, dtype=np.float64).ravel()
        y = np.asarray(y_um, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"x and y positions differ in length: {x.size} vs {y.size}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("shot positions must be finite numbers (µm)")
        material = self.sample.spot(x, y)
        plume = draw_plumes(
            self._rng, material.composition_wt_pct, material.mass_factor, self._previous
        )
        self._previous = material.composition_wt_pct[-1]
        spectra = {}
        for name, spectrograph in self.spectrographs.items():
            view = spectrograph.profile.collection
            emission = self.plasma.emission(
                plume,
                view["view_temperature_factor"],
                view["view_density_factor"],
                path_factor=view.get("view_path_factor", 1.0),
            )
            spectra[name] = spectrograph.record(emission, self._rng)
        shot_id = np.arange(self._next_shot, self._next_shot + x.size, dtype=np.int64)
        self._next_shot += x.size
        truth = ShotTruth(
            mineral=material.mineral,
            composition_wt_pct=plume.composition_wt_pct.astype(np.float32),
            mixed=material.mixed,
            temperature_k=plume.temperature_k,
            electron_density_cm3=plume.electron_density_cm3,
        )
        return ShotBlock(shot_id, x, y, spectra, truth)
