"""Both spectrometers of a scan: arm them for a burst, then read, pair and count its frames."""

from __future__ import annotations

import logging

from plumelink.drivers.errors import InstrumentTimeout
from plumelink.drivers.protocols import BurstStatus, Spectrometer

from ..shot_pairing import BurstPairing, Pairer

log = logging.getLogger(__name__)

SYSTEMS = ("primary", "secondary")
FRAME_TIMEOUT_MARGIN_S = 0.5  # beyond the burst's own duration (real seconds)


class Readout:
    """Arms the spectrometers of ``SYSTEMS`` and pairs each burst's frames by shot (one
    `Pairer` for the scan: it learns the offsets between the device clocks on the way).

    Counts the shots this run fired (``shots``) and numbers shots and frames map-wide:
    ``first_shot`` and ``first_frame[system]`` are the map's ids of the first shot and frame of
    the burst read last (``shot_id`` and ``frame_id`` in the map). A resumed map's ids go on
    from ``next_shot`` and ``next_frame``, so they stay unique within the map.
    """

    def __init__(self, spectrometers: dict[str, Spectrometer], period_s: float, *,
                 next_shot: int = 0, next_frame: dict[str, int] | None = None) -> None:
        self._spectrometers = {s: spectrometers[s] for s in SYSTEMS}
        self.period_s = period_s
        self._pairer = Pairer(SYSTEMS)
        self.shots = 0
        self._next_shot = self.first_shot = next_shot
        self._next_frame = {s: (next_frame or {}).get(s, 0) for s in SYSTEMS}
        self.first_frame = dict(self._next_frame)

    def arm(self, n_frames: int) -> None:
        for spectrometer in self._spectrometers.values():
            spectrometer.arm(n_frames, "hardware")

    def read(self, n_shots: int, status: BurstStatus, period_s: float | None = None
             ) -> BurstPairing:
        """Read both spectrometers' frames of a finished burst of ``n_shots`` and pair them by
        shot (shots ``period_s`` apart, by default the laser period)."""
        frames = {}
        for system, spectrometer in self._spectrometers.items():
            try:
                spectrometer.wait_frames(FRAME_TIMEOUT_MARGIN_S)
            except InstrumentTimeout as exc:
                log.warning("%s: %s", system, exc)
            frames[system] = spectrometer.read_frames()
            spectrometer.disarm()
            self.first_frame[system] = self._next_frame[system]
            self._next_frame[system] += len(frames[system])
        self.first_shot = self._next_shot
        self._next_shot += n_shots
        self.shots += n_shots
        burst = BurstPairing(self._pairer.pair(frames, n_shots, period_s or self.period_s),
                             frames)
        return burst.distrusted() if status.inhibited else burst


__all__ = ["FRAME_TIMEOUT_MARGIN_S", "SYSTEMS", "Readout"]
