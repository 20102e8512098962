"""Bench profiles: which driver and resource each device of a bench uses, and opening them.

A profile is a TOML file (shipped ones live in ``plumelink/resources/benches/``)::

    name = "simulated"
    [laser]                       # wavelength_nm, rate_hz
    [delay_generator]             # driver = "dg645", resource = "TCPIP::...::SOCKET" | "sim"
    [stage]                       # driver = "zaber" | "pi_gcs", resource = "/dev/ttyUSB0" | "sim"
    [spectrometers.primary]       # driver = "avaspec" | "ocean", resource = "<serial>" | "sim"
    [spectrometers.secondary]
    [simulation]                  # optional: seed, day, run, speedup, batch_size, max_latency_s
    [recovery]                    # optional: line_retries, reconnects, wait_s (device faults)

Every table is declared once below (pydantic: types, ranges, unknown keys refused). A device
table has ``driver`` and ``resource``; its other keys are that driver's options, declared with
their types in the driver's options table (`DRIVERS`). The resource ``"sim"`` starts that
driver's emulator in-process behind its real transport (DG645: localhost TCP through
pyvisa-py; Zaber: localhost TCP, opened by zaber-motion; PI: a ``pigcssim://`` pyserial URL;
AvaSpec: the fake
``libavs`` object), so the real driver code runs; ``sim_*`` options configure only the emulator.

When devices are simulated, `open_bench` wires their emulators through one simulated clock and
trigger bus (`plumelink.drivers.sim.bench_bus`): each DG645 shot takes the stage position at
that instant, runs the physics (`BenchPhysics` with the ``[simulation]`` seed, day and run) and
triggers every simulated AvaSpec with its own system's spectrum (``sim_profile``: the physics
profile whose axis the driver's start..stop pixels read exactly; ``sim_clock_offset_s``: that
unit's device clock at simulated time 0). ``speedup`` is simulated seconds per real second
(driver timeouts stay real). ``bench.simulation`` gives the clock, the bus, the physics, the
per-shot ground-truth log and fault injection; it is None on real hardware.
``bench.time_scale`` is simulated seconds per real second (1 on hardware).

`open_bench` is a context manager. Safety (DESIGN.md): the DG645 outputs are disabled as soon
as it is open, and whenever the block is left (normal end, exception, KeyboardInterrupt), or
opening fails part way, `disable_outputs` runs *first*, then every open device is closed, then
the emulators are stopped. Errors while closing are logged and never mask the original error.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict
from pydantic.dataclasses import dataclass as validated

from .config import (
    STRICT_KEYS,
    Count,
    Flag,
    Integer,
    NonNegative,
    Number,
    Pair,
    Positive,
    Problem,
    String,
    Table,
    Text,
    ValidationError,
    checked,
    is_table,
    keys_of,
    problems,
    table_at,
)
from .protocols import DelayGenerator, Spectrometer, Stage

if TYPE_CHECKING:
    from .sim.bench_bus import Simulation

log = logging.getLogger(__name__)

SIM = "sim"
KINDS = ("delay_generator", "stage", "spectrometer")
_sim_ids = itertools.count(1)


class ProfileError(ValueError):
    """A bench profile is missing, unreadable or invalid; the message names table and field."""


# ---------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class DeviceSpec:
    """One device of a profile: driver name, resource and the driver's options (as written)."""

    table: str  # where it came from, e.g. "spectrometers.primary" (for messages)
    driver: str
    resource: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return self.resource == SIM


@validated(frozen=True, config=STRICT_KEYS)
class LaserSpec:
    wavelength_nm: Positive
    rate_hz: Positive


@validated(frozen=True, config=STRICT_KEYS)
class SimulationSpec:
    """The optional ``[simulation]`` table, used only for devices with resource "sim".

    ``speedup``: simulated seconds per real second (1 = real time); ``batch_size`` and
    ``max_latency_s`` (real s) bound how many shots the bus holds before running the physics
    in one vectorised call."""

    seed: Count(0) = 0
    day: Count(0) = 0
    run: Count(0) = 0
    speedup: Positive = 1.0
    batch_size: Count(1) = 500
    max_latency_s: Positive = 0.05


