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

Validation: each table is declared once below (pydantic: types, ranges, defaults, unknown keys
refused); the rules that relate several fields (whole steps, one laser period, the fly speed)
follow in `_config`. Every error is a `ScanError` naming the source and the dotted field, e.g.
``scan.toml: region.step_um must be > 0, got -5``.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic.dataclasses import dataclass as validated

from plumelink.drivers.config import (
    STRICT_KEYS,
    Count,
    Flag,
    NonNegative,
    Pair,
    Positive,
    PositivePair,
    Problem,
    Table,
    Text,
    ValidationError,
    Within,
    checked,
    keys_of,
    problems,
    table_at,
)

from .raster import ALL_ORDERS, DEFAULT_ORDER

Mode = Literal["step", "fly"]
Trigger = Literal["ddg-clock", "stage-distance"]
MODES: tuple[str, ...] = typing.get_args(Mode)
TRIGGERS: tuple[str, ...] = typing.get_args(Trigger)
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


class ScanError(ValueError):
    """A scan file is unreadable or invalid; the message names the source and dotted field."""


# ---------------------------------------------------------------------------- config
@validated(frozen=True, config=STRICT_KEYS)
class Region:
    """The spots origin + (i * step, j * step), i < nx, j < ny; positions in µm."""

    origin_um: Pair
    size_um: PositivePair  # (width, height): a whole number of steps each (`_config`)
    step_um: Positive

    @property
    def nx(self) -> int:
        return round(self.size_um[0] / self.step_um)

    @property
    def ny(self) -> int:
        return round(self.size_um[1] / self.step_um)


@validated(frozen=True, config=STRICT_KEYS)
class FlySettings:
    """Fly scan: constant speed along each line, one shot per spot.

    ``speed_um_s`` is the effective speed (derived as step * rate when the file leaves it out).
    """

    trigger: Trigger
    speed_um_s: Positive
    run_up_um: NonNegative = 0.0


@validated(frozen=True, config=STRICT_KEYS)
class StageSettings:
    speed_um_s: Positive = DEFAULT_STAGE_SPEED_UM_S  # moves between spots / lines; max fly speed
    settle_s: NonNegative = DEFAULT_SETTLE_S  # wait after each move (step mode, line starts)


@validated(frozen=True, config=STRICT_KEYS)
class DdgSettings:
    laser_delay_s: NonNegative  # T0 -> laser Q-switch trigger
    spectrometer_delay_s: NonNegative  # laser shot -> spectrometer trigger
    gate_s: Positive  # spectrometer trigger pulse width


@validated(frozen=True, config=STRICT_KEYS)
class SpectrometerSettings:
    integration_time_s: Within(MIN_INTEGRATION_S, MAX_INTEGRATION_S, "s")
    delay_s: NonNegative = 0.0  # the spectrometer's own trigger delay
    averages: Count(1, MAX_AVERAGES) = 1


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


# ---------------------------------------------------------------------------- the file
@validated(frozen=True, config=STRICT_KEYS)
class _RegionTable(Region):
    order: Literal[ALL_ORDERS] = DEFAULT_ORDER  # type: ignore[valid-type]


class _AcquisitionTable(Table):
    mode: Mode = "step"
    shots_per_spot: Count(1, MAX_FRAMES_PER_LINE) = 1  # must be 1 in fly mode
    line_overhead_s: NonNegative = DEFAULT_LINE_OVERHEAD_S  # arm, read, store (estimate)


class _FlyTable(Table):
    trigger: Trigger = "ddg-clock"
    speed_um_s: Positive | None = None  # ddg-clock: must be step_um * rate_hz (the default)
    run_up_um: NonNegative = 0.0


class _LaserTable(Table):
    rate_hz: Positive | None = None  # default: the bench profile's rate


class _ScanFile(Table):
    sample: Text
    operator: Text
    bench: Text
    output: typing.Annotated[Text, checked(
        "hdf5", lambda p: Path(p).suffix.lower() in OUTPUT_SUFFIXES,
        f"must name an HDF5 file ending in {', '.join(OUTPUT_SUFFIXES)}")]
    reshoot_invalid: Flag = False
    region: _RegionTable
    acquisition: _AcquisitionTable = _AcquisitionTable()
    fly: _FlyTable | None = None  # only when acquisition.mode = "fly"
    laser: _LaserTable = _LaserTable()
    stage: StageSettings = StageSettings()
    ddg: DdgSettings
    spectrometers: dict[str, SpectrometerSettings]


