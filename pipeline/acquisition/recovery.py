"""Device faults during a scan: which device failed, and the bounded retries and reconnects
that the bench profile's ``[recovery]`` table allows (`RecoverySpec`).

The runner shoots every raster line through `Recovery.attempts`: when a spectrometer or the
stage raises an InstrumentError (a timeout, a dropped link, a garbled reply; never a refused
setting, never the delay generator, whose failure ends the scan at once), the line in flight
is given up, the DDG outputs are disabled, the device is reconnected where it can be
(`protocols.Reconnect`, at most ``reconnects`` attempts ``wait_s`` apart) and the line is shot
again from its start, at most ``line_retries`` times. Every step is a row of the map's device
event log (`MapWriter.log_device_event`) and counted here; once the bounds are spent the
scan ends with `DeviceLost`, which the runner records as the map's status reason. Lines
already written are never touched.

Which device failed is known without guessing from messages: the runner hands the line
procedures the bench's spectrometers and stage behind `Watched`, which marks an
InstrumentError leaving a device with that device's role.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from plumelink.drivers.bench import Bench, RecoverySpec
from plumelink.drivers.errors import InstrumentError, SettingOutOfRange
from plumelink.drivers.protocols import Reconnect

from .handle import ScanAborted, ScanHandle

log = logging.getLogger(__name__)

ROLE_ATTR = "plumelink_device_role"  # set on an InstrumentError by `Watched`
STAGE = "stage"


class DeviceLost(InstrumentError):
    """A spectrometer or the stage kept failing after every retry and reconnect the bench
    profile's [recovery] table allows; ``__cause__`` is its last error."""


class Watched:
    """A device as the line procedures see it: every attribute and method of ``device``,
    and an InstrumentError raised by one of its methods carries ``role`` (`failed_role`).
    Attribute writes go to the device (e.g. ``timeout_s``)."""

    def __init__(self, device: Any, role: str) -> None:
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_role", role)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._device, name)
        if not callable(value):
            return value
        role = self._role

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except InstrumentError as exc:
                if not hasattr(exc, ROLE_ATTR):
                    setattr(exc, ROLE_ATTR, role)
                raise

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._device, name, value)

    @property
    def device(self) -> Any:  # the device's own ``device`` name where it has one
        return getattr(self._device, "device", self._role)

    @property
    def watched(self) -> Any:
        """The device itself."""
        return self._device


def watched_bench(bench: Bench) -> Bench:
    """The bench with its stage and spectrometers behind `Watched` (the DDG as it is)."""
    return replace(bench, stage=Watched(bench.stage, STAGE),
                   spectrometers={role: Watched(d, role)
                                  for role, d in bench.spectrometers.items()})


def failed_role(exc: BaseException) -> str | None:
    """The role of the watched device whose fault ``exc`` is, None when ``exc`` is not a
    device fault that a retry could cure (another error, a refused setting, the DDG)."""
    if not isinstance(exc, InstrumentError) or isinstance(exc, SettingOutOfRange | DeviceLost):
        return None
    return getattr(exc, ROLE_ATTR, None)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class RecoveryCounts:
    """What `Recovery` did during one run."""

    faults: int = 0
    retries: int = 0
    reconnects: int = 0
    reconnects_failed: int = 0
    by_device: dict[str, int] = field(default_factory=dict)  # faults per role


class Recovery:
    """The bounded retries of one scan (see the module docstring). ``log_event(device,
    event, line, attempt, message)`` writes one row of the map's device event log;
    ``reconfigure(role)`` puts the scan's settings on a device again after a reconnect."""

    def __init__(self, spec: RecoverySpec, bench: Bench, handle: ScanHandle,
                 log_event: Callable[[str, str, int, int, str], None],
                 reconfigure: Callable[[str], None]) -> None:
        self.spec = spec
        self._bench = bench
        self._handle = handle
        self._log_event = log_event
        self._reconfigure = reconfigure
        self.counts = RecoveryCounts()

    def failed(self, exc: BaseException, line: int, attempt: int) -> None:
        """The ``attempt``-th try of raster line ``line`` raised ``exc``: re-raise what no
        retry can cure; else log the fault, recover the device and return (the line may be
        shot again), or raise `DeviceLost` once the bounds are spent."""
        role = failed_role(exc)
        if role is None or isinstance(exc, ScanAborted):
            raise exc
        counts = self.counts
        counts.faults += 1
        counts.by_device[role] = counts.by_device.get(role, 0) + 1
        with _suppressed("disabling the DDG outputs after a device fault"):
            self._bench.delay_generator.disable_outputs()  # nothing fires while we recover
        what = _describe(exc)
        log.warning("line %d: %s failed (%s)", line, role, what)
        self._log_event(role, "fault", line, attempt, what)
        if attempt > self.spec.line_retries:
            self._give_up(role, line, attempt, exc,
                          f"raster line {line} failed {attempt} times "
                          f"({self.spec.line_retries} retries allowed)")
        device = self._device(role)
        if isinstance(device, Reconnect):
            self._reconnect(role, device, line, attempt, exc)
        elif self._handle.sleep(self.spec.wait_s):
            self._handle.check()
        self._handle.check()
        counts.retries += 1
        self._log_event(role, "retry", line, attempt, f"raster line {line} shot again")
        self._bench.delay_generator.enable_outputs()

    def _reconnect(self, role: str, device: Any, line: int, attempt: int,
                   exc: BaseException) -> None:
        last: BaseException = exc
        for k in range(1, self.spec.reconnects + 1):
            if self._handle.sleep(self.spec.wait_s):
                self._handle.check()
            try:
                device.reconnect()
                self._reconfigure(role)
            except InstrumentError as error:
                last = error
                self.counts.reconnects_failed += 1
                self._log_event(role, "reconnect_failed", line, attempt,
                                f"reconnect {k} of {self.spec.reconnects}: {_describe(error)}")
                continue
            self.counts.reconnects += 1
            self._log_event(role, "reconnect", line, attempt,
                            f"reconnect {k} of {self.spec.reconnects} succeeded")
            return
        self._give_up(role, line, attempt, last,
                      f"{self.spec.reconnects} reconnect attempts failed")

    def _give_up(self, role: str, line: int, attempt: int, exc: BaseException,
                 why: str) -> None:
        message = (f"{self._label(role)} stopped answering: {why}; last error "
                   f"{_describe(exc)}")
        self._log_event(role, "gave_up", line, attempt, message)
        raise DeviceLost(message) from exc

    def _device(self, role: str) -> Any:
        device = self._bench.stage if role == STAGE else self._bench.spectrometers[role]
        return device.watched if isinstance(device, Watched) else device

    def _label(self, role: str) -> str:
        device = self._device(role)
        name = getattr(device, "device", None) or getattr(device, "name", None)
        kind = "stage" if role == STAGE else f"{role} spectrometer"
        return f"{kind} ({name})" if name and name != role else kind


class _suppressed:
    """Log and swallow an exception of a best-effort safety step."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            log.error("%s failed: %s", self.what, exc)
            return True
        return False


__all__ = ["DeviceLost", "Recovery", "RecoveryCounts", "Watched", "failed_role",
           "watched_bench"]
