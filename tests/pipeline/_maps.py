"""Seeded synthetic maps for the map store tests, and the worker processes they start.

Run as a script it is the "other process" of the SWMR tests:
  python _maps.py follow PATH           follow a growing map; answer each stdin line with a
                                        JSON report of what is visible and whether it is right
  python _maps.py write-and-die PATH K  write K lines, then SIGKILL itself while committing
                                        line K (data flushed, completion flag not yet set)
  python _maps.py write-and-wait PATH K write K lines, print "ready", wait to be killed
  python _maps.py hold-open PATH        hold PATH open for writing without SWMR until stdin ends
Every process regenerates the same lines from the same seed, so the reader can check them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.map_writer import MapWriter
from plumelink.pipeline.raster_line import LineTruth, RasterLine, SystemLine

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class MapSpec:
    """Shape and content of a small synthetic map."""

    ny: int = 6
    nx: int = 24
    n_primary: int = 96
    n_secondary: int = 40
    seed: int = 20230841
    elements: tuple[str, ...] = ("Si", "Al", "Li")
    minerals: tuple[str, ...] = ("quartz", "albite", "spodumene", "lepidolite")
    settings: dict[str, Any] = field(
        default_factory=lambda: {
            "laser": {"wavelength_nm": 1064.0, "energy_mJ": 50, "model": "Quantel Q-smart"},
            "delay_generator": {"delays_s": [0.0, 1.0e-6], "burst": True, "comment": None},
            "stage": {"axes": ["x", "y"], "speed_um_s": 2000.0, "limits": {"x_um": [0, 5e4]}},
            "primary": {"integration_s": 1.05e-3, "gate_delay_s": 5e-7},
            "operator_note": "Ångström test, 2 µm spot",
        }
    )

    @property
    def x_um(self) -> np.ndarray:
        return 100.0 + 25.0 * np.arange(self.nx)

    @property
    def y_um(self) -> np.ndarray:
        return -50.0 + 25.0 * np.arange(self.ny)

    @property
    def primary_wavelength_nm(self) -> np.ndarray:
        return np.linspace(243.0, 410.0, self.n_primary)

    @property
    def secondary_wavelength_nm(self) -> np.ndarray:
        return np.linspace(385.0, 400.0, self.n_secondary)


SPEC = MapSpec()


def create_map(path: Path, spec: MapSpec = SPEC, **overrides: Any) -> MapWriter:
    kwargs: dict[str, Any] = {
        "ny": spec.ny,
        "nx": spec.nx,
        "primary_wavelength_nm": spec.primary_wavelength_nm,
        "secondary_wavelength_nm": spec.secondary_wavelength_nm,
        "x_um": spec.x_um,
        "y_um": spec.y_um,
        "sample": "pegmatite PG-7, polished",
        "operator": "Zoë",
        "scan_config_toml": '[raster]\nnx = 24\nny = 6\nstep_um = 25.0\nname = "grid"\n',
        "raster_order": "snake-horizontal",
        "settings": spec.settings,
        "truth_elements": list(spec.elements),
        "mineral_names": list(spec.minerals),
        "software_version": "0.1.0-test",
    }
    kwargs.update(overrides)
    return MapWriter.create(path, **kwargs)


def _system(rng: np.random.Generator, nx: int, n_px: int, first_frame: int) -> SystemLine:
    valid = rng.random(nx) > 0.15
    spectra = rng.integers(0, 65535, size=(nx, n_px), dtype=np.uint16, endpoint=True)
    frame_id = np.where(valid, first_frame + np.arange(nx), -1).astype(np.int64)
    timestamp = np.where(valid, first_frame * 0.1 + 0.1 * np.arange(nx), np.nan)
    return SystemLine(spectra=spectra, valid=valid, frame_id=frame_id, timestamp_s=timestamp)


def make_line(iy: int, spec: MapSpec = SPEC, truth: bool = True) -> RasterLine:
    """Line iy of the synthetic map; the same (spec, iy) always gives the same data."""
    rng = np.random.default_rng([spec.seed, iy])
    nx = spec.nx
    x, y = spec.x_um, np.full(nx, spec.y_um[iy])
    line_truth = None
    if truth:
        line_truth = LineTruth(
            mineral=rng.integers(0, len(spec.minerals), nx).astype(np.int16),
            composition=rng.uniform(0, 50, (nx, len(spec.elements))).astype(np.float32),
        )
    return RasterLine(
        index=iy,
        x_um=x,
        y_um=y,
        x_measured_um=x + rng.normal(0, 0.2, nx),
        y_measured_um=y + rng.normal(0, 0.2, nx),
        shot_id=np.arange(iy * nx, (iy + 1) * nx, dtype=np.int64),
        primary=_system(rng, nx, spec.n_primary, iy * nx),
        secondary=_system(rng, nx, spec.n_secondary, iy * nx + 7),
        truth=line_truth,
    )


def lines_equal(a: RasterLine, b: RasterLine) -> bool:
    """Every field equal (NaN equal to NaN)."""
    pairs = [
        (a.x_um, b.x_um), (a.y_um, b.y_um), (a.x_measured_um, b.x_measured_um),
        (a.y_measured_um, b.y_measured_um), (a.shot_id, b.shot_id),
    ]
    for sa, sb in ((a.primary, b.primary), (a.secondary, b.secondary)):
        pairs += [
            (sa.spectra, sb.spectra), (sa.valid, sb.valid), (sa.frame_id, sb.frame_id),
            (sa.timestamp_s, sb.timestamp_s), (sa.emissivity, sb.emissivity),
        ]
    if (a.truth is None) != (b.truth is None):
        return False
    if a.truth is not None and b.truth is not None:
        pairs += [(a.truth.mineral, b.truth.mineral), (a.truth.composition, b.truth.composition)]
    return a.index == b.index and all(
        x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        for x, y in pairs
    )


def _report(readers: list[MapReader]) -> dict[str, Any]:
    """What the readers see; "equal" only if every reader sees every done line right."""
    done = [int(i) for i in np.flatnonzero(readers[0].lines_done)]
    return {
        "done": done,
        "equal": all(
            reader.lines_done.tolist() == readers[0].lines_done.tolist()
            and all(lines_equal(reader.read_line(i), make_line(i)) for i in done)
            for reader in readers
        ),
        "status": readers[0].status,
    }


def _follow(path: str) -> None:
    # Two readers of one file in one process, as a GUI with two views would have.
    with MapReader(path, follow=True) as first, MapReader(path, follow=True) as second:
        readers = [first, second]
        sys.stdout.write(json.dumps(_report(readers)) + "\n")
        sys.stdout.flush()
        for command in sys.stdin:
            if command.strip() == "quit":
                return
            for reader in readers:
                reader.refresh()
            sys.stdout.write(json.dumps(_report(readers)) + "\n")
            sys.stdout.flush()


def _write_k(path: str, k: int) -> MapWriter:
    writer = create_map(Path(path))
    for iy in range(k):
        writer.append_line(make_line(iy))
    return writer


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "follow":
        _follow(path)
    elif mode == "write-and-die":
        writer = _write_k(path, int(argv[2]))
        # Die between the data flush and the completion flag of the next line.
        writer._mark_done = lambda iy: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
        writer.append_line(make_line(int(argv[2])))
    elif mode == "hold-open":  # a non-SWMR writer that keeps the file locked
        with h5py.File(path, "w"):
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            sys.stdin.readline()
    elif mode == "write-and-wait":
        writer = _write_k(path, int(argv[2]))  # keep it referenced: GC would close the file
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        writer.close()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
