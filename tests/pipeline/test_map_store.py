"""The HDF5 map store: round trips, NeXus layout, SWMR following, crashes and clear errors."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from _maps import HERE, SPEC, create_map, lines_equal, make_line

from plumelink.pipeline.map_layout import (
    FORMAT_VERSION,
    CorruptMapError,
    ForeignFileError,
    FormatVersionError,
    MapBusyError,
    MapFileError,
    MapShapeError,
)
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster_line import LineTruth, RasterLine, SystemLine

TIMEOUT_S = 30.0


@pytest.fixture
def map_path(tmp_path: Path) -> Path:
    return tmp_path / "map.h5"


def write_map(path: Path, rows: list[int], **overrides: Any) -> None:
    with create_map(path, **overrides) as writer:
        for iy in rows:
            writer.append_line(make_line(iy, truth="truth_elements" not in overrides))


def expected_emissivity(line: RasterLine, system: str) -> np.ndarray:
    """Per spectrum: counts above the lowest of each 32-px block's and its neighbours' means."""
    data = getattr(line, system)
    totals = []
    for spectrum in data.spectra.astype(np.float64):
        means = [spectrum[i : i + 32].mean() for i in range(0, spectrum.size - 31, 32)]
        total = 0.0
        for b, mean in enumerate(means):
            neighbours = means[max(b - 1, 0) : b + 2]
            total += 32 * (mean - min(neighbours))
        totals.append(total)
    return np.where(data.valid, np.float32(totals), np.float32(np.nan))


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_every_field(map_path: Path) -> None:
    rows = [0, 1, 3, 2, 5, 4]  # any order: a row is stored at its own index
    write_map(map_path, rows)
    with MapReader(map_path) as reader:
        assert reader.shape == (SPEC.ny, SPEC.nx)
        assert not reader.opened_as_swmr  # a cleanly closed file opens normally
        np.testing.assert_array_equal(reader.primary_wavelength_nm, SPEC.primary_wavelength_nm)
        np.testing.assert_array_equal(
            reader.secondary_wavelength_nm, SPEC.secondary_wavelength_nm
        )
        np.testing.assert_array_equal(reader.x_um, SPEC.x_um)
        np.testing.assert_array_equal(reader.y_um, SPEC.y_um)
        assert reader.status == "complete"
        assert reader.status_reason == ""
        assert reader.lines_done.dtype == bool and reader.lines_done.all()
        assert reader.n_lines_done == SPEC.ny
        assert reader.settings == SPEC.settings
        meta = reader.metadata
        assert meta["sample"] == "pegmatite PG-7, polished"
        assert meta["operator"] == "Zoë"
        assert meta["scan_config"].startswith("[raster]\nnx = 24")
        assert meta["software_version"] == "0.1.0-test"
        assert meta["raster_order"] == "snake-horizontal"
        assert meta["format_version"] == FORMAT_VERSION
        start = datetime.fromisoformat(meta["start_time"])
        end = datetime.fromisoformat(meta["end_time"])
        assert start.tzinfo is not None and start <= end
        assert reader.has_truth
        assert reader.mineral_names == list(SPEC.minerals)
        assert reader.truth_elements == list(SPEC.elements)
        for iy in range(SPEC.ny):
            written, read = make_line(iy), reader.read_line(iy)
            assert lines_equal(read, written), f"line {iy} differs after the round trip"
            for system in ("primary", "secondary"):
                np.testing.assert_allclose(
                    reader.emissivity(system)[iy], expected_emissivity(written, system),
                    rtol=1e-5,
                )
        assert np.isnan(reader.emissivity("primary")).any()  # some invalid spots exist


@pytest.mark.parametrize(
    ("compression", "filter_ids"),
    [("lz4", [32001]), ("zstd", [32015]), ("gzip", [2, 1]), (None, [])],  # 2 shuffle, 1 deflate
)
def test_compression_options_round_trip(
    map_path: Path, compression: str | None, filter_ids: list[int]
) -> None:
    write_map(map_path, [0, 1], compression=compression)
    with h5py.File(map_path, "r") as f:
        plist = f["map/primary/spectra"].id.get_create_plist()
        assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == filter_ids
    with MapReader(map_path) as reader:
        assert lines_equal(reader.read_line(1), make_line(1))
        assert reader.lines_done.tolist() == [True, True, False, False, False, False]


def test_map_without_truth(map_path: Path) -> None:
    write_map(map_path, [0], truth_elements=None, mineral_names=None)
    with MapReader(map_path) as reader:
        assert not reader.has_truth
        assert reader.mineral_names == [] and reader.truth_elements == []
        line = reader.read_line(0)
        assert line.truth is None and lines_equal(line, make_line(0, truth=False))


def test_nexus_default_chain_leads_to_plottable_nxdata(map_path: Path) -> None:
    write_map(map_path, [0])
    with h5py.File(map_path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot"
        assert f.attrs["plumelink_format"] == FORMAT_VERSION
        entry = f[f.attrs["default"]]
        assert entry.attrs["NX_class"] == "NXentry"
        data = entry[entry.attrs["default"]]
        assert data.attrs["NX_class"] == "NXdata"
        signal_name = data.attrs["signal"]
        axes = list(data.attrs["axes"])
        assert data[signal_name].shape == (SPEC.ny, SPEC.nx)
        assert [data[a].shape for a in axes] == [(SPEC.ny,), (SPEC.nx,)]
        assert all(data[a].shape == (SPEC.ny, SPEC.nx) for a in data.attrs["auxiliary_signals"])
        classes = {name: f[f"map/{name}"].attrs["NX_class"] for name in
                   ("instrument", "primary", "secondary", "raster", "truth")}
        assert classes == {
            "instrument": "NXinstrument", "primary": "NXdetector", "secondary": "NXdetector",
            "raster": "NXcollection", "truth": "NXcollection",
        }
        assert f["map/primary/wavelength"].attrs["units"] == "nm"
        assert f["map/primary/spectra"].attrs["units"] == "counts"
        assert f["map/primary/spectra"].chunks == (1, SPEC.nx, SPEC.n_primary)
        assert f["map/secondary/timestamp"].attrs["units"] == "s"
        assert f["map/raster/x"].attrs["units"] == "um"
        assert f["map/truth/composition"].attrs["units"] == "wt%"
        assert f["map/instrument/laser"].attrs["energy_mJ"] == 50


def test_fill_values_of_unwritten_lines(map_path: Path) -> None:
    write_map(map_path, [1])
    with MapReader(map_path) as reader:
        line = reader.read_line(0)
        assert not line.primary.valid.any() and not line.primary.spectra.any()
        assert (line.shot_id == -1).all() and (line.primary.frame_id == -1).all()
        assert np.isnan(line.x_measured_um).all() and np.isnan(line.primary.timestamp_s).all()
        assert (line.truth is not None) and (line.truth.mineral == -1).all()
        assert np.isnan(reader.emissivity("secondary")[0]).all()


def test_iter_blocks_reads_done_lines_in_bounded_blocks(map_path: Path) -> None:
    rows = [0, 1, 2, 4]  # line 3 and 5 missing: blocks must skip them
    write_map(map_path, rows)
    lines = {iy: make_line(iy) for iy in rows}
    with MapReader(map_path) as reader:
        for valid_only in (True, False):
            blocks = list(reader.iter_blocks("secondary", block_spots=50, valid_only=valid_only))
            assert all(len(index) <= 50 for _, index in blocks)
            spectra = np.concatenate([b for b, _ in blocks])
            index = np.concatenate([i for _, i in blocks])
            assert spectra.dtype == np.float32 and index.dtype == np.int64
            expected_index, expected_spectra = [], []
            for iy in rows:
                keep = lines[iy].secondary.valid if valid_only else np.ones(SPEC.nx, bool)
                expected_index.append(iy * SPEC.nx + np.flatnonzero(keep))
                expected_spectra.append(lines[iy].secondary.spectra[keep])
            np.testing.assert_array_equal(index, np.concatenate(expected_index))
            np.testing.assert_array_equal(spectra, np.concatenate(expected_spectra))
        with pytest.raises(ValueError, match="unknown system"):
            next(reader.iter_blocks("tertiary"))


def test_append_line_does_not_walk_the_tree(
    map_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = []
    original = h5py.Group.__getitem__

    def counting(self: h5py.Group, name: Any) -> Any:
        lookups.append(name)
        return original(self, name)

    with create_map(map_path) as writer:
        monkeypatch.setattr(h5py.Group, "__getitem__", counting)
        writer.append_line(make_line(0))
        monkeypatch.undo()
    assert lookups == []


# --- the SWMR reader and crashes -----------------------------------------------------------


def _start(args: list[str], stderr_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("w"),
        text=True,
    )


def _read_reply(process: subprocess.Popen[str], stderr_path: Path) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT_S)
    reply = process.stdout.readline() if ready else ""
    assert reply, f"worker gave no reply; its stderr:\n{stderr_path.read_text()}"
    return reply


def test_swmr_reader_in_other_process_sees_lines_appear(map_path: Path, tmp_path: Path) -> None:
    stderr_path = tmp_path / "reader.err"
    writer = create_map(map_path)
    reader = _start(["follow", str(map_path)], stderr_path)
    try:
        assert reader.stdin is not None

        def ask() -> dict[str, Any]:
            assert reader.stdin is not None
            reader.stdin.write("check\n")
            reader.stdin.flush()
            return json.loads(_read_reply(reader, stderr_path))

        first = json.loads(_read_reply(reader, stderr_path))
        assert first == {"done": [], "equal": True, "status": "running"}
        for iy in range(SPEC.ny):
            writer.append_line(make_line(iy))
            report = ask()
            assert report["done"] == list(range(iy + 1))
            assert report["equal"], f"reader saw wrong data after line {iy}"
            assert report["status"] == "running"
        writer.close()
        assert ask() == {"done": list(range(SPEC.ny)), "equal": True, "status": "complete"}
        reader.stdin.write("quit\n")
        reader.stdin.flush()
        assert reader.wait(TIMEOUT_S) == 0, stderr_path.read_text()
    finally:
        writer.close()
        if reader.poll() is None:
            reader.kill()
            reader.wait()


@pytest.mark.parametrize("how", ["self-mid-line", "from-outside"])
def test_writer_killed_mid_map_leaves_readable_file(
    map_path: Path, tmp_path: Path, how: str
) -> None:
    k = 3
    stderr_path = tmp_path / "writer.err"
    if how == "self-mid-line":
        process = _start(["write-and-die", str(map_path), str(k)], stderr_path)
    else:
        process = _start(["write-and-wait", str(map_path), str(k)], stderr_path)
        assert _read_reply(process, stderr_path) == "ready\n"
        process.kill()
    assert process.wait(TIMEOUT_S) == -signal.SIGKILL, stderr_path.read_text()

    with MapReader(map_path) as reader:
        assert reader.opened_as_swmr  # the killed SWMR writer left its mark
        assert reader.status == "running"
        assert reader.metadata["end_time"] == ""
        assert reader.lines_done.tolist() == [True] * k + [False] * (SPEC.ny - k)
        for iy in range(k):
            assert lines_equal(reader.read_line(iy), make_line(iy)), f"line {iy} damaged"
        indices = np.concatenate([i for _, i in reader.iter_blocks("primary")])
        assert indices.max() < k * SPEC.nx  # the line in flight is not served

    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(map_path.read_bytes()[: map_path.stat().st_size * 9 // 10])
    with pytest.raises(CorruptMapError, match="truncated"):
        MapReader(damaged)


def test_file_locked_by_another_writer(map_path: Path, tmp_path: Path) -> None:
    stderr_path = tmp_path / "holder.err"
    holder = _start(["hold-open", str(map_path)], stderr_path)
    try:
        assert _read_reply(holder, stderr_path) == "ready\n"
        with pytest.raises(MapBusyError, match="locked by a program writing it"):
            MapReader(map_path)
    finally:
        holder.kill()
        holder.wait()


def test_readers_of_one_file_share_it_until_the_last_closes(map_path: Path) -> None:
    write_map(map_path, [0, 1])
    first, second = MapReader(map_path), MapReader(map_path)
    first.close()
    first.close()  # idempotent
    with pytest.raises(MapFileError, match="closed"):
        first.read_line(0)
    assert lines_equal(second.read_line(1), make_line(1))  # still open for the other reader
    del second  # dropped without close(): the file must still be released
    gc.collect()
    create_map(map_path, overwrite=True).close()  # fails if any handle were left open


# --- writer lifetime -----------------------------------------------------------------------


def test_exception_inside_writer_context_marks_interrupted(map_path: Path) -> None:
    with pytest.raises(RuntimeError, match="stage lost"), create_map(map_path) as writer:
        writer.append_line(make_line(0))
        raise RuntimeError("stage lost its reference position")
    assert writer.closed
    with MapReader(map_path) as reader:
        assert reader.status == "interrupted"
        assert reader.status_reason == "RuntimeError: stage lost its reference position"
        assert reader.metadata["end_time"] != ""
        assert reader.n_lines_done == 1


def test_close_is_idempotent_and_append_after_close_fails(map_path: Path) -> None:
    writer = create_map(map_path)
    writer.close("interrupted", "operator pressed stop " + "é" * 3000)
    writer.close()  # second close changes nothing
    with pytest.raises(MapFileError, match="closed"):
        writer.append_line(make_line(0))
    with MapReader(map_path) as reader:
        assert reader.status == "interrupted"
        reason = reader.status_reason
        assert reason.startswith("operator pressed stop é") and len(reason.encode()) <= 2048
        assert "\ufffd" not in reason  # cut on a character boundary
    with pytest.raises(ValueError, match="close status"):
        create_map(map_path, overwrite=True).close("running")


def test_create_refuses_to_overwrite(map_path: Path) -> None:
    write_map(map_path, [0])
    with pytest.raises(FileExistsError, match="already exists"):
        create_map(map_path)
    with MapReader(map_path) as reader:
        assert reader.n_lines_done == 1  # untouched
    create_map(map_path, overwrite=True).close()
    with MapReader(map_path) as reader:
        assert reader.n_lines_done == 0


def test_bad_settings_leave_no_file(map_path: Path) -> None:
    with pytest.raises(ValueError, match=r"settings\.laser\.pulse"):
        create_map(map_path, settings={"laser": {"pulse": object()}})
    assert not map_path.exists()
    with pytest.raises(ValueError, match="mixed"):
        create_map(map_path, settings={"mixed": [1, "a"]})
    with pytest.raises(ValueError, match="x_um must have 24 values"):
        create_map(map_path, x_um=np.arange(5.0))
    assert not map_path.exists()


# --- clear errors ----------------------------------------------------------------------------


def test_foreign_hdf5_file(map_path: Path) -> None:
    with h5py.File(map_path, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(ForeignFileError, match="not a plumelink map") as info:
        MapReader(map_path)
    assert str(map_path) in str(info.value)


def test_newer_format_version(map_path: Path) -> None:
    write_map(map_path, [0])
    with h5py.File(map_path, "r+") as f:
        f.attrs["plumelink_format"] = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError, match="newer") as info:
        MapReader(map_path)
    assert str(map_path) in str(info.value)


def test_truncated_file(map_path: Path) -> None:
    write_map(map_path, list(range(SPEC.ny)), compression=None)
    size = map_path.stat().st_size
    with map_path.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptMapError, match="truncated") as info:
        MapReader(map_path)
    message = str(info.value)
    assert str(map_path) in message and "eof" in message  # h5py's own reason is included


def test_text_file_named_h5(map_path: Path) -> None:
    map_path.write_text("wavelength,counts\n250.0,12\n")
    with pytest.raises(CorruptMapError, match="not an HDF5 file") as info:
        MapReader(map_path)
    assert str(map_path) in str(info.value)


def test_missing_file(map_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MapReader(map_path)


def _with(line: RasterLine, **changes: Any) -> RasterLine:
    fields = {name: getattr(line, name) for name in line.__dataclass_fields__}
    fields.update(changes)
    return RasterLine(**fields)


def test_lines_that_do_not_fit_are_rejected(map_path: Path) -> None:
    line = make_line(0)
    short = make_line(0, spec=type(SPEC)(nx=SPEC.nx - 1))
    narrow = SystemLine(
        spectra=line.primary.spectra[:, :-1].copy(), valid=line.primary.valid,
        frame_id=line.primary.frame_id, timestamp_s=line.primary.timestamp_s,
    )
    with create_map(map_path) as writer:
        with pytest.raises(MapShapeError, match=r"23 spots but map file .* has 24"):
            writer.append_line(short)
        with pytest.raises(MapShapeError, match="primary spectra have 95 pixels"):
            writer.append_line(_with(line, primary=narrow))
        with pytest.raises(MapShapeError, match=r"line index 6 is outside .* rows 0\.\.5"):
            writer.append_line(_with(make_line(5), index=6))
        with pytest.raises(MapShapeError, match="setpoints do not match"):
            writer.append_line(_with(line, y_um=line.y_um + 25.0))
        bad_truth = LineTruth(line.truth.mineral, np.zeros((SPEC.nx, 2), np.float32))
        with pytest.raises(MapShapeError, match="truth has 2 elements"):
            writer.append_line(_with(line, truth=bad_truth))
        assert not writer.lines_done.any()  # nothing was committed by a rejected line
        writer.append_line(line)
        with pytest.raises(MapFileError, match="already written"):
            writer.append_line(line)
    with (
        create_map(map_path, overwrite=True, truth_elements=None) as writer,
        pytest.raises(MapShapeError, match="without truth_elements"),
    ):
        writer.append_line(line)
    with MapReader(map_path) as reader, pytest.raises(MapShapeError, match="outside"):
        reader.read_line(SPEC.ny)


def test_raster_line_checks_dtypes_and_shapes() -> None:
    line = make_line(0)
    with pytest.raises(ValueError, match=r"SystemLine\.spectra must have dtype uint16, got float"):
        SystemLine(
            spectra=line.primary.spectra.astype(np.float64), valid=line.primary.valid,
            frame_id=line.primary.frame_id, timestamp_s=line.primary.timestamp_s,
        )
    with pytest.raises(ValueError, match=r"SystemLine\.valid must have shape \(24\), got \(23,\)"):
        SystemLine(
            spectra=line.primary.spectra, valid=line.primary.valid[:-1],
            frame_id=line.primary.frame_id, timestamp_s=line.primary.timestamp_s,
        )
    with pytest.raises(ValueError, match=r"RasterLine\.shot_id must have dtype int64"):
        _with(line, shot_id=line.shot_id.astype(np.int32))
    with pytest.raises(ValueError, match=r"RasterLine\.secondary has 23 spots but x_um has 24"):
        _with(line, secondary=make_line(0, spec=type(SPEC)(nx=23)).secondary)
    with pytest.raises(ValueError, match=r"RasterLine\.index must be >= 0"):
        _with(line, index=-1)
    with pytest.raises(ValueError, match=r"LineTruth\.composition must have shape \(24, any\)"):
        LineTruth(line.truth.mineral, line.truth.composition[:3])
    with pytest.raises(ValueError, match="must be a numpy array"):
        _with(line, x_um=list(line.x_um))
    assert isinstance(_with(line, index=np.int64(2)).index, int)
    with pytest.raises(ValueError, match=r"SystemLine\.emissivity must have dtype float32"):
        SystemLine(
            spectra=line.primary.spectra, valid=line.primary.valid,
            frame_id=line.primary.frame_id, timestamp_s=line.primary.timestamp_s,
            emissivity=np.zeros(24),
        )


def test_system_line_computes_its_emissivity_once_where_built() -> None:
    line = make_line(1)
    np.testing.assert_allclose(line.primary.emissivity, expected_emissivity(line, "primary"),
                               rtol=1e-5)
    given = np.arange(24, dtype=np.float32)
    kept = SystemLine(spectra=line.primary.spectra, valid=line.primary.valid,
                      frame_id=line.primary.frame_id, timestamp_s=line.primary.timestamp_s,
                      emissivity=given)
    assert kept.emissivity is given


def _as_float(system: SystemLine, offset: float) -> SystemLine:
    return SystemLine(
        spectra=system.spectra.astype(np.float32) - np.float32(offset), valid=system.valid,
        frame_id=system.frame_id, timestamp_s=system.timestamp_s,
    )


def test_float32_maps_hold_imported_intensities_exactly(map_path: Path) -> None:
    """Processed data (negative, fractional) round-trip; counts maps refuse them."""
    line = make_line(0, truth=False)
    floats = _with(line, primary=_as_float(line.primary, 100.25),
                   secondary=_as_float(line.secondary, 0.5))
    with create_map(map_path, truth_elements=None, mineral_names=None,
                    spectra_dtype="float32") as writer:
        writer.append_line(floats)
        with pytest.raises(MapShapeError, match=r"spectra are uint16 but .* stores float32"):
            writer.append_line(_with(line, index=1))
    with MapReader(map_path) as reader:
        read = reader.read_line(0)
    np.testing.assert_array_equal(read.primary.spectra, floats.primary.spectra)
    assert (read.primary.spectra < 0).any()
    np.testing.assert_allclose(read.primary.emissivity, floats.primary.emissivity, rtol=1e-5)
    with pytest.raises(ValueError, match="spectra_dtype must be one of"):
        create_map(map_path.with_name("other.h5"), spectra_dtype="float64")


def test_float32_emissivity_is_the_float64_sum_to_float32_rounding() -> None:
    """Float spectra (a transfer's) are summed in float32: within a few ulps of the block
    sums, on spectra with a large offset where a careless accumulation would drift."""
    rng = np.random.default_rng(3)
    spectra = (rng.normal(30_000, 3_000, (40, 4062))
               + 2e4 * (rng.random((40, 4062)) > 0.99)).astype(np.float32)
    line = SystemLine(spectra=spectra, valid=np.ones(40, bool),
                      frame_id=np.zeros(40, np.int64), timestamp_s=np.zeros(40))
    data = spectra.astype(np.float64)[:, : 4062 - 4062 % 32].reshape(40, -1, 32).mean(axis=2)
    padded = np.pad(data, ((0, 0), (1, 1)), mode="edge")
    floor = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    reference = 32 * (data - floor).sum(axis=1)
    # float32 block sums (<= 31 ulps each) and a float32 total (~2e6, ulp 0.25): measured
    # 7e-7 relative at most
    np.testing.assert_allclose(line.emissivity, reference, rtol=2e-6)
    assert (line.emissivity > 1e5).all()  # the lines above the floor are counted


def test_emissivity_of_spectra_shorter_than_a_block() -> None:
    spectra = np.array([[10, 10, 50, 10], [10, 10, 10, 10]], dtype=np.uint16)
    line = SystemLine(spectra=spectra, valid=np.array([True, False]),
                      frame_id=np.zeros(2, np.int64), timestamp_s=np.zeros(2))
    assert line.emissivity[0] == 0.0  # one block: its own baseline
    assert np.isnan(line.emissivity[1])


@pytest.mark.parametrize("how", ["killed", "closed-interrupted"])
def test_resume_finishes_an_interrupted_map(map_path: Path, tmp_path: Path, how: str) -> None:
    k = 2
    if how == "killed":
        stderr_path = tmp_path / "writer.err"
        process = _start(["write-and-die", str(map_path), str(k)], stderr_path)
        assert process.wait(TIMEOUT_S) == -signal.SIGKILL, stderr_path.read_text()
    else:
        writer = create_map(map_path)
        for iy in range(k):
            writer.append_line(make_line(iy))
        writer.close("interrupted", "stopped by the operator")
    with MapWriter.resume(map_path) as writer:
        assert writer.lines_done.tolist() == [True] * k + [False] * (SPEC.ny - k)
        with pytest.raises(MapFileError, match="already written"):
            writer.append_line(make_line(0))
        for iy in range(k, SPEC.ny):
            writer.append_line(make_line(iy))
    with MapReader(map_path) as reader:
        assert not reader.opened_as_swmr  # the mark is gone
        assert reader.status == "complete"
        assert reader.lines_done.all()
        for iy in range(SPEC.ny):
            assert lines_equal(reader.read_line(iy), make_line(iy)), f"line {iy} differs"
        assert reader.metadata["operator"] == "Zoë"  # metadata survived the repair
    with pytest.raises(MapFileError, match="all 6 lines are written"):
        MapWriter.resume(map_path)


def test_resume_refuses_missing_and_foreign_files(map_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such map file"):
        MapWriter.resume(map_path)
    with h5py.File(map_path, "w") as f:
        f["x"] = 1
    with pytest.raises(ForeignFileError, match="not a plumelink map"):
        MapWriter.resume(map_path)


def _column(ix: int, spec=SPEC) -> RasterLine:
    """Column ix of the synthetic map (spots in increasing y), taken from its rows."""
    rows = [make_line(iy) for iy in range(spec.ny)]

    def system(name: str) -> SystemLine:
        parts = [getattr(r, name) for r in rows]
        return SystemLine(spectra=np.stack([p.spectra[ix] for p in parts]),
                          valid=np.array([p.valid[ix] for p in parts]),
                          frame_id=np.array([p.frame_id[ix] for p in parts]),
                          timestamp_s=np.array([p.timestamp_s[ix] for p in parts]))

    def spot(name: str) -> np.ndarray:
        return np.array([getattr(r, name)[ix] for r in rows])

    truth = LineTruth(mineral=np.array([r.truth.mineral[ix] for r in rows]),
                      composition=np.stack([r.truth.composition[ix] for r in rows]))
    return RasterLine(index=ix, x_um=spot("x_um"), y_um=spot("y_um"),
                      x_measured_um=spot("x_measured_um"), y_measured_um=spot("y_measured_um"),
                      shot_id=spot("shot_id"), primary=system("primary"),
                      secondary=system("secondary"), truth=truth)


def test_vertical_map_written_by_columns_reads_back_by_rows(map_path: Path) -> None:
    """A vertical raster's lines are columns; the file keeps its (ny, nx) layout, rows are
    flagged done only once every column is there, and a resume continues by columns."""
    k = 5
    writer = create_map(map_path, raster_order="snake-vertical")
    assert writer.vertical
    with pytest.raises(MapFileError, match="columns"):
        writer.append_line(make_line(0))
    for ix in range(k):
        writer.append_column(_column(ix))
    with pytest.raises(MapShapeError, match="setpoints"):
        writer.append_column(_with(_column(k), x_um=np.full(SPEC.ny, 3.0)))
    assert not writer.lines_done.any()  # no row is whole yet
    writer.close("interrupted", "stopped")
    with MapReader(map_path) as reader:
        assert reader.shape == (SPEC.ny, SPEC.nx) and reader.n_lines_done == 0
        line = reader.read_line(1)
        np.testing.assert_array_equal(line.primary.spectra[:k], make_line(1).primary.spectra[:k])
        assert not line.primary.valid[k:].any()
    with MapWriter.resume(map_path) as writer:
        assert writer.raster_lines_done.tolist() == [True] * k + [False] * (SPEC.nx - k)
        with pytest.raises(MapFileError, match="already written"):
            writer.append_column(_column(0))
        for ix in range(k, SPEC.nx):
            writer.append_column(_column(ix))
    with MapReader(map_path) as reader:
        assert reader.status == "complete" and reader.lines_done.all()
        for iy in range(SPEC.ny):
            assert lines_equal(reader.read_line(iy), make_line(iy)), f"row {iy} differs"
    with h5py.File(map_path, "r") as f:
        assert f["map/columns_done"][()].all()
    with pytest.raises(MapFileError, match=f"all {SPEC.nx} lines are written"):
        MapWriter.resume(map_path)


def test_horizontal_map_refuses_columns(map_path: Path) -> None:
    with create_map(map_path) as writer:
        assert not writer.vertical
        with pytest.raises(MapFileError, match="horizontal"):
            writer.append_column(_column(0))
    with h5py.File(map_path, "r") as f:
        assert "columns_done" not in f["map"]  # horizontal maps are unchanged


def test_a_system_stored_its_own_way_keeps_its_dtype_and_filter(tmp_path: Path) -> None:
    """system_storage: float32 primary without a filter, uint16 secondary deflated (what a
    transferred map holds); each system's lines are checked against its own dtype."""
    path = tmp_path / "mixed.h5"
    line = make_line(0)
    primary = line.primary.spectra.astype(np.float32)
    mixed = RasterLine(index=0, x_um=line.x_um, y_um=line.y_um,
                       x_measured_um=line.x_measured_um, y_measured_um=line.y_measured_um,
                       shot_id=line.shot_id, primary=SystemLine(
                           spectra=primary, valid=line.primary.valid,
                           frame_id=line.primary.frame_id,
                           timestamp_s=line.primary.timestamp_s),
                       secondary=line.secondary, truth=line.truth)
    with create_map(path, compression=None, spectra_dtype="float32",
                    system_storage={"secondary": ("uint16", "gzip")}) as w:
        with pytest.raises(MapShapeError, match="secondary spectra are float32"):
            w.append_line(replace(mixed, secondary=SystemLine(
                spectra=line.secondary.spectra.astype(np.float32),
                valid=line.secondary.valid, frame_id=line.secondary.frame_id,
                timestamp_s=line.secondary.timestamp_s)))
        w.append_line(mixed)
    with h5py.File(path, "r") as f:
        p, s = f["map/primary/spectra"], f["map/secondary/spectra"]
        assert (p.dtype, p.compression, s.dtype, s.compression) == (
            np.float32, None, np.uint16, "gzip")
        np.testing.assert_array_equal(p[0], primary)
        np.testing.assert_array_equal(s[0], line.secondary.spectra)
    with pytest.raises(ValueError, match="system_storage names 'tertiary'"):
        create_map(tmp_path / "bad.h5", system_storage={"tertiary": ("uint16", None)})
    assert not (tmp_path / "bad.h5").exists()


# --- writing fast: direct row writes, the page cache ----------------------------------------


def test_row_writer_writes_plain_rows_directly_and_any_other_through_h5py(
        tmp_path: Path) -> None:
    from plumelink.pipeline.map_writer import _row_writer

    with h5py.File(tmp_path / "rows.h5", "w") as f:
        plain = {
            "valid": f.create_dataset("valid", (3, 5), bool, chunks=(1, 5)),
            "frame_id": f.create_dataset("frame_id", (3, 5), "<i8", chunks=(1, 5), fillvalue=-1),
            "timestamp": f.create_dataset("timestamp", (3, 5), "<f8", chunks=(1, 5)),
            "big_endian": f.create_dataset("big_endian", (3, 5), ">f4", chunks=(1, 5)),
            "composition": f.create_dataset("composition", (3, 5, 2), "<f4", chunks=(1, 5, 2)),
        }
        other = {
            "deflated": f.create_dataset("deflated", (3, 5), "<f8", chunks=(1, 5),
                                         compression="gzip"),
            "two_rows": f.create_dataset("two_rows", (3, 5), "<f8", chunks=(2, 5)),
        }
        values = {"valid": np.array([1, 0, 1, 1, 0], bool), "frame_id": np.arange(5) + 10,
                  "timestamp": np.linspace(0, 1, 5), "big_endian": np.arange(5) * 0.5,
                  "composition": np.arange(10, dtype=np.float32).reshape(5, 2),
                  "deflated": np.full(5, np.pi), "two_rows": np.arange(5) * 2.0}
        writers = {name: _row_writer(d) for name, d in {**plain, **other}.items()}
        for name, write in writers.items():
            write(1, values[name])
        writers["timestamp"](2, np.nan)  # a scalar fills the row
        for name, d in {**plain, **other}.items():
            np.testing.assert_array_equal(d[1], values[name].astype(d.dtype), err_msg=name)
        assert np.isnan(plain["timestamp"][2]).all()
        assert (plain["frame_id"][0] == -1).all()  # other rows untouched
        direct = [name for name, w in writers.items() if w.__name__ == "write_direct"]
    assert sorted(direct) == sorted(plain)  # the filtered and the 2-row chunks: h5py


def _resident_pages(path: Path) -> int:
    """Pages of the file in the page cache (mincore on a private mapping)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        page = mmap.PAGESIZE
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        buffer = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(buffer)), ctypes.c_size_t(size),
                            vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del buffer
        return sum(v & 1 for v in vec)
    finally:
        mapped.close()


def _on_tmpfs(path: Path) -> bool:
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    best = max((m for m in mounts if str(path.resolve()).startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return best is not None and best[2] in ("tmpfs", "ramfs")


@pytest.mark.skipif(sys.platform != "linux", reason="posix_fadvise and mincore: Linux")
def test_release_written_pages_drops_the_written_file_from_the_page_cache(
        map_path: Path) -> None:
    if _on_tmpfs(map_path):
        pytest.skip("a tmpfs file lives in the page cache")
    writer = create_map(map_path)
    for iy in range(SPEC.ny):
        writer.append_line(make_line(iy))
    with map_path.open("rb") as f:
        os.fsync(f.fileno())  # written back, so that the advice can drop the pages
    before = _resident_pages(map_path)
    writer.release_written_pages()
    after = _resident_pages(map_path)
    writer.close()
    writer.release_written_pages()  # closed: nothing to do, no error
    assert before > 0 and after < before / 4, (before, after)
    with MapReader(map_path) as reader:  # the data are all there, read back from disk
        for iy in range(SPEC.ny):
            assert lines_equal(reader.read_line(iy), make_line(iy))