@validated(frozen=True, config=STRICT_KEYS)
class RecoverySpec:
    """The optional ``[recovery]`` table: how hard a scan tries when a spectrometer or the
    stage times out or drops its link (the delay generator is never retried: the laser's
    safety rests on it). A failed raster line is shot again at most ``line_retries`` times;
    before each new try a device that can reconnect (`protocols.Reconnect`) gets at most
    ``reconnects`` attempts, ``wait_s`` real seconds apart. Every try is logged in the map
    file; when the bounds are spent the scan ends as interrupted, saying why."""

    line_retries: Count(0, 100) = 3
    reconnects: Count(1, 100) = 3
    wait_s: NonNegative = 1.0


class _DeviceTable(BaseModel):
    """A device table: ``driver`` and ``resource``; its other keys are the driver's options,
    checked by the driver's own options table (`_device`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    driver: Text
    resource: Text


class _ProfileFile(Table):
    name: String | None = None  # default: the file's stem
    description: String = ""
    laser: LaserSpec
    delay_generator: _DeviceTable
    stage: _DeviceTable
    spectrometers: dict[str, _DeviceTable]
    simulation: SimulationSpec = SimulationSpec()
    recovery: RecoverySpec = RecoverySpec()


def _describe(problem: Problem, every: list[Problem]) -> str:
    """A problem of the profile in its own words: "[table] key must be ...", "missing table
    [laser]", "unknown top-level keys [...]"."""
    *parent, key = problem.loc
    label = ".".join(parent)
    if problem.kind == "unknown":
        keys = sorted(p.loc[-1] for p in every
                      if p.kind == "unknown" and p.loc[:-1] == problem.loc[:-1])
        if parent:
            allowed = keys_of(table_at(_ProfileFile, problem.loc[:-1]))  # type: ignore[arg-type]
            return f"[{label}] has unknown keys {keys}; allowed: {allowed}"
        tables = sorted(k for k in keys_of(_ProfileFile) if is_table(_ProfileFile, (k,)))
        return f"unknown top-level keys {keys}; expected tables {tables}"
    table = is_table(_ProfileFile, problem.loc)
    if problem.kind == "missing":
        return f"missing table [{problem.dotted}]" if table else f"[{label}] is missing {key}"
    if table:
        return f"[{problem.dotted}] {problem.text}"
    return f"[{label}] {key} {problem.text}" if parent else f"{key} {problem.text}"


