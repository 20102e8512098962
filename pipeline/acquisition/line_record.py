"""The arrays of one raster line while it is shot, then the `RasterLine` the map stores."""

from __future__ import annotations

import numpy as np

from ..plan import LinePlan
from ..raster_line import RasterLine, SystemLine
from ..shot_pairing import BurstPairing, PassResult, SpotResult
from .readout import SYSTEMS


class LineRecord:
    """One raster line being shot, in storage order (the order the map keeps a line in);
    ``first_frame`` turns a burst's frame index into the scan-wide frame id."""

    def __init__(self, line: LinePlan, n_px: dict[str, int]) -> None:
        n = line.n_spots
        self.line = line
        self.spectra = {s: np.zeros((n, n_px[s]), np.uint16) for s in SYSTEMS}
        self.valid = {s: np.zeros(n, bool) for s in SYSTEMS}
        self.frame_id = {s: np.full(n, -1, np.int64) for s in SYSTEMS}
        self.timestamp_s = {s: np.full(n, np.nan) for s in SYSTEMS}
        self.x_measured_um, self.y_measured_um = np.full(n, np.nan), np.full(n, np.nan)
        self.shot_id = np.full(n, -1, np.int64)
        self.reasons: dict[str, list[str]] = {s: [] for s in SYSTEMS}

    def put_spot(self, col: int, spot: dict[str, SpotResult], first_frame: dict[str, int],
                 at_um: tuple[float, float], first_shot: int) -> None:
        """A step-and-shoot spot at storage position ``col``, shot with the stage at ``at_um``
        by the burst whose first shot is the map's shot ``first_shot``."""
        self.x_measured_um[col], self.y_measured_um[col] = at_um
        self.shot_id[col] = first_shot
        for system in SYSTEMS:
            result = spot[system]
            if result.spectrum is None:
                self.reasons[system].append(f"spot {col}: {result.reason}")
                continue
            self.spectra[system][col] = result.spectrum
            self.valid[system][col] = True
            self.frame_id[system][col] = first_frame[system] + result.frame
            self.timestamp_s[system][col] = result.timestamp_s

    def put_pass(self, burst: BurstPairing, passed: dict[str, PassResult],
                 first_frame: dict[str, int], first_shot: int) -> None:
        """A fly pass, one shot per spot, its first shot the map's shot ``first_shot``;
        positions are the trigger positions (the plan's)."""
        line = self.line
        cols = line.storage_index
        self.x_measured_um[cols], self.y_measured_um[cols] = line.x_um, line.y_um
        self.shot_id[cols] = first_shot + np.arange(cols.size, dtype=np.int64)
        for system in SYSTEMS:
            result, frames = passed[system], burst.frames[system]
            kept = result.frame_of_shot[result.kept]
            at = cols[result.kept]
            self.spectra[system][at] = frames.counts[kept]
            self.valid[system][at] = True
            self.frame_id[system][at] = first_frame[system] + kept
            self.timestamp_s[system][at] = frames.timestamps_s[kept]
            self.reasons[system] += [f"spot {int(cols[j])}: {why}" for j, why in result.reasons]

    def finish(self) -> RasterLine:
        line = self.line
        systems = {s: SystemLine(self.spectra[s], self.valid[s], self.frame_id[s],
                                 self.timestamp_s[s]) for s in SYSTEMS}
        order = np.argsort(line.storage_index)
        return RasterLine(
            index=line.index, x_um=line.x_um[order].astype(np.float64),
            y_um=line.y_um[order].astype(np.float64), x_measured_um=self.x_measured_um,
            y_measured_um=self.y_measured_um, shot_id=self.shot_id,
            primary=systems["primary"], secondary=systems["secondary"])


__all__ = ["LineRecord"]
