"""Simulated data sets: train, validation and test maps of one pegmatite sample.

The three maps are three separate regions of one simulated sample, measured with the same
two spectrometers; the test map is measured on another day (shifted baseline and
wavelength calibration), as in Vrábel et al. (JAAS 2023). This is the data every demo and
test of plumelink starts from.

The primary is always the "primary" instrument profile; which profile plays the secondary is
a choice (`secondary=`, default "secondary"; e.g. "broadband_ccd" for a third system that
joins an existing model). Its spectra go to the map's /map/secondary group with its own
wavelength axis, and the settings snapshot names the profile (settings["secondary"]["profile"]
and settings["simulation"]["secondary_profile"]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumelink.drivers.sim.physics import BenchPhysics, ShotBlock
from plumelink.drivers.sim.sample import REGION_ORIGINS_UM, SPOT_DIAMETER_UM

from .map_writer import DEFAULT_COMPRESSION, MapWriter
from .raster import RasterGrid
from .raster_line import LineTruth, RasterLine, SystemLine

log = logging.getLogger(__name__)

LASER_RATE_HZ = 50.0
STAGE_JITTER_UM = 0.3  # encoder-measured deviation of the stage from its setpoint
DEFAULT_SECONDARY = "secondary"  # instrument profile that plays the secondary system


@dataclass(frozen=True)
class MapSpec:
    """One map of a preset: its region of the sample and its measurement day."""

    name: str
    ny: int
    nx: int
    day: int


@dataclass(frozen=True)
class Preset:
    name: str
    step_um: float
    maps: tuple[MapSpec, ...]

    @property
    def n_spots(self) -> int:
        return sum(m.ny * m.nx for m in self.maps)


def _preset(name: str, step: float, train: tuple, val: tuple, test: tuple) -> Preset:
    return Preset(
        name,
        step,
        (
            MapSpec("train", *train, day=0),
            MapSpec("val", *val, day=0),
            MapSpec("test", *test, day=1),
        ),
    )


# Map sizes are ny x nx (raster lines x spots per line); `paper` is the paper's.
PRESETS: dict[str, Preset] = {
    "tiny": _preset("tiny", 40.0, (12, 16), (6, 16), (8, 16)),
    "small": _preset("small", 40.0, (60, 60), (30, 40), (50, 50)),
    "paper": _preset("paper", 25.0, (560, 560), (266, 500), (500, 500)),
}

ProgressCallback = Callable[[int, int], None]  # (spots done, spots total)


def secondary_profile_of(physics: BenchPhysics) -> str:
    """Name of the instrument profile that plays the secondary system of a bench."""
    others = [name for name in physics.spectrographs if name != "primary"]
    if "primary" not in physics.spectrographs or len(others) != 1:
        raise ValueError(f"a simulated map needs the primary and exactly one secondary "
                         f"spectrometer; the bench has {list(physics.spectrographs)}")
    return others[0]


def make_physics(seed: int, day: int, run: int, secondary: str = DEFAULT_SECONDARY
                 ) -> BenchPhysics:
    """The bench of one map: the primary and the profile named `secondary` on one plume."""
    if not isinstance(secondary, str) or not secondary or secondary == "primary":
        raise ValueError(f"the secondary system must be an instrument profile other than "
                         f"the primary, got {secondary!r}")
    return BenchPhysics(seed=seed, day=day, run=run, systems=("primary", secondary))


def bench_settings(physics: BenchPhysics, grid: RasterGrid, spec: MapSpec, seed: int) -> dict:
    """The settings snapshot of the simulated bench, stored in each map file."""
    secondary = secondary_profile_of(physics)
    return {
        "laser": {"wavelength_nm": 266.0, "rate_hz": LASER_RATE_HZ, "spot_diameter_um": 30.0},
        "delay_generator": {"model": "simulated DG645", "burst_period_s": 1 / LASER_RATE_HZ},
        "stage": {"model": "simulated XY stage", "step_um": grid.step_um,
                  "origin_um": list(grid.origin_um)},
        "primary": physics.spectrographs["primary"].profile.as_settings(),
        "secondary": physics.spectrographs[secondary].profile.as_settings(),
        "simulation": {
            "seed": seed, "day": spec.day, "region": spec.name,
            "spot_diameter_um": SPOT_DIAMETER_UM, "secondary_profile": secondary,
        },
    }


def simulate_lines(
    physics: BenchPhysics, grid: RasterGrid, *, truth: bool = False, start_line: int = 0
) -> Iterator[RasterLine]:
    """Shoot a raster line by line and yield each as a RasterLine in storage order."""
    jitter_rng = np.random.default_rng([physics.seed, 5, physics.day, start_line])
    secondary = secondary_profile_of(physics)
    for iy in range(start_line, grid.ny):
        cols = grid.columns_in_shot_order(iy)
        x_set = grid.x_um[cols]
        y_set = np.full(grid.nx, grid.y_um[iy])
        x_meas = x_set + STAGE_JITTER_UM * jitter_rng.standard_normal(grid.nx)
        y_meas = y_set + STAGE_JITTER_UM * jitter_rng.standard_normal(grid.nx)
        block = physics.shoot(x_meas, y_meas)
        yield _to_line(iy, cols, block, x_set, y_set, truth, secondary)


def _to_line(
    iy: int, cols: np.ndarray, block: ShotBlock, x_set: np.ndarray, y_set: np.ndarray,
    truth: bool, secondary: str = DEFAULT_SECONDARY,
) -> RasterLine:
    order = np.argsort(cols)  # shot order -> storage column order

    def system(name: str) -> SystemLine:
        return SystemLine(
            spectra=block.spectra[name][order],
            valid=np.ones(cols.size, dtype=bool),
            frame_id=block.shot_id[order],
            timestamp_s=block.shot_id[order] / LASER_RATE_HZ,
        )

    return RasterLine(
        index=iy,
        x_um=x_set[order],
        y_um=y_set[order],
        x_measured_um=block.x_um[order],
        y_measured_um=block.y_um[order],
        shot_id=block.shot_id[order],
        primary=system("primary"),
        secondary=system(secondary),
        truth=LineTruth(block.truth.mineral[order], block.truth.composition_wt_pct[order])
        if truth
        else None,
    )


def simulate_map(
    path: str | Path,
    spec: MapSpec,
    *,
    step_um: float,
    seed: int = 0,
    truth: bool = False,
    compression: str | None = DEFAULT_COMPRESSION,
    overwrite: bool = True,
    progress: ProgressCallback | None = None,
    secondary: str = DEFAULT_SECONDARY,
) -> Path:
    """Write one simulated map file, line by line; `secondary` names the secondary's profile."""
    physics = make_physics(seed, spec.day, _run_id(spec.name), secondary)
    grid = RasterGrid(spec.ny, spec.nx, step_um, origin_um=REGION_ORIGINS_UM[spec.name])
    settings = bench_settings(physics, grid, spec, seed)
    with MapWriter.create(
        path,
        ny=grid.ny,
        nx=grid.nx,
        primary_wavelength_nm=physics.wavelength_nm("primary"),
        secondary_wavelength_nm=physics.wavelength_nm(secondary),
        x_um=grid.x_um,
        y_um=grid.y_um,
        sample=f"simulated granitic pegmatite (seed {seed}), {spec.name} region",
        operator="plumelink simulator",
        raster_order=grid.order,
        settings=settings,
        compression=compression,
        truth_elements=list(physics.element_symbols) if truth else None,
        mineral_names=list(physics.mineral_names) if truth else None,
        overwrite=overwrite,
    ) as writer:
        for line in simulate_lines(physics, grid, truth=truth):
            writer.append_line(line)
            if progress is not None:
                progress(grid.nx, grid.n_spots)
    return Path(path)


def _run_id(map_name: str) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(map_name, 3)


def simulate_dataset(
    preset: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    truth: bool = False,
    compression: str | None = DEFAULT_COMPRESSION,
    progress: ProgressCallback | None = None,
    secondary: str = DEFAULT_SECONDARY,
) -> dict[str, Path]:
    """Write train.h5, val.h5 and test.h5 of a preset into out_dir; return their paths.

    `secondary` names the instrument profile of the secondary system ("secondary",
    "broadband_ccd" or a TOML path); the primary is always the "primary" profile.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    make_physics(seed, 0, 0, secondary)  # fail before writing anything on a bad profile
    spec = PRESETS[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = 0

    def count(n: int, _total: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, spec.n_spots)

    paths = {}
    for m in spec.maps:
        paths[m.name] = simulate_map(
            out / f"{m.name}.h5", m, step_um=spec.step_um, seed=seed, truth=truth,
            compression=compression, progress=count, secondary=secondary,
        )
        log.info("wrote %s (%d x %d spots, day %d)", paths[m.name], m.ny, m.nx, m.day)
    return paths
