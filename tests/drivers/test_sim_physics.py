"""Physics sanity of the simulated bench: lines, temperatures, minerals, determinism."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from plumelink.drivers.sim.physics import BenchPhysics
from plumelink.drivers.sim.plasma import K_B_EV, Emission, PlasmaModel, Plume
from plumelink.drivers.sim.sample import MINERAL_NAMES, PegmatiteSample
from plumelink.drivers.sim.spectrograph import InstrumentProfile, Spectrograph
from plumelink.drivers.sim.tables import element_table, line_table

LINES = line_table()


@pytest.fixture
def spectrographs(spectrograph: Callable[[str], Spectrograph]) -> dict[str, Spectrograph]:
    return {name: spectrograph(name) for name in ("primary", "secondary")}


def _line(label_prefix: str) -> int:
    matches = [i for i, label in enumerate(LINES.label) if label.startswith(label_prefix)]
    assert matches, f"no line {label_prefix} in the table"
    return matches[0]


def _single_line(index: int, n_lines: int = len(LINES)) -> Emission:
    intensity = np.zeros((1, n_lines))
    intensity[0, index] = 1000.0
    return Emission(intensity, np.array([1.0]), np.array([0.0]), np.array([9500.0]))


def _pixel_of(wavelength_axis: np.ndarray, wavelength: float) -> float:
    return float(np.interp(wavelength, wavelength_axis, np.arange(wavelength_axis.size)))


@pytest.mark.parametrize(
    "label, in_secondary",
    [
        ("Si I 288.16", True),
        ("Al I 309.27", True),
        ("Be II 313.04", True),
        ("Mn II 257.61", False),
        ("Si I 251.61", False),
        ("Ca II 393.37", False),
        ("K I 404.41", False),
        ("Fe I 371.99", False),
    ],
)
def test_named_line_appears_at_its_wavelength_only_where_covered(
    spectrographs: dict[str, Spectrograph], label: str, in_secondary: bool
) -> None:
    index = _line(label)
    wavelength = LINES.wavelength_nm[index]
    for name, spectrograph in spectrographs.items():
        axis = spectrograph.wavelength_nm
        covered = axis[0] <= wavelength <= axis[-1]
        assert covered == (name == "primary" or in_secondary), (name, label)
        signal = spectrograph.expected_counts(_single_line(index))[0]
        if covered:
            peak = int(np.argmax(signal))
            assert abs(peak - _pixel_of(axis, wavelength)) <= 1.0, (name, label, peak)
            assert signal[peak] > 100.0
        else:
            # nothing but the far Lorentzian wing can reach the detector
            reference = spectrographs["primary"].expected_counts(_single_line(index))[0].max()
            assert signal.max() < 1e-3 * reference, (name, label)


def test_line_positions_in_noisy_spectra_of_real_minerals() -> None:
    physics = BenchPhysics(seed=3)
    spots = np.random.default_rng(0).uniform(0, 8000, size=(400, 2))
    block = physics.shoot(spots[:, 0], spots[:, 1])
    quartz = block.truth.mineral == MINERAL_NAMES.index("quartz")
    assert quartz.sum() > 20
    for system, lam in (("primary", 251.61), ("primary", 288.16), ("secondary", 288.16)):
        axis = physics.wavelength_nm(system)
        mean = block.spectra[system][quartz].astype(float).mean(axis=0)
        centre = round(_pixel_of(axis, lam))
        window = mean[centre - 6 : centre + 7]
        assert abs(int(np.argmax(window)) - 6) <= 1, (system, lam)
        assert window.max() > np.median(mean) + 2000


def test_line_ratio_follows_boltzmann_factor() -> None:
    model = PlasmaModel()
    fe = element_table().index("Fe")
    neutral_fe = np.flatnonzero((LINES.element == fe) & (LINES.ion == 0))
    energies = LINES.upper_energy_ev[neutral_fe]
    a, b = neutral_fe[np.argmin(energies)], neutral_fe[np.argmax(energies)]
    assert LINES.upper_energy_ev[b] - LINES.upper_energy_ev[a] > 1.0
    composition = np.zeros((2, len(element_table().symbols)))
    composition[:, fe] = 1.0
    temperatures = np.array([8000.0, 12000.0])
    plume = Plume(temperatures, np.full(2, 1e17), np.ones(2), composition)
    lines = model.emission(plume, self_absorption=False).line_intensity
    ratio = lines[:, b] / lines[:, a]
    delta_e = LINES.upper_energy_ev[b] - LINES.upper_energy_ev[a]
    expected = np.exp(-delta_e / K_B_EV * (1 / temperatures[1] - 1 / temperatures[0]))
    assert ratio[1] / ratio[0] == pytest.approx(expected, rel=1e-9)
    assert ratio[1] > ratio[0]  # hotter plasma favours the higher upper level


def test_boltzmann_ratio_survives_the_spectrometer(spectrographs: dict[str, Spectrograph]) -> None:
    """Peak areas of two Fe I lines in noise-free spectra track the Boltzmann factor."""
    model = PlasmaModel()
    fe = element_table().index("Fe")
    a, b = _line("Fe I 373.49"), _line("Fe I 404.58")
    composition = np.zeros((2, len(element_table().symbols)))
    composition[:, fe] = 1.0
    temperatures = np.array([8000.0, 11000.0])
    plume = Plume(temperatures, np.full(2, 1e17), np.ones(2), composition)
    emission = model.emission(plume, self_absorption=False)
    spec = spectrographs["primary"]
    signal = spec.expected_counts(emission)
    axis = spec.wavelength_nm

    def area(row: np.ndarray, lam: float) -> float:
        p = round(_pixel_of(axis, lam))
        return float(row[p - 3 : p + 4].sum() - 7 * np.median(row[p - 30 : p + 30]))

    measured = [area(signal[i], LINES.wavelength_nm[b]) / area(signal[i], LINES.wavelength_nm[a])
                for i in range(2)]
    true = emission.line_intensity[:, b] / emission.line_intensity[:, a]
    assert measured[1] / measured[0] == pytest.approx(true[1] / true[0], rel=0.05)


def test_saha_balance_ionises_more_when_hotter() -> None:
    fractions = PlasmaModel().stage_fractions(np.array([7000.0, 12000.0]), np.full(2, 1e17))
    np.testing.assert_allclose(fractions.sum(axis=-1), 1.0, rtol=1e-12)
    si = element_table().index("Si")
    assert fractions[1, si, 1] > fractions[0, si, 1] + 0.2
    # easily ionised K is mostly ionised, hard-to-ionise O mostly neutral
    k, o = element_table().index("K"), element_table().index("O")
    assert fractions[1, k, 1] > 0.9 and fractions[1, o, 0] > 0.9


def test_each_mineral_gives_a_distinguishable_spectrum() -> None:
    """Every pair of minerals differs, beyond shot-to-shot noise, in several pixels.

    Spectra are baseline-corrected (rolling minimum, smoothed) and normalised to unit
    area, as an analyst would compare them, so the difference is one of line patterns.
    """
    physics = BenchPhysics(seed=1)
    xy = np.random.default_rng(2).uniform(0, 20000, size=(6000, 2))
    block = physics.shoot(xy[:, 0], xy[:, 1])
    raw = block.spectra["primary"].astype(np.float32)
    corrected = raw - uniform_filter1d(minimum_filter1d(raw, 101, axis=1), 51, axis=1)
    corrected /= corrected.sum(axis=1, keepdims=True)
    labels = np.where(block.truth.mixed, -1, block.truth.mineral)
    stats = {}
    for k, name in enumerate(MINERAL_NAMES):
        group = corrected[labels == k]
        assert len(group) >= 30, f"{name}: only {len(group)} pure spots"
        stats[name] = (group.mean(axis=0), group.var(axis=0, ddof=1) / len(group))
    for i, a in enumerate(MINERAL_NAMES):
        for b in MINERAL_NAMES[i + 1 :]:
            z = np.abs(stats[a][0] - stats[b][0]) / np.sqrt(stats[a][1] + stats[b][1])
            assert np.sort(z)[-5] > 8.0, f"{a} and {b} are not distinguishable"


def test_identical_seeds_give_identical_shots_and_other_seeds_differ() -> None:
    x = np.linspace(0, 3000, 50)
    y = np.full(50, 500.0)
    one = BenchPhysics(seed=7).shoot(x, y)
    two = BenchPhysics(seed=7).shoot(x, y)
    other = BenchPhysics(seed=8).shoot(x, y)
    for system in ("primary", "secondary"):
        np.testing.assert_array_equal(one.spectra[system], two.spectra[system])
        assert not np.array_equal(one.spectra[system], other.spectra[system])
    np.testing.assert_array_equal(one.truth.mineral, two.truth.mineral)


def test_both_systems_see_the_same_plume() -> None:
    """Shot-to-shot fluctuations are shared: the two systems' Si I 288 lines correlate."""
    physics = BenchPhysics(seed=4)
    x = np.full(300, 100.0)  # one spot, many shots: only the plume fluctuates
    block = physics.shoot(x, np.full(300, 100.0))

    def peak(system: str) -> np.ndarray:
        axis = physics.wavelength_nm(system)
        p = round(_pixel_of(axis, 288.16))
        return block.spectra[system][:, p - 3 : p + 4].astype(float).sum(axis=1)

    assert np.corrcoef(peak("primary"), peak("secondary"))[0, 1] > 0.9


