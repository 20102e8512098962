"""What a scientist runs first at a new or changed bench: open every device of a profile, say
what each one is, and run checks that change nothing the next scan relies on.

`check_bench` opens the devices one by one (so one that fails does not hide the others),
keeps the delay generator's outputs disabled throughout, and reports:

* each device's identity and firmware;
* delay generator: the error queue is empty, the outputs are disabled, no PLL unlock latched;
* stage: travel limits, referencing state, fault flags; a Zaber stage with ``fullstep_um``
  has already checked ``microstep_um`` against the device's resolution when it opened;
* each spectrometer: pixel count against the profile's start..stop pixels, wavelength range
  against ``expected_wavelength_nm``, and one dark frame (software trigger, nothing fired).

A device that cannot be opened (a missing vendor library or DLL, a wrong port) is one problem
line with the driver's own message, which names what to install or set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bench import (
    BenchProfile,
    DeviceSpec,
    ProfileError,
    _close,
    _disable,
    _open_device,
)
from .errors import InstrumentError

log = logging.getLogger(__name__)

#: A wavelength end may differ this much from ``expected_wavelength_nm`` (nm).
WAVELENGTH_TOLERANCE_NM = 1.0
DARK_INTEGRATION_S = 1e-3
DARK_TIMEOUT_S = 5.0
SATURATION_COUNTS = 65535


@dataclass
class BenchCheck:
    """The outcome: ``lines`` say what was found, ``problems`` what is wrong (one sentence
    each, led by the profile table of the device)."""

    profile: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, table: str, text: str) -> None:
        self.lines.append(f"[{table}] {text}")

    def problem(self, table: str, text: str) -> None:
        self.problems.append(f"[{table}] {text}" if table else text)


def check_bench(profile: BenchProfile | str | Path) -> BenchCheck:
    """Open and check every device of ``profile``; never raises for a device problem."""
    try:
        if not isinstance(profile, BenchProfile):
            profile = BenchProfile.load(profile)
    except ProfileError as exc:
        result = BenchCheck(str(profile))
        result.problem("", str(exc))
        return result
    result = BenchCheck(f"{profile.name} ({profile.source})")
    simulation: Any = None
    if profile.simulated:
        from .sim.bench_bus import Simulation, SimulationSettings

        simulation = Simulation(SimulationSettings(**asdict(profile.simulation)))
    opened: list[tuple[str, Any]] = []
    ddg: Any = None
    failures: list[BaseException] = []
    with contextlib.ExitStack() as sims:
        try:
            ddg = _open(profile.delay_generator, sims, simulation, result)
            if ddg is not None:
                opened.append((profile.delay_generator.table, ddg))
                ddg.disable_outputs()
                _check_delay_generator(profile.delay_generator, ddg, result)
            stage = _open(profile.stage, sims, simulation, result)
            if stage is not None:
                opened.append((profile.stage.table, stage))
                _check_stage(profile.stage, stage, result)
            for spec in profile.spectrometers.values():
                spectrometer = _open(spec, sims, simulation, result)
                if spectrometer is not None:
                    opened.append((spec.table, spectrometer))
                    _check_spectrometer(spec, spectrometer, result)
        finally:
            if ddg is not None:
                _disable(ddg, failures)
            for name, device in reversed(opened):
                _close(name, device)
    for exc in failures:
        result.problem(profile.delay_generator.table, f"outputs could not be disabled: {exc}")
    return result


def _open(spec: DeviceSpec, sims: contextlib.ExitStack, simulation: Any,
          result: BenchCheck) -> Any:
    try:
        device, _ = _open_device(spec, sims, simulation)
    except (InstrumentError, OSError, ValueError, ImportError) as exc:
        result.problem(spec.table, f"{spec.driver} at {spec.resource!r} cannot be opened: "
                                   f"{exc}")
        return None
    return device


@contextlib.contextmanager
def _guarded(spec: DeviceSpec, result: BenchCheck, what: str) -> Iterator[None]:
    """A failing check is a problem line, not the end of the run."""
    try:
        yield
    except (InstrumentError, OSError, ValueError) as exc:
        result.problem(spec.table, f"{what} failed: {exc}")


# ---------------------------------------------------------------------------- the checks
def _check_delay_generator(spec: DeviceSpec, ddg: Any, result: BenchCheck) -> None:
    with _guarded(spec, result, "identify"):
        fields = [f.strip() for f in ddg.identify().split(",")]
        maker, model, serial, firmware = (fields + ["?"] * 4)[:4]
        result.note(spec.table, f"{spec.driver}: {maker} {model}, serial {serial}, "
                                f"firmware {firmware}")
    with _guarded(spec, result, "error queue"):
        if callable(getattr(ddg, "pending_errors", None)):
            codes = ddg.pending_errors()
            if codes:
                from .dg645 import error_meaning

                result.problem(spec.table, "error queue not empty: " + ", ".join(
                    f"{c} ({error_meaning(c)})" for c in codes))
            else:
                result.note(spec.table, "error queue empty")
    with _guarded(spec, result, "outputs check"):
        if callable(getattr(ddg, "outputs_disabled", None)):
            if ddg.outputs_disabled():
                result.note(spec.table, "outputs disabled (nothing fires until a scan)")
            else:
                result.problem(spec.table, "outputs are not disabled after disable_outputs")
    with _guarded(spec, result, "status"):
        if callable(getattr(ddg, "read_status", None)):
            from .dg645 import StatusFlag

            status = ddg.read_status()
            unlocked = status & (StatusFlag.PLL_UNLOCK | StatusFlag.RB_UNLOCK)
            if unlocked:
                result.problem(spec.table, f"time base unlocked: status {unlocked!r}")


def _check_stage(spec: DeviceSpec, stage: Any, result: BenchCheck) -> None:
    with _guarded(spec, result, "identify"):
        if getattr(stage, "idn", ""):
            result.note(spec.table, f"{spec.driver}: {stage.idn}")
        if callable(getattr(stage, "identify", None)):
            for axis, entry in stage.identify().items():
                result.note(spec.table, f"{spec.driver} axis {axis}: device {entry['device']} "
                            f"axis {entry['axis']}, device id {entry['device_id']}, serial "
                            f"{entry['serial']}, firmware {entry['firmware']}, peripheral id "
                            f"{entry['peripheral_id']}, resolution {entry['resolution']}, "
                            f"microstep {entry['microstep_um']:g} µm (from the "
                            f"{entry.get('microstep_source', 'profile')})"
                            + (f", product {entry['product']}" if entry.get("product") else ""))
        if "fullstep_um" in spec.options:
            result.note(spec.table, "microstep_um agrees with fullstep_um and the device's "
                                    "resolution")
        elif spec.driver == "zaber":
            result.note(spec.table, "microstep_um not checked (give fullstep_um, the stage's "
                                    "travel per full step, to check it)")
    with _guarded(spec, result, "limits"):
        for axis, (low, high) in zip("xy", stage.limits(), strict=True):
            if not high > low:
                result.problem(spec.table, f"axis {axis} has no travel: limits {low:g} .. "
                                           f"{high:g} µm")
            else:
                result.note(spec.table, f"axis {axis} limits {low:g} .. {high:g} µm")
    with _guarded(spec, result, "referencing"):
        if callable(getattr(stage, "referenced", None)):
            for axis, done in stage.referenced().items():
                result.note(spec.table, f"axis {axis} " + (
                    "referenced" if done else "not referenced (a scan homes it first)"))
    with _guarded(spec, result, "warnings"):
        if callable(getattr(stage, "axis_warnings", None)):
            for axis, flags in stage.axis_warnings().items():
                faults = sorted(f for f in flags if f.startswith("F"))
                if faults:
                    from .zaber import flag_meaning

                    result.problem(spec.table, f"axis {axis} reports faults: " + "; ".join(
                        f"{f} {flag_meaning(f)}" for f in faults))


def _check_spectrometer(spec: DeviceSpec, device: Any, result: BenchCheck) -> None:
    axis = np.zeros(0)
    with _guarded(spec, result, "wavelength axis"):
        axis = np.asarray(device.wavelength_nm(), dtype=np.float64)
        name = getattr(device, "device", None) or getattr(device, "serial", spec.resource)
        result.note(spec.table, f"{spec.driver}: {name}: {axis.size} px, "
                                f"{axis[0]:.2f} .. {axis[-1]:.2f} nm")
        start, stop = spec.options.get("start_pixel"), spec.options.get("stop_pixel")
        if start is not None and stop is not None and axis.size != stop - start + 1:
            result.problem(spec.table, f"{axis.size} px read, but start_pixel {start} .. "
                                       f"stop_pixel {stop} is {stop - start + 1} px")
        expected = spec.options.get("expected_wavelength_nm")
        if expected is not None:
            low, high = (float(v) for v in expected)
            if (abs(axis[0] - low) > WAVELENGTH_TOLERANCE_NM
                    or abs(axis[-1] - high) > WAVELENGTH_TOLERANCE_NM):
                result.problem(spec.table, f"wavelength range {axis[0]:.2f} .. {axis[-1]:.2f} "
                                           f"nm, but expected_wavelength_nm is {low:g} .. "
                                           f"{high:g} nm (within {WAVELENGTH_TOLERANCE_NM:g} "
                                           "nm)")
    with _guarded(spec, result, "dark frame"):
        device.configure(DARK_INTEGRATION_S)
        device.arm(1, trigger="software")
        try:
            device.wait_frames(DARK_TIMEOUT_S)
            frames = device.read_frames()
        finally:
            device.disarm()
        if len(frames) < 1:
            result.problem(spec.table, "dark frame: no frame arrived")
            return
        counts = frames.counts[0]
        result.note(spec.table, f"dark frame ({DARK_INTEGRATION_S * 1e3:g} ms): mean "
                                f"{counts.mean():.0f}, max {counts.max()} counts")
        if counts.max() >= SATURATION_COUNTS:
            result.problem(spec.table, "dark frame saturates: is the detector covered and "
                                       "the laser off?")


__all__ = ["BenchCheck", "check_bench"]