_HINTS = {"spectrometers": "add a [spectrometers.primary] table (one per system)"}


def _describe(problem: Problem) -> str:
    """One problem as "<dotted field> <what is wrong>"."""
    name = problem.dotted
    if problem.kind == "missing":
        hint = _HINTS.get(name) or (f"add a [{name}] table"
                                    if table_at(_ScanFile, problem.loc) else "")
        return f"{name} is missing" + (f": {hint}" if hint else "")
    if problem.kind == "unknown":
        parent = problem.loc[:-1]
        where = f"[{'.'.join(parent)}]" if parent else "the top level"
        table = table_at(_ScanFile, parent)
        allowed = ", ".join(keys_of(table)) if table is not None else ""
        return f"{name} is not a known key; allowed in {where}: {allowed}"
    return f"{name} {problem.text}"


# ---------------------------------------------------------------------------- loading
def load_scan(path: str | Path, *, check_bench: bool = True) -> ScanConfig:
    """Read and validate a scan file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScanError(f"cannot read scan file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ScanError(f"{path}: not a scan file: it is not UTF-8 text (byte {exc.start} is "
                        f"0x{exc.object[exc.start]:02x}); a scan is a TOML text file") from None
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
    try:
        document = _ScanFile.model_validate(data)
    except ValidationError as exc:
        raise ScanError(f"{source}: {_describe(problems(exc)[0])}") from None
    return _config(document, text, source, Path(base_dir) if base_dir is not None else None,
                   check_bench)


def example_scans() -> dict[str, Path]:
    """The shipped example scans by name (file stem)."""
    folder = resources.files("plumelink.resources").joinpath("scans")
    return {p.name[:-5]: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml")}


# ---------------------------------------------------------------------------- relations
def _config(doc: _ScanFile, text: str, source: str, base_dir: Path | None,
            check_bench: bool) -> ScanConfig:
    """The rules between fields, then the `ScanConfig`."""
    def error(name: str, message: str) -> ScanError:
        return ScanError(f"{source}: {name} {message}")

    bench = _bench_path(doc.bench, base_dir)
    reg, acq = doc.region, doc.acquisition
    region = Region(reg.origin_um, reg.size_um, reg.step_um)
    step, shots = region.step_um, acq.shots_per_spot
    for axis, extent in zip("xy", region.size_um, strict=True):
        steps = extent / step
        if steps < 0.5 or abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
            raise error("region.size_um", f"must be a whole number (>= 1) of steps of "
                        f"region.step_um = {step:g} along {axis}, got {extent:g} "
                        f"({steps:g} steps)")
        if round(steps) > MAX_SPOTS_PER_AXIS:
            raise error("region.size_um", f"gives {round(steps)} spots along {axis}; at most "
                        f"{MAX_SPOTS_PER_AXIS} per axis")
    profile = _load_bench(bench, error) if check_bench else None
    if doc.laser.rate_hz is not None:
        rate, from_bench = doc.laser.rate_hz, False
    elif profile is not None:
        rate, from_bench = profile.laser.rate_hz, True
    else:
        raise error("laser.rate_hz", "is missing (required when the bench profile is not "
                    "loaded)")
    if rate > MAX_LASER_RATE_HZ:
        what = "laser.rate_hz" if not from_bench else "bench laser rate_hz"
        raise error("laser.rate_hz", f"must be <= {MAX_LASER_RATE_HZ:g} Hz (the fastest a "
                    f"bench fires), got {rate:g} ({what})")
    period = 1.0 / rate
    ddg = doc.ddg
    total = ddg.laser_delay_s + ddg.spectrometer_delay_s + ddg.gate_s
    if total >= period:
        raise error("ddg.gate_s", "is too long: laser_delay_s + spectrometer_delay_s + gate_s "
                    f"= {total:g} s must fit in one laser period (1 / {rate:g} Hz = "
                    f"{period:g} s)")
    spectrometers = doc.spectrometers
    if not spectrometers:
        raise error("spectrometers", "must hold one table per system, e.g. "
                    "[spectrometers.primary], got {}")
    if profile is not None:
        unknown = [role for role in spectrometers if role not in profile.spectrometers]
        if unknown:
            raise error(f"spectrometers.{unknown[0]}", "is not a known key; allowed in "
                        f"[spectrometers]: {', '.join(sorted(profile.spectrometers))}")
    for role, spec in spectrometers.items():
        if spec.integration_time_s + spec.delay_s >= period:
            raise error(f"spectrometers.{role}.integration_time_s", f"+ delay_s = "
                        f"{spec.integration_time_s + spec.delay_s:g} s must be shorter than "
                        f"one laser period (1 / {rate:g} Hz = {period:g} s)")
    fly = None
    if acq.mode == "fly":
        fly = _fly(doc.fly or _FlyTable(), region, rate, doc.stage, error)
        if shots != 1:
            raise error("acquisition.shots_per_spot",
                        f"must be 1 in fly mode (one shot per spot), got {shots}")
        for role, spec in spectrometers.items():
            if spec.averages != 1:
                raise error(f"spectrometers.{role}.averages",
                            f"must be 1 in fly mode, got {spec.averages}")
    elif doc.fly is not None:
        raise error("fly", f"is only allowed with acquisition.mode = 'fly', but mode is "
                    f"{acq.mode!r}")
    else:
        for role, spec in spectrometers.items():
            if shots % spec.averages:
                raise error(f"spectrometers.{role}.averages",
                            f"({spec.averages}) must divide acquisition.shots_per_spot "
                            f"({shots}): each frame averages whole shots of one spot")
    line_spots = region.nx if reg.order.endswith("horizontal") else region.ny
    if line_spots * shots > MAX_FRAMES_PER_LINE:
        raise error("acquisition.shots_per_spot",
                    f"gives {line_spots * shots} shots per raster line ({line_spots} spots x "
                    f"{shots}); at most {MAX_FRAMES_PER_LINE} frames per line")
    return ScanConfig(
        sample=doc.sample, operator=doc.operator, bench=bench, output=Path(doc.output),
        region=region, order=reg.order, mode=acq.mode, shots_per_spot=shots, rate_hz=rate,
        rate_from_bench=from_bench, ddg=ddg, spectrometers=dict(spectrometers),
        stage=doc.stage, fly=fly, line_overhead_s=acq.line_overhead_s,
        reshoot_invalid=doc.reshoot_invalid, text=text, source=source)


def _bench_path(value: str, base_dir: Path | None) -> str:
    """A bench given as a path (a .toml or a folder in it) resolves against ``base_dir``."""
    path = Path(value)
    if path.suffix == ".toml" or len(path.parts) > 1:
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else Path.cwd()) / path
        return str(path)
    return value


def _load_bench(bench: str, error: Any) -> Any:
    from plumelink.drivers.bench import BenchProfile, ProfileError

    try:
        return BenchProfile.load(bench)
    except ProfileError as exc:
        raise error("bench", f"{bench!r} cannot be loaded: {exc}") from exc


def _fly(table: _FlyTable, region: Region, rate: float, stage: StageSettings,
         error: Any) -> FlySettings:
    step = region.step_um
    nominal = step * rate
    speed = table.speed_um_s if table.speed_um_s is not None else nominal
    if table.trigger == "ddg-clock" and abs(speed - nominal) > SPEED_TOLERANCE * nominal:
        raise error("fly.speed_um_s", f"{speed:g} µm/s at laser.rate_hz {rate:g} spaces shots "
                    f"{speed / rate:g} µm apart, not region.step_um = {step:g}: set it to "
                    f"{nominal:g} or leave it out")
    if table.trigger == "stage-distance" and speed > nominal * (1 + SPEED_TOLERANCE):
        raise error("fly.speed_um_s", f"{speed:g} µm/s with a trigger every {step:g} µm asks "
                    f"for {speed / step:g} shots/s, above laser.rate_hz {rate:g}: at most "
                    f"{nominal:g} µm/s")
    if speed > stage.speed_um_s:
        raise error("fly.speed_um_s", f"{speed:g} µm/s exceeds stage.speed_um_s "
                    f"{stage.speed_um_s:g} (the fastest the stage is allowed to move)")
    return FlySettings(table.trigger, speed, table.run_up_um)


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
