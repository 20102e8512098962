"""Import of the paper's .npy data set: un-snaking, validity, settings and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plumelink.pipeline.import_npy import import_npy
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import load_pairs

DIMS = {"train": (4, 5), "val": (3, 6), "test": (2, 3)}
N1, N2 = 64, 40  # emissivity needs at least one 32-pixel block


def _spectrum(split: int, k: int, n_px: int, system: int) -> np.ndarray:
    """Counts that encode where a row came from: split, snake index k and system."""
    return (1000 * split + 10 * k + 3 * system + np.arange(n_px)).astype(np.float64)


def write_npy_set(directory: Path, dims: dict[str, tuple[int, int]] = DIMS) -> Path:
    """A synthetic data set in the paper's layout, rows in horizontal-snake order, float64."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "s1_wavelengths.npy", np.linspace(250.0, 400.0, N1))
    np.save(directory / "s2_wavelengths.npy", np.linspace(380.0, 395.0, N2))
    for s, (split, (ny, nx)) in enumerate(dims.items()):
        for system, n_px in ((1, N1), (2, N2)):
            rows = np.stack([_spectrum(s, k, n_px, system) for k in range(ny * nx)])
            np.save(directory / f"s{system}_{split}.npy", rows)
    return directory


def snake_index(iy: int, ix: int, nx: int) -> int:
    return iy * nx + (ix if iy % 2 == 0 else nx - 1 - ix)


def test_every_spectrum_lands_at_its_spot(tmp_path: Path) -> None:
    source = write_npy_set(tmp_path / "npy")
    calls = []
    paths = import_npy(source, tmp_path / "maps", dims=DIMS, progress=lambda d, t: calls.append(
        (d, t)))
    assert set(paths) == set(DIMS)
    total = sum(ny * nx for ny, nx in DIMS.values())
    assert calls[-1] == (total, total) and len(calls) == sum(ny for ny, _ in DIMS.values())
    for s, (split, (ny, nx)) in enumerate(DIMS.items()):
        assert paths[split] == tmp_path / "maps" / f"{split}.h5"
        with MapReader(paths[split]) as reader:
            assert reader.shape == (ny, nx)
            assert reader.status == "complete" and reader.lines_done.all()
            assert reader.metadata["raster_order"] == "snake-horizontal"
            np.testing.assert_allclose(reader.primary_wavelength_nm, np.linspace(250, 400, N1))
            np.testing.assert_allclose(reader.secondary_wavelength_nm, np.linspace(380, 395, N2))
            np.testing.assert_array_equal(reader.x_um, np.arange(nx, dtype=float))
            settings = reader.settings["import"]
            assert settings["format"] == "paper npy"
            assert settings["dims"][split] == [ny, nx]
            assert settings["step"] == 1.0 and "assumed" in settings["step_units"]
            for iy, ix in ((0, 0), (0, nx - 1), (1, 0), (1, nx - 1), (ny - 1, 1)):
                line = reader.read_line(iy)
                k = snake_index(iy, ix, nx)
                assert line.shot_id[ix] == k
                np.testing.assert_array_equal(line.primary.spectra[ix], _spectrum(s, k, N1, 1))
                np.testing.assert_array_equal(
                    line.secondary.spectra[ix], _spectrum(s, k, N2, 2)
                )
                assert line.primary.valid.all() and line.secondary.valid.all()
                assert (line.primary.frame_id == -1).all()
                assert np.isnan(line.primary.timestamp_s).all()
    # Row 1 of train reversed: storage column 0 holds the last row of the second snake line.
    assert snake_index(1, 0, 5) == 9


def test_rows_with_nan_are_invalid_spots(tmp_path: Path) -> None:
    dims = {"test": (2, 3)}
    source = write_npy_set(tmp_path / "npy", dims)
    s1 = np.load(source / "s1_test.npy")
    s1[4, 2] = np.nan  # snake index 4 = row 1, second from the right -> column 1
    np.save(source / "s1_test.npy", s1)
    paths = import_npy(source, tmp_path / "maps", dims=dims)
    with MapReader(paths["test"]) as reader:
        line = reader.read_line(1)
        np.testing.assert_array_equal(line.primary.valid, [True, False, True])
        assert line.secondary.valid.all()
    pairs = load_pairs(paths["test"])
    assert pairs.n == 5 and 4 not in pairs.index.tolist()