@dataclass(frozen=True)
class BenchProfile:
    """A validated bench profile (see the module docstring for the format)."""

    name: str
    delay_generator: DeviceSpec
    stage: DeviceSpec
    spectrometers: dict[str, DeviceSpec]
    laser: LaserSpec
    description: str = ""
    source: str = ""
    simulation: SimulationSpec = field(default_factory=SimulationSpec)
    recovery: RecoverySpec = field(default_factory=RecoverySpec)

    @property
    def simulated(self) -> bool:
        """True when any device is an emulator (resource "sim")."""
        return any(spec.simulated for spec in self.devices())

    def devices(self) -> list[DeviceSpec]:
        return [self.delay_generator, self.stage, *self.spectrometers.values()]

    @classmethod
    def load(cls, name_or_path: str | Path) -> BenchProfile:
        """Load a shipped profile by name (``"simulated"``) or a TOML file by path."""
        text, source = _read(name_or_path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> BenchProfile:
        """Validate an already parsed profile; errors name ``source``, table and field."""
        try:
            doc = _ProfileFile.model_validate(data)
        except ValidationError as exc:
            every = problems(exc)
            raise ProfileError(f"{source}: {_describe(every[0], every)}") from None
        if not doc.spectrometers:
            raise ProfileError(f"{source}: [spectrometers] must name at least one "
                               "spectrometer, e.g. [spectrometers.primary]")
        ddg = _device(doc.delay_generator, "delay_generator", "delay_generator", source)
        stage = _device(doc.stage, "stage", "stage", source)
        spectrometers = {role: _device(table, "spectrometer", f"spectrometers.{role}", source)
                         for role, table in doc.spectrometers.items()}
        for spec in spectrometers.values():
            if spec.simulated:
                _check_sim_profile(spec, source)
        return cls(name=doc.name if doc.name is not None else Path(source).stem,
                   description=doc.description, delay_generator=ddg, stage=stage,
                   spectrometers=spectrometers, laser=doc.laser, source=source,
                   simulation=doc.simulation, recovery=doc.recovery)


def _device(entry: _DeviceTable, kind: str, label: str, source: str) -> DeviceSpec:
    """A device table: a known driver of the right kind, and the options that driver
    declares, each of its type."""
    driver, resource = entry.driver, entry.resource
    if driver not in DRIVERS:
        raise ProfileError(f"{source}: [{label}] driver {driver!r} is unknown; "
                           f"known drivers: {sorted(DRIVERS)}")
    factory = DRIVERS[driver]
    if factory.kind != kind:
        fitting = sorted(n for n, f in DRIVERS.items() if f.kind == kind)
        raise ProfileError(f"{source}: [{label}] driver {driver!r} is a {factory.kind} "
                           f"driver, not a {kind} driver; use one of {fitting}")
    options = dict(entry.model_extra or {})
    try:
        factory.options.model_validate(options)
    except ValidationError as exc:
        every = problems(exc)
        unknown = sorted(p.dotted for p in every if p.kind == "unknown")
        if unknown:
            raise ProfileError(f"{source}: [{label}] has unknown keys {unknown}; allowed: "
                               f"{keys_of(factory.options)}") from None
        raise ProfileError(f"{source}: [{label}] {every[0].dotted} {every[0].text}") from None
    if resource == SIM and factory.start_sim is None:
        raise ProfileError(f"{source}: [{label}] driver {driver!r} has no emulator for "
                           f"resource = {SIM!r}")
    return DeviceSpec(label, driver, resource, options)


def _check_sim_profile(spec: DeviceSpec, source: str) -> None:
    """``sim_profile`` must name a physics profile whose pixels fit on the fake's sensor."""
    name = spec.options.get("sim_profile")
    if name is None:
        return
    shipped = resources.files("plumelink.resources").joinpath("profiles", f"{name}.toml")
    if not shipped.is_file():
        raise ProfileError(f"{source}: [{spec.table}] sim_profile {name!r} is not a shipped "
                           "instrument profile (resources/profiles)")
    if "sim_wavelength_nm" in spec.options:
        raise ProfileError(f"{source}: [{spec.table}] give sim_profile or sim_wavelength_nm, "
                           "not both")
    n_pixels = tomllib.loads(shipped.read_text(encoding="utf-8"))["n_pixels"]
    sensor = spec.options.get("sim_num_pixels", 4096)
    start = spec.options.get("start_pixel", 0)
    if start < 0 or start + n_pixels > sensor:
        raise ProfileError(f"{source}: [{spec.table}] profile {name!r} has {n_pixels} px, "
                           f"which from start_pixel {start} do not fit on a {sensor}-px sensor")


def available_profiles() -> list[str]:
    """Names of the shipped profiles."""
    folder = resources.files("plumelink.resources").joinpath("benches")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def write_simulated_profile(folder: str | Path, speedup: float,
                            name: str = "simulated") -> Path:
    """Write the shipped simulated profile ``name`` with another ``speedup`` (simulated
    seconds per real second) to ``folder/bench.toml``, for tests, benchmarks and demos that
    need simulated time faster or slower than the shipped one."""
    text, source = _read(name)
    changed, n = re.subn(r"(?m)^speedup\s*=.*$", f"speedup = {float(speedup)!r}", text)
    if n != 1:
        raise ProfileError(f"{source}: expected one 'speedup = ...' line, found {n}")
    path = Path(folder) / "bench.toml"
    path.write_text(changed, encoding="utf-8")
    BenchProfile.load(path)  # the changed profile must still be valid
    return path


def _read(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.suffix == ".toml" or len(path.parts) > 1:
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ProfileError(f"cannot read bench profile {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ProfileError(f"bench profile {path} is not UTF-8 text (a TOML file): "
                               f"{exc.reason} at byte {exc.start}") from None
    shipped = resources.files("plumelink.resources").joinpath("benches", f"{name_or_path}.toml")
    if not shipped.is_file():
        raise ProfileError(f"no shipped bench profile {name_or_path!r}; "
                           f"available: {available_profiles()}")
    return shipped.read_text(encoding="utf-8"), f"{name_or_path}.toml"


# ---------------------------------------------------------------------------- drivers
@dataclass(frozen=True)
class DriverFactory:
    """How one driver name is opened. ``start_sim(spec, stack, simulation)`` starts the
    emulator on the simulation's clock, attaches it to the `Simulation`, pushes its stop onto
    ``stack`` and returns (resource for ``open``, emulator, extra kwargs)."""

    kind: str
    options: type[Table]  # the driver options a profile may give, each with its type
    open: Callable[[str, dict[str, Any]], Any]
    snapshot: Callable[[Any], dict[str, Any]]
    start_sim: Callable[[DeviceSpec, contextlib.ExitStack, Any],
                        tuple[str, Any, dict[str, Any]]] | None


def _logged(what: str, stop: Callable[..., object], *args: object) -> None:
    """Run one emulator stop; an error is logged, never raised over the bench's own error."""
    try:
        stop(*args)
    except Exception:
        log.exception("bench: error while stopping %s", what)


#: Options the driver does not take: what `plumelink bench check` expects the device to report,
#: and facts of the optics recorded for analysis (the resolution sets element-map windows).
CHECK_OPTIONS = frozenset({"expected_wavelength_nm", "resolution_fwhm_nm"})


def _driver_options(spec: DeviceSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.options.items()
            if not k.startswith("sim_") and k not in CHECK_OPTIONS}


# --- DG645
def _open_dg645(resource: str, options: dict[str, Any]) -> Any:
    from .dg645 import DG645

    return DG645(resource, **options)


def _sim_dg645(spec: DeviceSpec, stack: contextlib.ExitStack,
               sim: Any) -> tuple[str, Any, dict[str, Any]]:
    from .sim.dg645_emulator import DG645Emulator, DG645TcpServer

    server = DG645TcpServer(DG645Emulator(clock=sim.clock))
    stack.callback(_logged, "DG645 emulator server", server.close)
    sim.attach_ddg(server.emulator)
    return server.resource_name, server.emulator, {"visa_library": "@py"}


def _snapshot_dg645(ddg: Any) -> dict[str, Any]:
    from .dg645 import CHANNELS, OUTPUTS

    delays = {}
    for channel in CHANNELS[2:]:
        reference, seconds = ddg.get_delay(channel)
        delays[channel] = {"reference": reference, "delay_s": seconds}
    levels = {}
    for output in OUTPUTS:
        level = ddg.get_output_level(output)
        levels[output] = {"amplitude_v": level.amplitude_v, "offset_v": level.offset_v,
                          "polarity": level.polarity.name}
    return {"identity": ddg.identify(), "resource": ddg.resource_name,
            "trigger_source": ddg.get_trigger_source().name,
            "trigger_rate_hz": ddg.get_trigger_rate(), "burst": asdict(ddg.get_burst()),
            "delays": delays, "output_levels": levels}


# --- stages
def _open_zaber(resource: str, options: dict[str, Any]) -> Any:
    from .zaber import ZaberStage

    return ZaberStage(resource, **options)


def _sim_zaber(spec: DeviceSpec, stack: contextlib.ExitStack,
               sim: Any) -> tuple[str, Any, dict[str, Any]]:
    from .sim import zaber_emulator

    emulator = zaber_emulator.ZaberEmulator(clock=sim.clock)
    step = spec.options.get("microstep_um", 0.1)
    steps = dict(step) if isinstance(step, Mapping) else {"x": step, "y": step}
    axes = {"x": (spec.options.get("x_device", 1), 1), "y": (spec.options.get("y_device", 2), 1)}
    sim.attach_zaber(emulator, axes, steps)
    # zaber-motion opens serial ports and TCP sockets, not pyserial URLs: the emulator is
    # served on localhost; its device id is ours, not in Zaber's device database
    server = zaber_emulator.ZaberTcpServer(emulator)
    stack.callback(_logged, "Zaber emulator server", server.close)
    return f"tcp://{server.host}:{server.port}", emulator, {"device_db": "offline"}


def _sim_serial_stage(
    module: Any, emulator: Any, stack: contextlib.ExitStack
) -> tuple[str, Any, dict[str, Any]]:
    """Register a stage emulator under its pyserial URL scheme; unregister when the bench closes."""
    name = f"bench{next(_sim_ids)}"
    url = module.register_peer(name, emulator)
    stack.callback(_logged, f"emulator {name}", module.unregister_peer, name)
    return url, emulator, {}


def _open_pi(resource: str, options: dict[str, Any]) -> Any:
    from .pi_gcs import PIStage

    return PIStage(resource, **options)


def _sim_pi(spec: DeviceSpec, stack: contextlib.ExitStack,
            sim: Any) -> tuple[str, Any, dict[str, Any]]:
    from .sim import pi_gcs_emulator

    emulator = pi_gcs_emulator.PIEmulator(clock=sim.clock)
    sim.attach_pi(emulator, {"x": "1", "y": "2"})
    return _sim_serial_stage(pi_gcs_emulator, emulator, stack)


def _snapshot_stage(stage: Any) -> dict[str, Any]:
    (xmin, xmax), (ymin, ymax) = stage.limits()
    x, y = stage.position()
    out: dict[str, Any] = {"position_um": [x, y],
                           "limits_um": {"x": [xmin, xmax], "y": [ymin, ymax]},
                           "speed_um_s": stage.speed(), "name": stage.name}
    if getattr(stage, "idn", ""):
        out["identity"] = stage.idn
    if callable(getattr(stage, "identify", None)):  # Zaber: ids, serial, firmware per axis
        out["axes"] = {axis: {k: v for k, v in entry.items() if v is not None}
                       for axis, entry in stage.identify().items()}
    return out


# --- AvaSpec
def _open_avaspec(resource: str, options: dict[str, Any]) -> Any:
    from .avantes import AvaSpec

    serial = None if resource in ("usb", SIM) else resource
    return AvaSpec(serial, **options)


def _sim_avaspec(spec: DeviceSpec, stack: contextlib.ExitStack,
                 sim: Any) -> tuple[str, Any, dict[str, Any]]:
    import numpy as np

    from .sim.avaspec_fake import AvaSpecFake
    from .sim.bench_bus import SpectrometerTap
    from .sim.spectrograph import InstrumentProfile

    options = spec.options
    kwargs: dict[str, Any] = {"num_pixels": options.get("sim_num_pixels", 4096)}
    if "sim_wavelength_nm" in options:
        kwargs["wavelength_nm"] = tuple(float(v) for v in options["sim_wavelength_nm"])
    if "sim_serial" in options:
        kwargs["serials"] = (options["sim_serial"],)
    system = options.get("sim_profile")
    first = int(options.get("start_pixel", 0))
    dark = 1000
    if system is not None:
        # the sensor's calibration is the profile's polynomial shifted by start_pixel, so the
        # driver's start..stop crop reads exactly the profile's axis
        profile = InstrumentProfile.load(system)
        pixels = np.arange(kwargs["num_pixels"], dtype=np.float64) - first
        kwargs["wavelengths"] = profile.wavelength_nm(pixels)
        dark = round(profile.detector["dark_counts"])
    offset = float(options.get("sim_clock_offset_s", 0.0))
    fake = AvaSpecFake(**kwargs)
    role = spec.table.split(".", 1)[-1]
    sim.attach_spectrometer(SpectrometerTap(role, fake, system, first, offset, dark))
    return SIM, fake, {"library": fake}


def _snapshot_avaspec(spec: Any) -> dict[str, Any]:
    axis = spec.wavelength_nm()
    return {"identity": spec.device, "serial": spec.serial, "start_pixel": spec.start_pixel,
            "stop_pixel": spec.stop_pixel, "n_pixels": int(axis.size),
            "wavelength_range_nm": [float(axis[0]), float(axis[-1])],
            "integration_time_s": spec.integration_time_s, "delay_s": spec.delay_s,
            "averages": spec.averages}


# --- Ocean Insight (python-seabreeze, optional extra "ocean")
def _open_ocean(resource: str, options: dict[str, Any]) -> Any:
    from .ocean import OceanSpectrometer

    serial = None if resource in ("usb", SIM) else resource
    return OceanSpectrometer(serial, **options)


def _sim_ocean(spec: DeviceSpec, stack: contextlib.ExitStack,
               sim: Any) -> tuple[str, Any, dict[str, Any]]:
    """A fake of ``seabreeze.spectrometers``; not on the AvaSpec trigger bus (trigger it with
    ``bench.emulators["spectrometers.<role>"].devices[0].trigger()``)."""
    from .sim.seabreeze_fake import FakeSeaBreezeDevice, SeaBreezeFake

    options = spec.options
    kwargs: dict[str, Any] = {}
    if "sim_wavelength_nm" in options:
        kwargs["wavelength_nm"] = tuple(float(v) for v in options["sim_wavelength_nm"])
    device = FakeSeaBreezeDevice(options.get("sim_serial", "FLMS00001"),
                                 options.get("sim_model", "USB2000PLUS"), **kwargs)
    fake = SeaBreezeFake([device])
    return SIM, fake, {"library": fake}


def _snapshot_ocean(spec: Any) -> dict[str, Any]:
    axis = spec.wavelength_nm()
    return {"identity": spec.identify(), "serial": spec.serial, "model": spec.model,
            "n_pixels": int(axis.size),
            "wavelength_range_nm": [float(axis[0]), float(axis[-1])],
            "integration_time_s": spec.integration_time_s, "delay_s": spec.delay_s,
            "averages": spec.averages, "trigger_modes": dict(spec.trigger_modes)}

# --- the options each driver takes (the driver's own default applies to one left out)
def _is_microstep(value: object) -> bool:
    def positive(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf")

    if isinstance(value, Mapping):
        return set(value) == {"x", "y"} and all(map(positive, value.values()))
    return positive(value)


class _Dg645Options(Table):
    timeout_s: Number | None = None
    visa_library: String | None = None


class _StageOptions(Table):
    timeout_s: Number | None = None
    baudrate: Integer | None = None
    poll_interval_s: Number | None = None
    name: String | None = None


class _ZaberOptions(_StageOptions):
    microstep_um: Annotated[object, checked(  # µm per device unit, or one per axis
        "microstep", _is_microstep, "must be a positive number or a table {x = ..., y = ...}")
    ] = None
    fullstep_um: Annotated[object, checked(  # µm per full motor step: checks microstep_um
        "fullstep", _is_microstep, "must be a positive number or a table {x = ..., y = ...}")
    ] = None
    checksum: Flag | None = None
    device_db: String | None = None  # a device database file, or "offline"
    x_device: Integer | None = None
    y_device: Integer | None = None


class _SpectrometerOptions(Table):
    timeout_s: Number | None = None
    expected_wavelength_nm: Pair | None = None  # [first, last] nm, for `bench check`
    resolution_fwhm_nm: Pair | None = None  # FWHM at the first and last pixel (test sheet)
    sim_serial: String | None = None
    sim_wavelength_nm: Pair | None = None


class _AvaSpecOptions(_SpectrometerOptions):
    library_path: String | None = None
    start_pixel: Integer | None = None
    stop_pixel: Integer | None = None
    sim_num_pixels: Integer | None = None
    sim_profile: String | None = None
    sim_clock_offset_s: Number | None = None


class _OceanOptions(_SpectrometerOptions):
    backend: String | None = None
    hardware_trigger_mode: Integer | None = None
    software_trigger_mode: Integer | None = None
    sim_model: String | None = None


#: Driver factories by the name used in profiles (``driver = "..."``).
DRIVERS: dict[str, DriverFactory] = {
    "dg645": DriverFactory("delay_generator", _Dg645Options, _open_dg645, _snapshot_dg645,
                           _sim_dg645),
    "zaber": DriverFactory("stage", _ZaberOptions, _open_zaber, _snapshot_stage, _sim_zaber),
    "pi_gcs": DriverFactory("stage", _StageOptions, _open_pi, _snapshot_stage, _sim_pi),
    "avaspec": DriverFactory("spectrometer", _AvaSpecOptions, _open_avaspec, _snapshot_avaspec,
                             _sim_avaspec),
    "ocean": DriverFactory("spectrometer", _OceanOptions, _open_ocean, _snapshot_ocean,
                           _sim_ocean),
}


# ---------------------------------------------------------------------------- bench
@dataclass
class Bench:
    """The open devices of a bench. ``emulators`` maps "delay_generator", "stage" and
    "spectrometers.<role>" to the emulator behind each simulated device (empty on hardware).
    ``simulation`` (a `plumelink.drivers.sim.bench_bus.Simulation`: ``.clock``, ``.bus``,
    ``.physics``, ``.shot_log``, ``.inject(FaultPlan)``) is None on real hardware."""

    profile: BenchProfile
    delay_generator: DelayGenerator
    stage: Stage
    spectrometers: dict[str, Spectrometer]
    emulators: dict[str, Any] = field(default_factory=dict)
    simulation: Simulation | None = None

    @property
    def time_scale(self) -> float:
        """Simulated seconds per real second: a planned duration divided by it is the real
        time to wait (1 on hardware; the simulated clock's speed-up on the simulated bench)."""
        return 1.0 if self.simulation is None else self.simulation.clock.speedup

    def settings_snapshot(self) -> dict[str, Any]:
        """Every device's driver, resource, identity and settings, for the map file."""
        profile = self.profile

        def entry(spec: DeviceSpec, device: Any) -> dict[str, Any]:
            return {"driver": spec.driver, "resource": spec.resource,
                    "options": dict(spec.options), **DRIVERS[spec.driver].snapshot(device)}

        snapshot = {
            "profile": {"name": profile.name, "source": profile.source},
            "laser": asdict(profile.laser),
            "recovery": asdict(profile.recovery),
            "delay_generator": entry(profile.delay_generator, self.delay_generator),
            "stage": entry(profile.stage, self.stage),
            "spectrometers": {role: entry(profile.spectrometers[role], device)
                              for role, device in self.spectrometers.items()},
        }
        if self.simulation is not None:
            snapshot["simulation"] = asdict(profile.simulation)
        return snapshot


def _open_device(spec: DeviceSpec, sims: contextlib.ExitStack,
                 simulation: Any = None) -> tuple[Any, Any]:
    factory = DRIVERS[spec.driver]
    options = _driver_options(spec)
    emulator = None
    resource = spec.resource
    if spec.simulated:
        assert factory.start_sim is not None  # checked when the profile was validated
        resource, emulator, extra = factory.start_sim(spec, sims, simulation)
        options.update(extra)
    log.info("bench: opening [%s] %s at %s", spec.table, spec.driver, spec.resource)
    return factory.open(resource, options), emulator


def _disable(ddg: Any, failures: list[BaseException]) -> None:
    try:
        ddg.disable_outputs()
    except BaseException as exc:  # logged; re-raised by open_bench when nothing else failed
        log.exception("bench: could not disable the delay generator outputs")
        failures.append(exc)


def _close(name: str, device: Any) -> None:
    try:
        device.close()
    except Exception:
        log.exception("bench: error while closing %s", name)


@contextlib.contextmanager
def open_bench(profile: BenchProfile | str | Path) -> Iterator[Bench]:
    """Open every device of ``profile`` (a `BenchProfile`, shipped name or path) and yield the
    `Bench`; on leaving by any path disable the DDG outputs first, then close all devices, then
    stop the emulators. If disabling fails and nothing else went wrong, that error is raised
    once everything else is closed."""
    if not isinstance(profile, BenchProfile):
        profile = BenchProfile.load(profile)
    opened: list[tuple[str, Any]] = []  # (table, device) in opening order
    emulators: dict[str, Any] = {}
    ddg: Any = None
    failures: list[BaseException] = []
    simulation: Any = None
    if profile.simulated:
        from .sim.bench_bus import Simulation, SimulationSettings

        simulation = Simulation(SimulationSettings(**asdict(profile.simulation)))
    with contextlib.ExitStack() as sims:
        try:
            ddg, emulators["delay_generator"] = _open_device(profile.delay_generator, sims,
                                                             simulation)
            opened.append((profile.delay_generator.table, ddg))
            ddg.disable_outputs()  # start safe: nothing fires until a scan enables outputs
            stage, emulators["stage"] = _open_device(profile.stage, sims, simulation)
            opened.append((profile.stage.table, stage))
            spectrometers = {}
            for role, spec in profile.spectrometers.items():
                spectrometers[role], emulators[spec.table] = _open_device(spec, sims,
                                                                          simulation)
                opened.append((spec.table, spectrometers[role]))
            if simulation is not None:
                simulation.start()  # wire the bus; it is unwired first when the bench closes
                sims.callback(_logged, "simulation trigger bus", simulation.close)
            bench = Bench(profile, ddg, stage, spectrometers,
                          {k: v for k, v in emulators.items() if v is not None}, simulation)
            yield bench
        finally:
            if ddg is not None:
                _disable(ddg, failures)
            for name, device in reversed(opened):
                _close(name, device)
            # the emulators stop when ``sims`` exits, after every device is closed
    if failures:
        raise failures[0]


__all__ = [
    "DRIVERS",
    "SIM",
    "Bench",
    "BenchProfile",
    "DeviceSpec",
    "DriverFactory",
    "LaserSpec",
    "ProfileError",
    "RecoverySpec",
    "SimulationSpec",
    "available_profiles",
    "open_bench",
]
