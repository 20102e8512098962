"""Which instrument profile plays the secondary system of a simulated map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.simulate import MapSpec, simulate_dataset, simulate_map

SPEC = MapSpec("train", 3, 8, day=0)


def _read(path: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    with MapReader(path) as reader:
        lines = [reader.read_line(i) for i in range(reader.shape[0])]
        return (reader.settings, reader.secondary_wavelength_nm,
                np.stack([line.primary.spectra for line in lines]),
                np.stack([line.secondary.spectra for line in lines]))


def test_default_secondary_is_the_secondary_profile(tmp_path: Path) -> None:
    settings, axis, _, spectra = _read(simulate_map(tmp_path / "m.h5", SPEC, step_um=40.0))
    assert settings["secondary"]["profile"] == "secondary"
    assert settings["simulation"]["secondary_profile"] == "secondary"
    assert axis.size == 3872 and spectra.shape == (3, 8, 3872)


def test_ccd_plays_the_secondary(tmp_path: Path) -> None:
    path = simulate_map(tmp_path / "ccd.h5", SPEC, step_um=40.0, seed=4,
                        secondary="broadband_ccd")
    settings, axis, primary, spectra = _read(path)
    assert settings["secondary"]["profile"] == "broadband_ccd"
    assert settings["simulation"]["secondary_profile"] == "broadband_ccd"
    assert settings["primary"]["profile"] == "primary"
    assert axis.size == 2048 and spectra.shape == (3, 8, 2048)
    assert axis[0] == pytest.approx(238.0) and axis[-1] == pytest.approx(418.64, abs=0.01)
    assert primary.shape == (3, 8, 4062)
    # the same region, seed and day: the same sample spots (emission tracks the primary's)
    emis_p = primary.astype(float).sum(axis=2).ravel()
    emis_c = spectra.astype(float).sum(axis=2).ravel()
    assert np.corrcoef(emis_p, emis_c)[0, 1] > 0.7


def test_bad_secondary_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other than the primary"):
        simulate_dataset("tiny", tmp_path / "a", secondary="primary")
    with pytest.raises(FileNotFoundError, match="no instrument profile named 'nope'"):
        simulate_dataset("tiny", tmp_path / "b", secondary="nope")
    assert not list((tmp_path).glob("*/*.h5"))
