"""Scan files and bench profiles on the simulated bench, shared by the acquisition tests
(engine, `plumelink acquire`, GUI): one text to keep in step with the scan format."""

from __future__ import annotations

import textwrap
from pathlib import Path

from plumelink.drivers.bench import write_simulated_profile


def simulated_bench_profile(folder: Path, speedup: float = 100.0) -> Path:
    """The shipped simulated profile with simulated time ``speedup`` x faster than real."""
    return write_simulated_profile(folder, speedup)


def step_scan_text(bench: Path, out: Path, *, ny: int, nx: int,
                   origin_um: tuple[float, float] = (1000.0, 2000.0), step: str = "40.0",
                   shots: int = 1, reshoot: bool = False,
                   sample: str = "pegmatite test piece") -> str:
    """A step-and-shoot scan of ny x nx spots 40 µm apart (``step`` may be set to a bad value
    for error tests; the region stays sized for 40 µm)."""
    return textwrap.dedent(f"""\
        sample = "{sample}"
        operator = "pytest"
        bench = "{bench}"
        output = "{out}"
        reshoot_invalid = {str(reshoot).lower()}
        [region]
        origin_um = [{origin_um[0]}, {origin_um[1]}]
        size_um = [{40.0 * nx}, {40.0 * ny}]
        step_um = {step}
        [acquisition]
        mode = "step"
        shots_per_spot = {shots}
        [stage]
        speed_um_s = 10000.0
        settle_s = 0.01
        [ddg]
        laser_delay_s = 180e-6
        spectrometer_delay_s = 1e-6
        gate_s = 10e-6
        [spectrometers.primary]
        integration_time_s = 1.05e-3
        [spectrometers.secondary]
        integration_time_s = 1.05e-3
        """)