def test_spot_on_a_grain_boundary_sees_a_mixture() -> None:
    sample = PegmatiteSample(seed=0)
    x = np.arange(0.0, 4000.0, 2.0)
    y = np.full_like(x, 1234.0)
    grain, _ = sample.grain_at(x, y)
    boundary = np.flatnonzero(np.diff(grain) != 0)
    assert boundary.size > 0
    xb = x[boundary[0]] + 1.0
    spot = sample.spot(np.array([xb - 40, xb, xb + 40]), np.full(3, 1234.0))
    assert spot.mixed.tolist() == [False, True, False]
    left, mid, right = spot.composition_wt_pct
    between = (mid >= np.minimum(left, right) - 1e-6) & (mid <= np.maximum(left, right) + 1e-6)
    differs = np.abs(left - right) > 0.5
    assert between[differs].all()
    assert (np.abs(mid - left)[differs] > 0.05).all()
    assert (np.abs(mid - right)[differs] > 0.05).all()


def test_carry_over_brings_previous_material_into_the_next_shot() -> None:
    physics = BenchPhysics(seed=0)
    sample = physics.sample
    xy = np.random.default_rng(5).uniform(0, 20000, size=(20000, 2))
    _, phase = sample.grain_at(xy[:, 0], xy[:, 1])
    quartz = xy[phase == MINERAL_NAMES.index("quartz")][0]
    columbite = xy[phase == MINERAL_NAMES.index("columbite-tantalite")][0]
    block = physics.shoot(np.array([columbite[0], quartz[0]]), np.array([columbite[1], quartz[1]]))
    nb = element_table().index("Nb")
    after = block.truth.composition_wt_pct[1, nb]
    before = block.truth.composition_wt_pct[0, nb]
    assert 0.01 * before < after < 0.06 * before


