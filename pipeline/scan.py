"""Scan files: a TOML description of one raster map, parsed into a frozen `ScanConfig`.

A scan is plain data (STYLE.md, the Bluesky idea): `load_scan` validates it without touching
hardware, `pipeline.plan.make_plan` turns it into the ordered raster lines, and the original
TOML text travels with the config (``ScanConfig.text``) so the map file can store it. Shipped
examples live in ``plumelink/resources/scans/`` (`example_scans`). The format::

    sample = "granitic pegmatite, slab 3"     # required, non-empty
    operator = "J. Doe"                       # required, non-empty
    bench = "simulated"                       # shipped profile name, or path to a profile TOML
    output = "out/slab3.h5"                   # .h5 / .hdf5 / .nxs
    reshoot_invalid = false                   # optional: re-shoot spots a spectrometer missed

    [region]
    origin_um = [0.0, 0.0]                    # (x, y) of the first spot
    size_um = [1600.0, 1600.0]                # (width, height): a whole number of steps each
    step_um = 40.0                            # spot pitch; spots at origin + i * step
    order = "snake-horizontal"                # | snake-vertical | plain-horizontal | plain-vertical

    [acquisition]
    mode = "step"                             # "step" (step-and-shoot) | "fly"
    shots_per_spot = 1                        # >= 1; must be 1 in fly mode
    line_overhead_s = 0.05                    # optional: arm, read, store per line (estimate)

    [fly]                                     # only (and optional) when mode = "fly"
    trigger = "ddg-clock"                     # | "stage-distance" (stage fires every step_um)
    speed_um_s = 25000.0                      # optional; ddg-clock: must be step_um * rate_hz
    run_up_um = 0.0                           # optional straight run before/after each line

    [laser]
    rate_hz = 1000.0                          # optional; default: the bench profile's rate

    [stage]                                   # optional table
    speed_um_s = 10000.0                      # moves between spots / lines; max fly speed
    settle_s = 0.02                           # wait after each move (step mode, line starts)

    [ddg]                                     # seconds, all required
    laser_delay_s = 180e-6                    # T0 -> laser Q-switch trigger
    spectrometer_delay_s = 1e-6               # laser shot -> spectrometer trigger
    gate_s = 10e-6                            # spectrometer trigger pulse width

    [spectrometers.primary]                   # one table per system of the bench
    integration_time_s = 1.05e-3              # required, 2 µs .. 600 s, < one laser period
    delay_s = 0.0                             # optional, the spectrometer's own trigger delay
    averages = 1                              # optional; 1 in fly mode, divides shots_per_spot

Relative paths: ``bench`` (when a path) resolves against the scan file's folder, so a scan and
its bench profile can travel together; ``output`` resolves against the current working
directory when the scan is run (`ScanConfig.output_path`), so a shipped example run from the
repository root writes under ``out/``.

Every error is a `ScanError` naming the source and the dotted field, e.g.
``scan.toml: region.step_um must be > 0, got -5``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .raster import ALL_ORDERS, DEFAULT_ORDER

MODES = ("step", "fly")
TRIGGERS = ("ddg-clock", "stage-distance")
OUTPUT_SUFFIXES = (".h5", ".hdf5", ".nxs")
MAX_LASER_RATE_HZ = 10_000.0  # the fastest any plumelink bench fires (DDG burst and laser)
MIN_INTEGRATION_S = 2e-6  # AvaSpec limits (drivers/avantes.py)
MAX_INTEGRATION_S = 600.0
MAX_AVERAGES = 65535
MAX_FRAMES_PER_LINE = 32767  # one arm per line; AvaSpec's frame count is a C short
MAX_SPOTS_PER_AXIS = MAX_FRAMES_PER_LINE  # keeps a plan (and a map file) of sane size
SPEED_TOLERANCE = 1e-3  # relative: a fly speed that spaces shots within 0.1 % of the step

DEFAULT_STAGE_SPEED_UM_S = 10_000.0
DEFAULT_SETTLE_S = 0.02
DEFAULT_LINE_OVERHEAD_S = 0.05

_TOP = {"sample", "operator", "bench", "output", "reshoot_invalid", "region", "acquisition",
        "fly", "laser", "stage", "ddg", "spectrometers"}
_REGION = {"origin_um", "size_um", "step_um", "order"}
_ACQUISITION = {"mode", "shots_per_spot", "line_overhead_s"}
_FLY = {"trigger", "speed_um_s", "run_up_um"}
_LASER = {"rate_hz"}
_STAGE = {"speed_um_s", "settle_s"}
_DDG = {"laser_delay_s", "spectrometer_delay_s", "gate_s"}
_SPECTROMETER = {"integration_time_s", "delay_s", "averages"}


class ScanError(ValueError):
    """A scan file is unreadable or invalid; the message names the source and dotted field."""


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Region:
    """The spots origin + (i * step, j * step), i < nx, j < ny; positions in µm."""

    origin_um: tuple[float, float]
    size_um: tuple[float, float]
    step_um: float

    @property
    def nx(self) -> int:
        return round(self.size_um[0] / self.step_um)

    @property
    def ny(self) -> int:
        return round(self.size_um[1] / self.step_um)


@dataclass(frozen=True)
class FlySettings:
    """Fly scan: constant speed along each line, one shot per spot.

    ``speed_um_s`` is the effective speed (derived as step * rate when the file leaves it out).
    """

    trigger: str
    speed_um_s: float
    run_up_um: float = 0.0


@dataclass(frozen=True)
class StageSettings:
    speed_um_s: float = DEFAULT_STAGE_SPEED_UM_S
    settle_s: float = DEFAULT_SETTLE_S


@dataclass(frozen=True)
class DdgSettings:
    laser_delay_s: float
    spectrometer_delay_s: float
    gate_s: float


@dataclass(frozen=True)
class SpectrometerSettings:
    integration_time_s: float
    delay_s: float = 0.0
    averages: int = 1


@dataclass(frozen=True)
class ScanConfig:
    """A validated scan file. ``text`` is the TOML as written, ``source`` where it came from."""

    sample: str
    operator: str
    bench: str  # shipped profile name, or an absolute path to a profile TOML
    output: Path  # as written; see `output_path`
    region: Region
    order: str
    mode: str
    shots_per_spot: int
    rate_hz: float
    rate_from_bench: bool  # True when [laser] rate_hz was left to the bench profile
    ddg: DdgSettings
    spectrometers: dict[str, SpectrometerSettings]
    stage: StageSettings = field(default_factory=StageSettings)
    fly: FlySettings | None = None
    line_overhead_s: float = DEFAULT_LINE_OVERHEAD_S
    reshoot_invalid: bool = False
    text: str = field(default="", repr=False)
    source: str = "<string>"

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx): spots along y and x."""
        return self.region.ny, self.region.nx

    def output_path(self, cwd: str | Path | None = None) -> Path:
        """The output file; a relative path resolves against ``cwd`` (default: Path.cwd())."""
        if self.output.is_absolute():
            return self.output
        return (Path(cwd) if cwd is not None else Path.cwd()) / self.output


