"""Paired spectra read from map files: shapes, pairing, blocks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _maps import SPEC, create_map, make_line

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.paired_spectra import (
    IncompleteMapError,
    PairedSpectra,
    check_axes,
    iter_pair_blocks,
    load_pairs,
    pair_counts,
    pair_line_runs,
    preprocess_pairs,
    read_pair_run,
)
from plumelink.pipeline.preprocess import correct_baseline
from plumelink.pipeline.simulate import PRESETS, simulate_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return simulate_dataset("tiny", tmp_path_factory.mktemp("tiny"), seed=1, truth=True)


@pytest.fixture(scope="module")
def gappy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic map of _maps: about 15 % of spots invalid in each system, independently."""
    path = tmp_path_factory.mktemp("gappy") / "gappy.h5"
    with create_map(path) as writer:
        for iy in range(SPEC.ny):
            writer.append_line(make_line(iy))
    return path


def _expected_pairs(valid_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat index, primary, secondary) of the synthetic map, computed from its lines."""
    index, primary, secondary = [], [], []
    for iy in range(SPEC.ny):
        line = make_line(iy)
        keep = line.primary.valid & line.secondary.valid if valid_only else np.ones(SPEC.nx, bool)
        index.append(iy * SPEC.nx + np.flatnonzero(keep))
        primary.append(line.primary.spectra[keep])
        secondary.append(line.secondary.spectra[keep])
    return np.concatenate(index), np.concatenate(primary), np.concatenate(secondary)


def test_simulated_maps_load_as_pairs_with_their_shapes(tiny: dict[str, Path]) -> None:
    for spec in PRESETS["tiny"].maps:
        pairs = load_pairs(tiny[spec.name])
        with MapReader(tiny[spec.name]) as reader:
            n1, n2 = reader.primary_wavelength_nm.size, reader.secondary_wavelength_nm.size
            line = reader.read_line(1)
        assert pairs.shape == (spec.ny, spec.nx)
        assert pairs.n == spec.ny * spec.nx  # the simulator misses no shot
        assert pairs.primary.shape == (pairs.n, n1) and pairs.primary.dtype == np.float32
        assert pairs.secondary.shape == (pairs.n, n2) and pairs.secondary.dtype == np.float32
        assert n1 > n2
        np.testing.assert_array_equal(pairs.index, np.arange(pairs.n))
        assert pairs.mineral is not None and pairs.mineral.dtype == np.int16
        # Row 1, column 3 is flat spot nx + 3 and holds exactly what the file holds there.
        k = spec.nx + 3
        np.testing.assert_array_equal(pairs.primary[k], line.primary.spectra[3])
        np.testing.assert_array_equal(pairs.secondary[k], line.secondary.spectra[3])
        assert line.truth is not None and pairs.mineral[k] == line.truth.mineral[3]
        assert (pairs.iy[k], pairs.ix[k]) == (1, 3)


def test_only_spots_valid_in_both_systems_are_pairs(gappy: Path) -> None:
    index, primary, secondary = _expected_pairs()
    assert 0 < index.size < SPEC.ny * SPEC.nx * 0.85  # the test map really has gaps
    pairs = load_pairs(gappy)
    np.testing.assert_array_equal(pairs.index, index)
    np.testing.assert_array_equal(pairs.primary, primary.astype(np.float32))
    np.testing.assert_array_equal(pairs.secondary, secondary.astype(np.float32))
    everything = load_pairs(gappy, valid_only=False)
    assert everything.n == SPEC.ny * SPEC.nx


def test_pair_blocks_cover_every_pair_once_in_bounded_blocks(gappy: Path) -> None:
    index, primary, _ = _expected_pairs()
    for block_spots in (1, 7, SPEC.nx, 2 * SPEC.nx + 5, 10_000):
        blocks = list(iter_pair_blocks(gappy, block_spots=block_spots))
        assert all(0 < b.n <= block_spots for b in blocks)
        got = np.concatenate([b.index for b in blocks])
        np.testing.assert_array_equal(got, index)  # each pair once, in storage order
        np.testing.assert_array_equal(np.concatenate([b.primary for b in blocks]), primary)
    # Whole lines per read: a block of 2 lines' worth never starts mid-way through a read.
    blocks = list(iter_pair_blocks(gappy, block_spots=2 * SPEC.nx))
    assert len(blocks) == SPEC.ny // 2
    assert [set(b.iy.tolist()) for b in blocks] == [
        {2 * i, 2 * i + 1} for i in range(SPEC.ny // 2)
    ]
    with pytest.raises(ValueError, match="block_spots must be >= 1"):
        next(iter_pair_blocks(gappy, block_spots=0))


def test_big_maps_are_refused_with_a_pointer_to_blocks(gappy: Path) -> None:
    with pytest.raises(ValueError, match="iter_pair_blocks") as exc:
        load_pairs(gappy, max_spots=SPEC.ny * SPEC.nx - 1)
    assert f"{SPEC.ny * SPEC.nx} spots" in str(exc.value)
    assert load_pairs(gappy, max_spots=SPEC.ny * SPEC.nx).n > 0


def test_interrupted_map_says_how_many_lines_are_done(tmp_path: Path) -> None:
    path = tmp_path / "cut.h5"
    writer = create_map(path)
    for iy in (0, 1, 3):
        writer.append_line(make_line(iy))
    writer.close("interrupted", "operator stop")
    with pytest.raises(IncompleteMapError, match=rf"3 of {SPEC.ny} raster lines done") as exc:
        load_pairs(path)
    assert "complete_lines_only=True" in str(exc.value)
    with pytest.raises(IncompleteMapError):
        next(iter_pair_blocks(path))
    pairs = load_pairs(path, complete_lines_only=True)
    assert set(pairs.iy.tolist()) == {0, 1, 3}
    blocks = list(iter_pair_blocks(path, block_spots=5, complete_lines_only=True))
    np.testing.assert_array_equal(np.concatenate([b.index for b in blocks]), pairs.index)


def test_preprocess_pairs_corrects_both_systems(gappy: Path) -> None:
    pairs = load_pairs(gappy)
    done = preprocess_pairs(pairs)
    assert done.primary.dtype == np.float32 and done.secondary.dtype == np.float32
    np.testing.assert_allclose(done.primary, correct_baseline(pairs.primary), rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        done.secondary, correct_baseline(pairs.secondary), rtol=0, atol=1e-3
    )
    assert not np.allclose(done.primary, pairs.primary)
    np.testing.assert_array_equal(done.index, pairs.index)
    assert preprocess_pairs(pairs, baseline=False) is pairs


def test_check_axes_explains_the_difference(gappy: Path) -> None:
    pairs = load_pairs(gappy)
    check_axes(pairs, SPEC.primary_wavelength_nm, SPEC.secondary_wavelength_nm)
    shifted = SPEC.secondary_wavelength_nm + 0.25
    with pytest.raises(ValueError, match=r"secondary axis differs .* by up to 0\.25 nm"):
        check_axes(pairs, SPEC.primary_wavelength_nm, shifted)
    with pytest.raises(ValueError, match=rf"primary axis has {SPEC.n_primary} pixels but the "
                       rf"reference has {SPEC.n_primary - 1}"):
        check_axes(pairs, SPEC.primary_wavelength_nm[:-1], SPEC.secondary_wavelength_nm)


def test_paired_spectra_checks_its_arrays() -> None:
    axis = np.linspace(1, 2, 4)
    good = dict(
        primary=np.zeros((2, 4), np.float32), secondary=np.zeros((2, 4), np.float32),
        index=np.array([0, 5], np.int64), shape=(2, 3), primary_wavelength_nm=axis,
        secondary_wavelength_nm=axis,
    )
    assert len(PairedSpectra(**good)) == 2
    with pytest.raises(ValueError, match="primary must be float32"):
        PairedSpectra(**{**good, "primary": np.zeros((2, 4), np.float64)})
    with pytest.raises(ValueError, match="outside a 2 x 3 map"):
        PairedSpectra(**{**good, "index": np.array([0, 6], np.int64)})


def test_line_runs_counts_and_reads_give_every_pair_once(gappy: Path) -> None:
    index, primary, _ = _expected_pairs()
    runs = pair_line_runs(gappy, block_spots=2 * SPEC.nx + 1)
    assert runs[0] == (0, 2) and all(b - a <= 2 for a, b in runs)
    assert [a for a, _ in runs[1:]] == [b for _, b in runs[:-1]]  # contiguous, in order
    counts = pair_counts(gappy, runs)
    with MapReader(gappy) as reader:
        parts = [read_pair_run(reader, a, b) for a, b in runs]
        assert read_pair_run(reader, 3, 3).n == 0
    assert [p.n for p in parts] == counts.tolist()
    np.testing.assert_array_equal(np.concatenate([p.index for p in parts]), index)
    np.testing.assert_array_equal(np.concatenate([p.primary for p in parts]), primary)
    assert pair_line_runs(gappy, block_spots=1)[:2] == [(0, 1), (1, 2)]  # one line at least
    with pytest.raises(ValueError, match="block_spots"):
        pair_line_runs(gappy, block_spots=0)


def test_line_runs_skip_unwritten_lines(tmp_path: Path) -> None:
    path = tmp_path / "cut.h5"
    writer = create_map(path)
    for iy in (0, 1, 3):
        writer.append_line(make_line(iy))
    writer.close("interrupted", "operator stop")
    with pytest.raises(IncompleteMapError):
        pair_line_runs(path)
    runs = pair_line_runs(path, block_spots=10 * SPEC.nx, complete_lines_only=True)
    assert runs == [(0, 2), (3, 4)]
    assert pair_counts(path, runs).sum() == load_pairs(path, complete_lines_only=True).n
