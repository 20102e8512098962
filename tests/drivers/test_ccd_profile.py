"""The third simulated spectrometer: a low-resolution broadband CCD on the same plume."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.drivers.sim.plasma import Emission
from plumelink.drivers.sim.spectrograph import InstrumentProfile, Spectrograph
from plumelink.drivers.sim.tables import line_table

LINES = line_table()


@pytest.fixture
def spectrographs(spectrograph: Callable[[str], Spectrograph]) -> dict[str, Spectrograph]:
    return {name: spectrograph(name) for name in ("primary", "broadband_ccd")}


def _line(label: str) -> int:
    matches = [i for i, text in enumerate(LINES.label) if text.startswith(label)]
    assert matches, f"no line {label} in the table"
    return matches[0]


def _emission(*indices: int) -> Emission:
    intensity = np.zeros((1, len(LINES)))
    intensity[0, list(indices)] = 1000.0
    return Emission(intensity, np.array([1.0]), np.array([0.0]), np.array([9500.0]))


def _pixel_of(axis: np.ndarray, wavelength: float) -> float:
    return float(np.interp(wavelength, axis, np.arange(axis.size)))


def test_profile_is_a_compact_broadband_ccd_covering_the_line_table() -> None:
    profile = InstrumentProfile.load("broadband_ccd")
    axis = profile.wavelength_nm()
    assert profile.name == "broadband_ccd" and profile.n_pixels == 2048
    assert np.all(np.diff(axis) > 0)
    assert axis[0] < LINES.wavelength_nm.min() and axis[-1] > LINES.wavelength_nm.max()
    primary = InstrumentProfile.load("primary")
    assert min(profile.resolution_fwhm_nm) > 8 * max(primary.resolution_fwhm_nm)
    assert profile.as_settings()["profile"] == "broadband_ccd"


@pytest.mark.parametrize("label", ["Si I 251.61", "Mg II 279.55", "Al I 309.27",
                                   "Ca II 393.37", "K I 404.41"])
def test_lines_appear_at_their_wavelength_within_the_resolution(
    spectrographs: dict[str, Spectrograph], label: str
) -> None:
    ccd = spectrographs["broadband_ccd"]
    index = _line(label)
    signal = ccd.expected_counts(_emission(index))[0]
    peak = int(np.argmax(signal))
    axis = ccd.wavelength_nm
    fwhm_px = max(ccd.profile.resolution_fwhm_nm) / float(np.diff(axis).min())
    assert abs(peak - _pixel_of(axis, LINES.wavelength_nm[index])) <= 1.0
    assert abs(axis[peak] - LINES.wavelength_nm[index]) < 0.5 * max(ccd.profile.resolution_fwhm_nm)
    above_half = np.flatnonzero(signal > 0.5 * signal[peak])
    assert 3 <= above_half.size <= fwhm_px + 2  # a line ~5-6 px wide, not a single pixel
    assert signal[peak] > 100.0


def test_close_doublet_resolved_by_primary_but_not_by_the_ccd(
    spectrographs: dict[str, Spectrograph]
) -> None:
    """Si I 251.43 / 251.61 nm (0.18 nm apart): two peaks on the primary, one on the CCD."""
    a, b = _line("Si I 251.43"), _line("Si I 251.61")
    emission = _emission(a, b)
    lam_a, lam_b = LINES.wavelength_nm[a], LINES.wavelength_nm[b]

    def dip(name: str) -> float:
        spec = spectrographs[name]
        signal = spec.expected_counts(emission)[0]
        pa = round(_pixel_of(spec.wavelength_nm, lam_a))
        pb = round(_pixel_of(spec.wavelength_nm, lam_b))
        between = signal[pa:pb + 1].min()
        return float(between / min(signal[pa - 1:pa + 2].max(), signal[pb - 1:pb + 2].max()))

    assert dip("primary") < 0.2  # a deep valley: two lines
    assert dip("broadband_ccd") > 0.9  # blended into one peak
    ccd = spectrographs["broadband_ccd"]
    signal = ccd.expected_counts(emission)[0]
    window = slice(round(_pixel_of(ccd.wavelength_nm, 250.9)),
                   round(_pixel_of(ccd.wavelength_nm, 252.1)))
    interior = signal[window]
    local_max = (interior[1:-1] > interior[:-2]) & (interior[1:-1] >= interior[2:])
    assert int(local_max.sum()) == 1


def test_primary_and_ccd_shoot_the_same_plume() -> None:
    physics = BenchPhysics(seed=3, systems=("primary", "broadband_ccd"))
    spots = np.random.default_rng(0).uniform(0, 8000, size=(150, 2))
    block = physics.shoot(spots[:, 0], spots[:, 1])
    assert set(block.spectra) == {"primary", "broadband_ccd"}
    ccd = block.spectra["broadband_ccd"]
    assert ccd.shape == (150, 2048) and ccd.dtype == np.uint16
    assert ccd.max() < 65535  # no saturation on ordinary minerals

    def emissivity(name: str) -> np.ndarray:
        raw = block.spectra[name].astype(np.float64)
        return (raw - np.median(raw, axis=1, keepdims=True)).sum(axis=1)

    r = np.corrcoef(emissivity("primary"), emissivity("broadband_ccd"))[0, 1]
    assert r > 0.8, r
    # shuffling the shots destroys it: the correlation is per shot, not per data set
    shuffled = np.corrcoef(emissivity("primary"),
                           np.roll(emissivity("broadband_ccd"), 37))[0, 1]
    assert shuffled < r - 0.3