# ---------------------------------------------------------------------------- loading
def load_scan(path: str | Path, *, check_bench: bool = True) -> ScanConfig:
    """Read and validate a scan file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScanError(f"cannot read scan file {path}: {exc}") from exc
    return parse_scan(text, source=str(path), base_dir=path.parent, check_bench=check_bench)


def parse_scan(text: str, *, source: str = "<string>", base_dir: str | Path | None = None,
               check_bench: bool = True) -> ScanConfig:
    """Validate scan TOML ``text``. ``base_dir`` anchors a relative bench path (default cwd).

    With ``check_bench`` the bench profile is loaded (a file, no device is opened) to fill the
    default laser rate and to check the spectrometer names; without it ``[laser] rate_hz`` is
    required and the names are not checked.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScanError(f"{source}: not valid TOML: {exc}") from exc
    return _Parser(source, base_dir).parse(data, text, check_bench)


def example_scans() -> dict[str, Path]:
    """The shipped example scans by name (file stem)."""
    folder = resources.files("plumelink.resources").joinpath("scans")
    return {p.name[:-5]: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml")}


# ---------------------------------------------------------------------------- validation
def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Parser:
    def __init__(self, source: str, base_dir: str | Path | None) -> None:
        self.source = source
        self.base_dir = Path(base_dir) if base_dir is not None else None

    def error(self, name: str, message: str) -> ScanError:
        return ScanError(f"{self.source}: {name} {message}")

    # --- tables and keys
    def table(self, data: Mapping[str, Any], key: str, allowed: set[str], *,
              required: bool = True, prefix: str = "") -> dict[str, Any]:
        name = prefix + key
        if key not in data:
            if required:
                raise self.error(name, f"is missing: add a [{name}] table")
            return {}
        value = data[key]
        if not isinstance(value, Mapping):
            raise self.error(name, f"must be a table [{name}], got {value!r}")
        self.keys(value, allowed, name + ".")
        return dict(value)

    def keys(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"[{prefix[:-1]}]" if prefix else "the top level"
                raise self.error(f"{prefix}{key}", f"is not a known key; allowed in {where}: "
                                 f"{', '.join(sorted(allowed))}")

    def get(self, table: Mapping[str, Any], key: str, prefix: str, check: Callable[..., Any],
            default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise self.error(prefix + key, "is missing")
            return default
        return check(prefix + key, table[key])

    # --- value checks
    def string(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {value!r}")
        return value

    def choice(self, options: tuple[str, ...]) -> Callable[[str, object], str]:
        def check(name: str, value: object) -> str:
            if value not in options:
                raise self.error(name, f"must be one of {', '.join(map(repr, options))}, "
                                 f"got {value!r}")
            return str(value)
        return check

    def number(self, name: str, value: object, *, minimum: float = -math.inf,
               strict: bool = False) -> float:
        if not _is_real(value):
            raise self.error(name, f"must be a number, got {value!r}")
        if strict and not value > minimum:  # type: ignore[operator]
            raise self.error(name, f"must be > {minimum:g}, got {value!r}")
        if not strict and not value >= minimum:  # type: ignore[operator]
            raise self.error(name, f"must be >= {minimum:g}, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    def positive(self, name: str, value: object) -> float:
        return self.number(name, value, minimum=0.0, strict=True)

    def non_negative(self, name: str, value: object) -> float:
        return self.number(name, value, minimum=0.0)

    def integer(self, name: str, value: object, lo: int, hi: int) -> int:
        if not _is_int(value):
            raise self.error(name, f"must be an integer, got {value!r}")
        if not lo <= value <= hi:  # type: ignore[operator]
            raise self.error(name, f"must be in {lo}..{hi}, got {value!r}")
        return int(value)  # type: ignore[arg-type]

    def pair(self, name: str, value: object, *, positive: bool = False) -> tuple[float, float]:
        if not (isinstance(value, list) and len(value) == 2 and all(map(_is_real, value))):
            raise self.error(name, f"must be a list of two numbers [x, y], got {value!r}")
        if positive and not all(v > 0 for v in value):
            raise self.error(name, f"must have both values > 0, got {value!r}")
        return float(value[0]), float(value[1])

    # --- the file
    def parse(self, data: Mapping[str, Any], text: str, check_bench: bool) -> ScanConfig:
        self.keys(data, _TOP, "")
        sample = self.get(data, "sample", "", self.string)
        operator = self.get(data, "operator", "", self.string)
        bench = self.bench(self.get(data, "bench", "", self.string))
        output = self.output(self.get(data, "output", "", self.string))
        reshoot = self.get(data, "reshoot_invalid", "", self.boolean, False)
        region, order = self.region(data)
        acq = self.table(data, "acquisition", _ACQUISITION, required=False)
        mode = self.get(acq, "mode", "acquisition.", self.choice(MODES), "step")
        shots = self.get(acq, "shots_per_spot", "acquisition.",
                         lambda n, v: self.integer(n, v, 1, MAX_FRAMES_PER_LINE), 1)
        overhead = self.get(acq, "line_overhead_s", "acquisition.", self.non_negative,
                            DEFAULT_LINE_OVERHEAD_S)
        st = self.table(data, "stage", _STAGE, required=False)
        stage = StageSettings(
            self.get(st, "speed_um_s", "stage.", self.positive, DEFAULT_STAGE_SPEED_UM_S),
            self.get(st, "settle_s", "stage.", self.non_negative, DEFAULT_SETTLE_S))
        profile = self.load_bench(bench) if check_bench else None
        rate, from_bench = self.rate(data, profile)
        ddg = self.ddg(data, rate)
        spectrometers = self.spectrometers(data, rate, profile)
        fly = None
        if mode == "fly":
            fly = self.fly(data, region, rate, stage)
            if shots != 1:
                raise self.error("acquisition.shots_per_spot",
                                 f"must be 1 in fly mode (one shot per spot), got {shots}")
            for role, spec in spectrometers.items():
                if spec.averages != 1:
                    raise self.error(f"spectrometers.{role}.averages",
                                     f"must be 1 in fly mode, got {spec.averages}")
        elif "fly" in data:
            raise self.error("fly", "is only allowed with acquisition.mode = 'fly', "
                             f"but mode is {mode!r}")
        else:
            for role, spec in spectrometers.items():
                if shots % spec.averages:
                    raise self.error(f"spectrometers.{role}.averages",
                                     f"({spec.averages}) must divide acquisition.shots_per_spot "
                                     f"({shots}): each frame averages whole shots of one spot")
        line_spots = region.nx if order.endswith("horizontal") else region.ny
        if line_spots * shots > MAX_FRAMES_PER_LINE:
            raise self.error("acquisition.shots_per_spot",
                             f"gives {line_spots * shots} shots per raster line ({line_spots} "
                             f"spots x {shots}); at most {MAX_FRAMES_PER_LINE} frames per line")
        return ScanConfig(
            sample=sample, operator=operator, bench=bench, output=output, region=region,
            order=order, mode=mode, shots_per_spot=shots, rate_hz=rate,
            rate_from_bench=from_bench, ddg=ddg, spectrometers=spectrometers, stage=stage,
            fly=fly, line_overhead_s=overhead, reshoot_invalid=reshoot, text=text,
            source=self.source)

    def bench(self, value: str) -> str:
        path = Path(value)
        if path.suffix == ".toml" or len(path.parts) > 1:
            if not path.is_absolute():
                path = (self.base_dir if self.base_dir is not None else Path.cwd()) / path
            return str(path)
        return value

    def load_bench(self, bench: str) -> Any:
        from plumelink.drivers.bench import BenchProfile, ProfileError

        try:
            return BenchProfile.load(bench)
        except ProfileError as exc:
            raise self.error("bench", f"{bench!r} cannot be loaded: {exc}") from exc

    def output(self, value: str) -> Path:
        path = Path(value)
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise self.error("output", f"must name an HDF5 file ending in "
                             f"{', '.join(OUTPUT_SUFFIXES)}, got {value!r}")
        return path

    def region(self, data: Mapping[str, Any]) -> tuple[Region, str]:
        reg = self.table(data, "region", _REGION)
        p = "region."
        origin = self.get(reg, "origin_um", p, self.pair)
        size = self.get(reg, "size_um", p, lambda n, v: self.pair(n, v, positive=True))
        step = self.get(reg, "step_um", p, self.positive)
        for axis, extent in zip("xy", size, strict=True):
            steps = extent / step
            if steps < 0.5 or abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
                raise self.error(p + "size_um", f"must be a whole number (>= 1) of steps of "
                                 f"region.step_um = {step:g} along {axis}, got {extent:g} "
                                 f"({steps:g} steps)")
            if round(steps) > MAX_SPOTS_PER_AXIS:
                raise self.error(p + "size_um", f"gives {round(steps)} spots along {axis}; at "
                                 f"most {MAX_SPOTS_PER_AXIS} per axis")
        order = self.get(reg, "order", p, self.choice(ALL_ORDERS), DEFAULT_ORDER)
        return Region(origin, size, step), order

    def rate(self, data: Mapping[str, Any], profile: Any) -> tuple[float, bool]:
        laser = self.table(data, "laser", _LASER, required=False)
        if "rate_hz" in laser:
            rate = self.positive("laser.rate_hz", laser["rate_hz"])
            from_bench = False
        elif profile is not None:
            rate = profile.laser.rate_hz
            from_bench = True
        else:
            raise self.error("laser.rate_hz", "is missing (required when the bench profile "
                             "is not loaded)")
        if rate > MAX_LASER_RATE_HZ:
            what = "laser.rate_hz" if not from_bench else "bench laser rate_hz"
            raise self.error("laser.rate_hz", f"must be <= {MAX_LASER_RATE_HZ:g} Hz (the "
                             f"fastest a bench fires), got {rate:g} ({what})")
        return rate, from_bench

    def ddg(self, data: Mapping[str, Any], rate: float) -> DdgSettings:
        t = self.table(data, "ddg", _DDG)
        p = "ddg."
        ddg = DdgSettings(self.get(t, "laser_delay_s", p, self.non_negative),
                          self.get(t, "spectrometer_delay_s", p, self.non_negative),
                          self.get(t, "gate_s", p, self.positive))
        total = ddg.laser_delay_s + ddg.spectrometer_delay_s + ddg.gate_s
        if total >= 1.0 / rate:
            raise self.error(p + "gate_s", "is too long: laser_delay_s + spectrometer_delay_s "
                             f"+ gate_s = {total:g} s must fit in one laser period "
                             f"(1 / {rate:g} Hz = {1.0 / rate:g} s)")
        return ddg

    def spectrometers(self, data: Mapping[str, Any], rate: float,
                      profile: Any) -> dict[str, SpectrometerSettings]:
        if "spectrometers" not in data:
            raise self.error("spectrometers", "is missing: add a [spectrometers.primary] table "
                             "(one per system)")
        table = data["spectrometers"]
        if not isinstance(table, Mapping) or not table:
            raise self.error("spectrometers", "must hold one table per system, e.g. "
                             f"[spectrometers.primary], got {table!r}")
        if profile is not None:
            self.keys(table, set(profile.spectrometers), "spectrometers.")
        out = {}
        for role in table:
            p = f"spectrometers.{role}."
            t = self.table(table, role, _SPECTROMETER, prefix="spectrometers.")
            integration = self.get(t, "integration_time_s", p, self.positive)
            if not MIN_INTEGRATION_S <= integration <= MAX_INTEGRATION_S:
                raise self.error(p + "integration_time_s", f"must be in {MIN_INTEGRATION_S:g}"
                                 f"..{MAX_INTEGRATION_S:g} s, got {integration:g}")
            delay = self.get(t, "delay_s", p, self.non_negative, 0.0)
            if integration + delay >= 1.0 / rate:
                raise self.error(p + "integration_time_s", f"+ delay_s = {integration + delay:g}"
                                 f" s must be shorter than one laser period (1 / {rate:g} Hz = "
                                 f"{1.0 / rate:g} s)")
            averages = self.get(t, "averages", p,
                                lambda n, v: self.integer(n, v, 1, MAX_AVERAGES), 1)
            out[role] = SpectrometerSettings(integration, delay, averages)
        return out

    def fly(self, data: Mapping[str, Any], region: Region, rate: float,
            stage: StageSettings) -> FlySettings:
        t = self.table(data, "fly", _FLY, required=False)
        p = "fly."
        trigger = self.get(t, "trigger", p, self.choice(TRIGGERS), "ddg-clock")
        run_up = self.get(t, "run_up_um", p, self.non_negative, 0.0)
        step = region.step_um
        nominal = step * rate
        speed = self.get(t, "speed_um_s", p, self.positive, nominal)
        if trigger == "ddg-clock" and abs(speed - nominal) > SPEED_TOLERANCE * nominal:
            raise self.error(p + "speed_um_s", f"{speed:g} µm/s at laser.rate_hz {rate:g} spaces "
                             f"shots {speed / rate:g} µm apart, not region.step_um = {step:g}: "
                             f"set it to {nominal:g} or leave it out")
        if trigger == "stage-distance" and speed > nominal * (1 + SPEED_TOLERANCE):
            raise self.error(p + "speed_um_s", f"{speed:g} µm/s with a trigger every "
                             f"{step:g} µm asks for {speed / step:g} shots/s, above "
                             f"laser.rate_hz {rate:g}: at most {nominal:g} µm/s")
        if speed > stage.speed_um_s:
            raise self.error(p + "speed_um_s", f"{speed:g} µm/s exceeds stage.speed_um_s "
                             f"{stage.speed_um_s:g} (the fastest the stage is allowed to move)")
        return FlySettings(trigger, speed, run_up)


__all__ = [
    "ALL_ORDERS",
    "MAX_LASER_RATE_HZ",
    "MODES",
    "TRIGGERS",
    "DdgSettings",
    "FlySettings",
    "Region",
    "ScanConfig",
    "ScanError",
    "SpectrometerSettings",
    "StageSettings",
    "example_scans",
    "load_scan",
    "parse_scan",
]
