"""Simulated data sets: presets, determinism, regions, days and ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plumelink.drivers.sim.sample import REGION_ORIGINS_UM
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.simulate import PRESETS, simulate_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return simulate_dataset("tiny", tmp_path_factory.mktemp("tiny"), seed=11, truth=True)


def _spectra(path: Path, system: str) -> np.ndarray:
    with MapReader(path) as reader:
        return np.stack([getattr(reader.read_line(i), system).spectra
                         for i in range(reader.shape[0])])


def test_preset_writes_three_complete_maps_of_the_right_size(tiny: dict[str, Path]) -> None:
    assert sorted(tiny) == ["test", "train", "val"]
    for spec in PRESETS["tiny"].maps:
        with MapReader(tiny[spec.name]) as reader:
            assert reader.shape == (spec.ny, spec.nx)
            assert reader.status == "complete"
            assert reader.n_lines_done == spec.ny
            assert reader.primary_wavelength_nm.size == 4062
            assert reader.secondary_wavelength_nm.size == 3872
            assert reader.primary_wavelength_nm[0] == pytest.approx(245.0, abs=0.05)
            assert reader.primary_wavelength_nm[-1] == pytest.approx(407.0, abs=0.05)
            assert reader.secondary_wavelength_nm[0] == pytest.approx(260.0, abs=0.05)
            assert reader.secondary_wavelength_nm[-1] == pytest.approx(370.0, abs=0.05)
            assert reader.settings["simulation"]["day"] == spec.day
            assert reader.settings["simulation"]["region"] == spec.name


def test_test_map_is_measured_on_another_day(tiny: dict[str, Path]) -> None:
    days = {}
    for name, path in tiny.items():
        with MapReader(path) as reader:
            days[name] = reader.settings["simulation"]["day"]
    assert days["train"] == days["val"] != days["test"]


def test_shot_ids_follow_a_horizontal_snake(tiny: dict[str, Path]) -> None:
    with MapReader(tiny["train"]) as reader:
        nx = reader.shape[1]
        even, odd = reader.read_line(0), reader.read_line(1)
    np.testing.assert_array_equal(even.shot_id, np.arange(nx))
    np.testing.assert_array_equal(odd.shot_id, np.arange(2 * nx - 1, nx - 1, -1))
    np.testing.assert_array_equal(odd.primary.frame_id, odd.shot_id)
    assert np.all(np.abs(even.x_measured_um - even.x_um) < 3.0)


def test_ground_truth_is_stored_per_spot(tiny: dict[str, Path]) -> None:
    with MapReader(tiny["train"]) as reader:
        assert reader.has_truth
        assert "quartz" in reader.mineral_names
        line = reader.read_line(2)
    assert line.truth is not None
    assert (line.truth.mineral >= 0).all()
    np.testing.assert_allclose(line.truth.composition.sum(axis=1), 100.0, rtol=1e-3)


def test_identical_seeds_give_identical_maps(tiny: dict[str, Path], tmp_path: Path) -> None:
    again = simulate_dataset("tiny", tmp_path / "again", seed=11)
    other = simulate_dataset("tiny", tmp_path / "other", seed=12)
    for name in ("train", "test"):
        for system in ("primary", "secondary"):
            first = _spectra(tiny[name], system)
            np.testing.assert_array_equal(first, _spectra(again[name], system))
            assert not np.array_equal(first, _spectra(other[name], system))
    with MapReader(again["train"]) as reader:
        assert not reader.has_truth


def test_regions_of_the_paper_preset_do_not_overlap() -> None:
    boxes = []
    step = PRESETS["paper"].step_um
    for spec in PRESETS["paper"].maps:
        x0, y0 = REGION_ORIGINS_UM[spec.name]
        boxes.append((x0, y0, x0 + spec.nx * step, y0 + spec.ny * step))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            separate = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert separate, (a, b)


def test_unknown_preset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        simulate_dataset("huge", tmp_path)
