"""Device contracts as ``typing.Protocol``: any class with these methods is such a device.

Real drivers and emulators need no common base class; the engine depends only on these
contracts. The three device kinds (DelayGenerator, Stage, Spectrometer) are what every bench
has; the capabilities below them are what only some devices can do, and what a fly scan needs:
the engine asks ``isinstance(device, Capability)`` (all are runtime-checkable) and names what
is missing with `missing_methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class BurstStatus:
    """What a delay generator reported while a burst ran.

    ``triggers_ignored`` and ``inhibited`` mean at least one shot may be missing or blocked, so
    the engine must not assume the full count reached the sample. ``aborted`` means the wait
    stopped early because outputs were disabled from another thread. ``flags`` is the raw OR of
    every device status word read during the wait (device specific, for logs).
    """

    end_of_burst: bool
    triggers_ignored: bool = False
    inhibited: bool = False
    aborted: bool = False
    flags: int = 0


@runtime_checkable
class DelayGenerator(Protocol):
    """A digital delay generator that is the bench's timing master and fires the laser.

    Channel and reference names are the device's own ("T0", "A" ... for a DG645). Times are in
    seconds. ``fire`` starts one software-triggered burst as configured by ``configure_burst``;
    ``wait_end_of_burst`` blocks (never spins) until it has finished. ``disable_outputs`` must
    stop further laser pulses and is safe to call from another thread at any time;
    ``enable_outputs`` undoes it before the next scan.
    """

    def identify(self) -> str: ...

    def set_delay(self, channel: str, reference: str, seconds: float) -> None: ...

    def get_delay(self, channel: str) -> tuple[str, float]: ...

    def configure_burst(
        self,
        count: int,
        period_s: float,
        *,
        delay_s: float = 0.0,
        t0_every_cycle: bool = True,
    ) -> None: ...

    def fire(self) -> None: ...

    def wait_end_of_burst(self, timeout_s: float) -> BurstStatus: ...

    def disable_outputs(self) -> None: ...

    def enable_outputs(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Stage(Protocol):
    """An XY stage. Positions in µm, speeds in µm/s, times in s. Moves and ``home`` start
    motion; ``wait_until_idle`` blocks (never spins) until both axes stop and raises on a
    fault or timeout. ``stop`` is safe to call from another thread at any time."""

    def home(self, axes: Sequence[str] = ("x", "y")) -> None: ...

    def move_absolute(self, x_um: float | None = None, y_um: float | None = None) -> None: ...

    def move_relative(self, dx_um: float = 0.0, dy_um: float = 0.0) -> None: ...

    def position(self) -> tuple[float, float]: ...

    def wait_until_idle(self, timeout_s: float, *, axes: Sequence[str] = ("x", "y")
                        ) -> None: ...

    def set_speed(self, um_per_s: float) -> None: ...

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Frames:
    """Spectra read from an armed spectrometer, oldest first.

    ``counts`` is (n, n_pixels) uint16 detector counts on the ``wavelength_nm()`` axis;
    ``timestamps_s`` is the device's own clock in seconds (unwrapped, monotonic within one
    arm); ``counters`` numbers the frames received since ``arm`` (0, 1, ...), counted by the
    driver, so a missing frame shows only as a timestamp gap, never as a counter gap.
    ``corrupt`` counts the frames the device returned as invalid data since the last read:
    their shots are unknown and show as missing.
    """

    counts: np.ndarray
    timestamps_s: np.ndarray
    counters: np.ndarray
    corrupt: int = 0

    def __len__(self) -> int:
        return int(self.counts.shape[0])


@runtime_checkable
class Spectrometer(Protocol):
    """A spectrometer in (usually external, DDG-driven) trigger mode, split ophyd-async style
    into configure / arm, wait and read. Times in s, wavelengths in nm, intensities in counts.

    ``arm`` prepares the device for ``n_frames`` triggered frames (``trigger`` "hardware" for
    an external edge, "software" for free-running). ``wait_frames`` blocks (never spins) until
    all armed frames have arrived and returns how many are buffered; it raises
    ``InstrumentTimeout`` when they do not arrive in time, and the partial frames stay
    readable. ``read_frames`` returns and clears what is buffered. ``disarm`` stops an armed
    acquisition and is safe to call from another thread.
    """

    def configure(
        self, integration_time_s: float, delay_s: float = 0.0, averages: int = 1
    ) -> None: ...

    def wavelength_nm(self) -> np.ndarray: ...

    def arm(self, n_frames: int, trigger: str = "hardware") -> None: ...

    def wait_frames(self, timeout_s: float) -> int: ...

    def read_frames(self) -> Frames: ...

    def disarm(self) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------- capabilities
@runtime_checkable
class ExternalTrigger(Protocol):
    """A delay generator whose trigger source can be chosen. Sources (DG645 names):
    "SINGLE_SHOT" (`fire` starts one burst), "EXTERNAL_RISING" (every rising edge at the
    trigger input starts a delay cycle), "SINGLE_SHOT_EXTERNAL_RISING" (`fire` arms, the next
    rising edge starts one burst)."""

    def set_trigger_source(self, source: str) -> None: ...


@runtime_checkable
class BurstMode(Protocol):
    """A delay generator whose burst mode can be switched off (one delay cycle per trigger)."""

    def set_burst_mode(self, enabled: bool) -> None: ...


@runtime_checkable
class LatchedStatus(Protocol):
    """A delay generator that latches what happened (ignored triggers, inhibit) until read.
    ``read_burst_status`` reads and clears it, in the device-independent `BurstStatus`."""

    def read_burst_status(self) -> BurstStatus: ...


@runtime_checkable
class DistanceTrigger(Protocol):
    """A stage that toggles a digital output every ``distance_um`` of travel of one axis
    (``count`` toggles, None = until disabled; returns the distance set, a whole number of
    the device's steps), wired to the delay generator's trigger input on a fly-scan bench."""

    def configure_distance_trigger(self, axis: str, distance_um: float, output: int = 1, *,
                                   count: int | None = None) -> float: ...

    def disable_distance_trigger(self, axis: str) -> None: ...

    def set_digital_output(self, axis: str, output: int, level: int) -> None: ...


@runtime_checkable
class IdlePosition(Protocol):
    """A stage whose idle poll carries the position: ``wait_for_position`` waits like
    ``wait_until_idle`` (both axes) and returns the (x, y) position in µm read by the polls
    that found the axes idle, so a measured move needs no position query after it."""

    def wait_for_position(self, timeout_s: float) -> tuple[float, float]: ...


@runtime_checkable
class Reconnect(Protocol):
    """A device that can open its link again after it stopped answering or dropped off the
    bus, with the same settings (what is in flight is lost); raises an InstrumentError while
    the device is not back. The acquisition runner uses it within the bench's [recovery]
    bounds."""

    def reconnect(self) -> None: ...


def missing_methods(device: object, capability: type) -> list[str]:
    """The methods of ``capability`` that ``device`` lacks, sorted (for the message of a
    failed ``isinstance(device, capability)``)."""
    wanted = [name for name, member in vars(capability).items()
              if callable(member) and not name.startswith("_")]
    return sorted(name for name in wanted if getattr(device, name, None) is None)
