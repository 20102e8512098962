"""What a line procedure is: the way one raster line is shot, in a ``prepare`` and a ``shoot``
step, on the devices of one scan (`Shooting`).

The runner calls, for each raster line in turn, ``prepare(line)`` (go to the line's start and
set it up) and then ``shoot(line, following)``; ``prepare`` of a line the previous ``shoot``
already prepared does nothing. A procedure that overlaps the next line's set-up with this
line's read-out (the fly procedures) returns an error of that set-up in `ShotLine.deferred`,
for the runner to raise once this line is on its way to the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from plumelink.drivers.bench import Bench
from plumelink.drivers.protocols import missing_methods

from ..plan import LinePlan
from ..raster_line import RasterLine
from ..scan import ScanConfig
from .ddg_modes import DdgModes
from .handle import ScanHandle
from .readout import Readout
from .stage_motion import StageMotion


@dataclass(frozen=True)
class Shooting:
    """The devices of one scan as the line procedures use them."""

    scan: ScanConfig
    bench: Bench
    handle: ScanHandle
    stage: StageMotion
    ddg: DdgModes
    readout: Readout
    n_px: dict[str, int]  # pixels of each system's spectra

    @property
    def period_s(self) -> float:
        """The laser period (simulated seconds on the simulated bench)."""
        return self.readout.period_s

    def real_s(self, seconds: float) -> float:
        """A planned (bench) duration in real seconds."""
        return seconds / self.bench.time_scale


@dataclass(frozen=True)
class ShotLine:
    """A raster line just shot, with the reasons its invalid spots are invalid; ``deferred``:
    an error of the next line's set-up, to raise once this line is written."""

    line: RasterLine
    reasons: dict[str, list[str]]
    deferred: BaseException | None = None


class LineProcedure:
    """How raster lines are shot; ``name`` is the plan's name for it (`plan.PROCEDURES`)."""

    name: ClassVar[str]
    requirement: ClassVar[str] = ""  # what `needs` asks of the bench, in words

    def __init__(self, shooting: Shooting) -> None:
        self.shooting = shooting

    def needs(self) -> list[tuple[Any, type]]:
        """(device, capability) pairs this procedure needs beyond the three device kinds."""
        return []

    def check(self) -> None:
        """Refuse a bench that lacks a capability this procedure needs, before anything moves."""
        for device, capability in self.needs():
            if not isinstance(device, capability):
                missing = ", ".join(f"{m}()" for m in missing_methods(device, capability))
                driver = getattr(device, "watched", device)  # the driver behind `Watched`
                raise NotImplementedError(
                    f"{self.shooting.scan.source}: {self.name} needs {self.requirement}; "
                    f"{type(driver).__name__} has no {missing} ({capability.__name__})")

    def configure(self) -> None:
        """Scan-wide settings of this procedure, once before the first line."""

    def prepare(self, line: LinePlan) -> None:
        raise NotImplementedError

    def shoot(self, line: LinePlan, following: LinePlan | None) -> ShotLine:
        raise NotImplementedError


__all__ = ["LineProcedure", "Shooting", "ShotLine"]
