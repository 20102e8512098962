"""Import of Lightigo Firefly HDF5 files, on files built here to the second-hand layout
(measurements/<key>/libs/{calibration, data, metadata/{X, Y, X_pos, Y_pos, Invalid}})."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

from plumelink.pipeline.import_firefly import FireflyFormatError, import_firefly
from plumelink.pipeline.map_reader import MapReader

NY, NX, N_PX = 3, 5, 300
STEP_MM = 0.025
ORIGIN_MM = (12.5, -4.0)


def calibration() -> np.ndarray:
    """189..859 nm over N_PX pixels, not evenly spaced (as a stitched spectrometer bank)."""
    t = np.linspace(0.0, 1.0, N_PX)
    return 189.0 + 600.0 * t + 70.0 * t**2


def shots(ny: int = NY, nx: int = NX, skip: Sequence[tuple[int, int]] = (), seed: int = 0,
          dtype: str = "uint16") -> dict[str, np.ndarray]:
    """A snake raster, grid indices from 1 (as a vendor may count), spots in `skip` not shot."""
    rng = np.random.default_rng(seed)
    order = [(iy, ix) for iy in range(ny)
             for ix in (range(nx) if iy % 2 == 0 else reversed(range(nx)))
             if (iy, ix) not in skip]
    iy, ix = (np.array(v) for v in zip(*order, strict=True))
    data = rng.poisson(400, (len(order), N_PX))
    return {
        "data": data.astype(dtype) if dtype != "float32" else data * np.float32(0.5),
        "X": ix + 1, "Y": iy + 1,
        "X_pos": ORIGIN_MM[0] + STEP_MM * ix + rng.normal(0, 1e-4, ix.size),
        "Y_pos": ORIGIN_MM[1] + STEP_MM * iy + rng.normal(0, 1e-4, iy.size),
        "Invalid": (rng.random(ix.size) < 0.2).astype(np.uint8),
    }


def firefly_file(path: Path, measurements: dict[str, dict[str, np.ndarray]] | None = None,
                 drop: Sequence[str] = ()) -> Path:
    """Write a Firefly-layout file; `drop` leaves out metadata fields ("metadata": all)."""
    measurements = measurements or {"2024-05-17_map01": shots()}
    with h5py.File(path, "w") as f:
        f.attrs["software"] = "FireFly 2.3"
        f.attrs["instrument_serial"] = np.bytes_(b"FF-0042")
        for key, spots in measurements.items():
            group = f.create_group(f"measurements/{key}")
            group.attrs["laser_energy_mJ"] = 18.5
            group.attrs["gate_delay_us"] = np.array([0.5, 1.0])
            libs = group.create_group("libs")
            libs.create_dataset("calibration", data=calibration()).attrs["units"] = "nm"
            libs.create_dataset("data", data=spots["data"]).attrs["units"] = "counts"
            if "metadata" in drop:
                continue
            meta = libs.create_group("metadata")
            for name in ("X", "Y", "X_pos", "Y_pos", "Invalid"):
                if name not in drop:
                    meta.create_dataset(name, data=spots[name])
            meta.create_dataset("Energy", data=18.4)
            if "X_pos" not in drop:
                meta["X_pos"].attrs["units"] = "mm"
    return path


def _shot_at(spots: dict[str, np.ndarray]) -> dict[tuple[int, int], int]:
    return {(int(y) - 1, int(x) - 1): i for i, (x, y) in enumerate(zip(spots["X"], spots["Y"],
                                                                       strict=True))}


def test_full_raster_imports_spectra_positions_validity_and_attributes(tmp_path: Path) -> None:
    spots = shots()
    out = import_firefly(firefly_file(tmp_path / "ff.h5", {"m": spots}), tmp_path / "map.h5")
    cal = calibration()
    window = (cal >= 260) & (cal <= 370)
    with MapReader(out) as reader:
        assert reader.shape == (NY, NX)
        np.testing.assert_array_equal(reader.primary_wavelength_nm, cal)
        np.testing.assert_array_equal(reader.secondary_wavelength_nm, cal[window])
        np.testing.assert_allclose(reader.x_um, 1000 * (ORIGIN_MM[0] + STEP_MM * np.arange(NX)),
                                   atol=0.5)
        np.testing.assert_allclose(reader.y_um, 1000 * (ORIGIN_MM[1] + STEP_MM * np.arange(NY)),
                                   atol=0.5)
        for (iy, ix), shot in _shot_at(spots).items():
            line = reader.read_line(iy)
            valid = not spots["Invalid"][shot]
            assert line.primary.valid[ix] == valid and line.secondary.valid[ix] == valid
            assert line.shot_id[ix] == shot
            assert line.x_measured_um[ix] == pytest.approx(1000 * spots["X_pos"][shot])
            assert line.y_measured_um[ix] == pytest.approx(1000 * spots["Y_pos"][shot])
            if valid:
                np.testing.assert_array_equal(line.primary.spectra[ix], spots["data"][shot])
                np.testing.assert_array_equal(line.secondary.spectra[ix],
                                              spots["data"][shot][window])
        settings = reader.settings
        assert reader.metadata["raster_order"] == "snake-horizontal"
    firefly = settings["firefly"]
    assert firefly["software"] == "FireFly 2.3" and firefly["instrument_serial"] == "FF-0042"
    measurement = firefly["measurements"]["m"]
    assert measurement["laser_energy_mJ"] == 18.5 and measurement["gate_delay_us"] == [0.5, 1.0]
    assert measurement["libs"]["data"]["units"] == "counts"
    assert measurement["libs"]["metadata"]["X_pos"]["units"] == "mm"
    assert measurement["libs"]["metadata"]["Energy"]["value"] == 18.4
    assert settings["import"]["measurement"] == "m"
    assert settings["import"]["raster_filled"] == f"{NY * NX} of {NY * NX} spots"


def test_raster_not_full_leaves_the_missing_spots_invalid(tmp_path: Path) -> None:
    skip = [(2, 3), (2, 4), (1, 0)]  # stopped early, and one spot missed
    spots = shots(skip=skip)
    out = import_firefly(firefly_file(tmp_path / "ff.h5", {"m": spots}), tmp_path / "map.h5")
    with MapReader(out) as reader:
        assert reader.shape == (NY, NX)
        for iy, ix in skip:
            line = reader.read_line(iy)
            assert not line.primary.valid[ix] and not line.secondary.valid[ix]
            assert np.isnan(line.x_measured_um[ix]) and line.shot_id[ix] == -1
            assert not line.primary.spectra[ix].any()
        # setpoints of the spots the raster did not reach, from the other spots' positions
        expected = 1000 * (ORIGIN_MM[0] + STEP_MM * np.arange(NX))
        np.testing.assert_allclose(reader.x_um, expected, atol=0.5)
        assert reader.settings["import"]["raster_filled"] == f"{NY * NX - 3} of {NY * NX} spots"


def test_several_measurements_need_a_choice(tmp_path: Path) -> None:
    first, second = shots(seed=1), shots(ny=2, nx=3, seed=2)
    source = firefly_file(tmp_path / "ff.h5", {"a": first, "b": second})
    with pytest.raises(FireflyFormatError, match=r"2 measurements \(a, b\).*--measurement"):
        import_firefly(source, tmp_path / "map.h5")
    with pytest.raises(FireflyFormatError, match="no measurement 'c'; it has a, b"):
        import_firefly(source, tmp_path / "map.h5", measurement="c")
    out = import_firefly(source, tmp_path / "map.h5", measurement="b")
    with MapReader(out) as reader:
        assert reader.shape == (2, 3)
        shot = _shot_at(second)[(1, 2)]
        line = reader.read_line(1)
        if line.primary.valid[2]:
            np.testing.assert_array_equal(line.primary.spectra[2], second["data"][shot])
        assert line.shot_id[2] == shot


def test_missing_invalid_flags_take_every_shot_as_valid(tmp_path: Path) -> None:
    out = import_firefly(firefly_file(tmp_path / "ff.h5", drop=["Invalid"]), tmp_path / "m.h5")
    with MapReader(out) as reader:
        assert all(reader.read_line(iy).primary.valid.all() for iy in range(NY))
        assert "every shot taken as valid" in reader.settings["import"]["validity"]


def test_missing_positions_need_a_step(tmp_path: Path) -> None:
    source = firefly_file(tmp_path / "ff.h5", drop=["X_pos", "Y_pos"])
    with pytest.raises(FireflyFormatError, match=r"no X_pos.*--step-um"):
        import_firefly(source, tmp_path / "m.h5")
    out = import_firefly(source, tmp_path / "m.h5", step_um=20.0)
    with MapReader(out) as reader:
        np.testing.assert_array_equal(reader.x_um, 20.0 * np.arange(NX))
        assert np.isnan(reader.read_line(0).x_measured_um).all()


@pytest.mark.parametrize("drop", [["X"], ["metadata"]], ids=["no-X", "no-metadata"])
def test_missing_grid_indices_are_refused_saying_what_was_found(tmp_path: Path,
                                                                drop: list[str]) -> None:
    source = firefly_file(tmp_path / "ff.h5", drop=drop)
    found = "Energy, Invalid, X_pos, Y, Y_pos" if drop == ["X"] else "no metadata group"
    with pytest.raises(FireflyFormatError, match=f"lacks the grid indices X.*{found}"):
        import_firefly(source, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_files_of_another_layout_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["entry/data"] = np.zeros(3)
    with pytest.raises(FireflyFormatError, match=r"no 'measurements' group.*entry/"):
        import_firefly(other, tmp_path / "m.h5")
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5")
    with pytest.raises(FireflyFormatError, match="not an HDF5 file"):
        import_firefly(text, tmp_path / "m.h5")
    spots = shots()
    spots["data"] = spots["data"][:, :100]
    with pytest.raises(FireflyFormatError, match=r"\(shots, 300 pixels\).*\(15, 100\)"):
        import_firefly(firefly_file(tmp_path / "short.h5", {"m": spots}), tmp_path / "m.h5")
    spots = shots()
    spots["X"] = spots["X"].copy()
    spots["X"][1] = spots["X"][0]  # two shots on one spot
    with pytest.raises(FireflyFormatError, match="share grid spot"):
        import_firefly(firefly_file(tmp_path / "dup.h5", {"m": spots}), tmp_path / "m.h5")
    spots = shots()
    spots["Invalid"] = spots["Invalid"][:-1]
    with pytest.raises(FireflyFormatError, match="Invalid has shape"):
        import_firefly(firefly_file(tmp_path / "inv.h5", {"m": spots}), tmp_path / "m.h5")
    with pytest.raises(FireflyFormatError, match="window 900–950 nm holds 0"):
        import_firefly(firefly_file(tmp_path / "w.h5"), tmp_path / "m.h5",
                       secondary_nm=(900.0, 950.0))
    assert not (tmp_path / "m.h5").exists()


def test_float_spectra_stay_float(tmp_path: Path) -> None:
    spots = shots(dtype="float32")
    out = import_firefly(firefly_file(tmp_path / "ff.h5", {"m": spots}), tmp_path / "m.h5")
    with MapReader(out) as reader:
        line = reader.read_line(0)
        assert line.primary.spectra.dtype == np.float32
        shot = _shot_at(spots)[(0, 1)]
        if line.primary.valid[1]:
            np.testing.assert_array_equal(line.primary.spectra[1], spots["data"][shot])


def test_import_firefly_command(tmp_path: Path) -> None:
    source = firefly_file(tmp_path / "ff.h5")
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "import-firefly", str(source), "--out",
         str(tmp_path / "map.h5"), "--secondary-nm", "300:400", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    with MapReader(tmp_path / "map.h5") as reader:
        wavelength = reader.secondary_wavelength_nm
        assert wavelength.min() >= 300 and wavelength.max() <= 400
    result = subprocess.run(
        [sys.executable, "-m", "plumelink.app.cli", "import-firefly", str(source), "--out",
         str(tmp_path / "map.h5"), "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2 and "already exists" in result.stderr