def test_another_day_shifts_baseline_and_calibration_slightly() -> None:
    profile = InstrumentProfile.load("primary")
    day0 = Spectrograph(profile, day=0, seed=0)
    day1 = Spectrograph(profile, day=1, seed=0)
    index = _line("Si I 288.16")
    emission = _single_line(index)
    s0, s1 = day0.expected_counts(emission)[0], day1.expected_counts(emission)[0]
    p = int(np.argmax(s0))
    centroid0 = (s0[p - 4 : p + 5] * np.arange(-4, 5)).sum() / s0[p - 4 : p + 5].sum()
    centroid1 = (s1[p - 4 : p + 5] * np.arange(-4, 5)).sum() / s1[p - 4 : p + 5].sum()
    assert 0.01 < abs(centroid1 - centroid0) < 0.2  # sub-pixel drift
    np.testing.assert_array_equal(day0.wavelength_nm, day1.wavelength_nm)  # nominal axis
    dark = np.zeros((1, len(LINES)))
    quiet = Emission(dark, np.array([1.0]), np.array([0.0]), np.array([9500.0]))
    rng = np.random.default_rng(0)
    base0 = day0.record(quiet, rng).astype(float)
    base1 = day1.record(quiet, rng).astype(float)
    assert abs(np.median(base1) - np.median(base0)) > 20


def test_detector_saturates_at_16_bit(spectrographs: dict[str, Spectrograph]) -> None:
    emission = _single_line(_line("Si I 288.16"))
    loud = Emission(emission.line_intensity * 1e4, *[getattr(emission, f) for f in (
        "stark_scale", "continuum_amplitude", "temperature_k")])
    raw = spectrographs["primary"].record(loud, np.random.default_rng(0))
    assert raw.dtype == np.uint16
    assert raw.max() == 65535
    assert (raw == 65535).sum() >= 2


def test_profile_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no instrument profile named 'tertiary'"):
        InstrumentProfile.load("tertiary")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nn_pixels = 10\n')
    with pytest.raises(ValueError, match="missing field"):
        InstrumentProfile.load(bad)


def test_shoot_rejects_bad_positions() -> None:
    physics = BenchPhysics(seed=0)
    with pytest.raises(ValueError, match="differ in length"):
        physics.shoot(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        physics.shoot(np.array([0.0, np.nan]), np.zeros(2))