def test_missing_files_are_named(tmp_path: Path) -> None:
    source = write_npy_set(tmp_path / "npy")
    (source / "s2_val.npy").unlink()
    (source / "s1_wavelengths.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"s1_wavelengths\.npy, s2_val\.npy"):
        import_npy(source, tmp_path / "maps", dims=DIMS)
    assert not (tmp_path / "maps").exists()  # nothing written before the checks pass


def test_wrong_row_count_names_both_numbers_and_dims(tmp_path: Path) -> None:
    source = write_npy_set(tmp_path / "npy")
    with pytest.raises(ValueError, match=r"s1_train.npy has 20 rows .* train=4x6 need 24"):
        import_npy(source, tmp_path / "maps", dims={**DIMS, "train": (4, 6)})


def test_wavelength_length_must_match_spectra(tmp_path: Path) -> None:
    source = write_npy_set(tmp_path / "npy")
    np.save(source / "s2_wavelengths.npy", np.linspace(380.0, 395.0, N2 + 1))
    with pytest.raises(ValueError, match=rf"{N2} pixels but s2_wavelengths.npy has {N2 + 1}"):
        import_npy(source, tmp_path / "maps", dims=DIMS)


def test_float_spectra_are_stored_as_float32_without_rounding(tmp_path: Path) -> None:
    dims = {"val": (3, 6)}
    source = write_npy_set(tmp_path / "npy", dims)
    s2 = np.load(source / "s2_val.npy")
    s2[13, 0] += 0.5  # line 2 (even: left to right), snake position 1 -> column 1
    s2[14, 1] = -3.25  # processed data may be negative
    np.save(source / "s2_val.npy", s2)
    paths = import_npy(source, tmp_path / "maps", dims=dims)
    with MapReader(paths["val"]) as reader:
        line = reader.read_line(2)
    assert line.secondary.spectra.dtype == np.float32
    assert line.secondary.spectra[1, 0] == np.float32(s2[13, 0])
    assert line.secondary.spectra[2, 1] == np.float32(-3.25)


def test_counts_out_of_uint16_range_are_refused(tmp_path: Path) -> None:
    dims = {"val": (3, 6)}
    source = write_npy_set(tmp_path / "npy", dims)
    s1 = np.load(source / "s1_val.npy").astype(np.int64)
    s1[0, 0] = -1
    np.save(source / "s1_val.npy", s1)
    np.save(source / "s2_val.npy", np.load(source / "s2_val.npy").astype(np.int64))
    with pytest.raises(ValueError, match=r"counts range from -1 .* outside 0\.\.65535"):
        import_npy(source, tmp_path / "maps", dims=dims)


def test_a_bad_later_map_leaves_no_map_written(tmp_path: Path) -> None:
    """Out-of-range counts in the second map's file are found before the first map is
    written: no complete-looking train.h5 is left beside the refusal."""
    dims = {"train": (4, 5), "val": (3, 6)}
    source = write_npy_set(tmp_path / "npy", dims)
    for name in ("s1_train", "s2_train", "s1_val", "s2_val"):
        rows = np.load(source / f"{name}.npy").astype(np.int64)
        if name == "s1_val":
            rows[4, 7] = 70_000
        np.save(source / f"{name}.npy", rows)
    with pytest.raises(ValueError, match=r"s1_val\.npy, row 4: .*nothing was written"):
        import_npy(source, tmp_path / "maps", dims=dims)
    assert not list((tmp_path / "maps").glob("*.h5"))


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    dims = {"test": (2, 3)}
    source = write_npy_set(tmp_path / "npy", dims)
    np.save(source / "s1_test.npy", np.array([object()] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never loads"):
        import_npy(source, tmp_path / "maps", dims=dims)


def test_existing_maps_are_not_overwritten(tmp_path: Path) -> None:
    dims = {"test": (2, 3)}
    source = write_npy_set(tmp_path / "npy", dims)
    import_npy(source, tmp_path / "maps", dims=dims)
    with pytest.raises(FileExistsError):
        import_npy(source, tmp_path / "maps", dims=dims)
    import_npy(source, tmp_path / "maps", dims=dims, overwrite=True)
