"""Training pairs streamed from a map file: every pair once per epoch, shuffled, sharded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from plumelink.models.streaming import MapPairSource
from plumelink.pipeline.paired_spectra import load_pairs, preprocess_pairs
from plumelink.pipeline.preprocess import SpectralScaler
from plumelink.pipeline.simulate import simulate_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    path = simulate_dataset("tiny", tmp_path_factory.mktemp("maps"), seed=2)["train"]
    pairs = preprocess_pairs(load_pairs(path))
    scalers = {name: SpectralScaler("train", "global").fit(getattr(pairs, name))
               for name in ("primary", "secondary")}
    expected = [scalers[n].transform(getattr(pairs, n)) for n in ("secondary", "primary")]
    return path, scalers, expected


def _source(path: Path, scalers, **kw) -> MapPairSource:
    kw = {"block_spots": 32, "shuffle_spots": 64, **kw}
    return MapPairSource(path, scalers, ("secondary", "primary"), **kw)


def _rows(batches) -> list[bytes]:
    return [np.concatenate([s, p]).tobytes() for b in batches
            for s, p in zip(b[0].numpy(), b[1].numpy(), strict=True)]


def test_evaluation_order_is_storage_order(setup) -> None:
    path, scalers, (s, p) = setup
    source = _source(path, scalers)
    assert source.n_samples == len(p) == 192 and len(source.runs) == 6  # 2 lines per block
    batches = list(source.batches(20, None))
    assert [len(b[0]) for b in batches] == [20, 12] * 6  # batches within each block
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), s)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), p)


def test_an_epoch_shuffles_every_pair_exactly_once(setup) -> None:
    path, scalers, (s, p) = setup
    source = _source(path, scalers)
    storage = [np.concatenate([a, b]).tobytes() for a, b in zip(s, p, strict=True)]
    expected = sorted(storage)
    one = list(source.batches(32, np.random.default_rng(1)))
    assert [len(b[0]) for b in one] == [32] * 6
    rows = _rows(one)
    assert sorted(rows) == expected
    assert rows != storage
    assert _rows(source.batches(32, np.random.default_rng(1))) == rows  # deterministic
    assert _rows(source.batches(32, np.random.default_rng(2))) != rows
    rng = np.random.default_rng(1)
    first, second = _rows(source.batches(32, rng)), _rows(source.batches(32, rng))
    assert first != second and sorted(first) == sorted(second)  # a new order each epoch


def test_ranks_get_disjoint_equal_shards(setup) -> None:
    path, scalers, _ = setup
    shards = [_rows(_source(path, scalers, rank=r, world_size=2).batches(
        16, np.random.default_rng(7))) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 96  # 3 blocks of 32 spots each
    assert not set(shards[0]) & set(shards[1])


def test_stopping_early_stops_the_reader_thread(setup) -> None:
    path, scalers, _ = setup
    before = threading.active_count()
    gen = _source(path, scalers, prefetch=1, block_spots=16).batches(8, np.random.default_rng(0))
    next(gen)
    gen.close()
    assert threading.active_count() == before


def test_fields_are_checked(setup) -> None:
    path, scalers, _ = setup
    with pytest.raises(ValueError, match="fields"):
        MapPairSource(path, scalers, ("tertiary",))
    with pytest.raises(ValueError, match="no scaler"):
        MapPairSource(path, {"primary": scalers["primary"]}, ("secondary",))
