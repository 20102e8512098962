"""Pairing frames of two spectrometers by shot: which frame of each system belongs to which
shot of a DDG burst, decided from the device timestamps only.

Each spectrometer stamps its frames on its own free-running clock. Within one burst the shots
are ``period_s`` apart, so a frame's shot index is ``round((t - anchor) / period)`` once the
device time of shot 0 (the *anchor*) is known. A system fixes its own anchor when its frames
span the whole burst (first and last shot present: interior gaps are then unambiguous). When
they do not (a missed first or last trigger), the anchor comes from the other system through
the offset between the two device clocks, learnt on bursts where both fixed their own anchor.
If neither is possible the frames of that system cannot be matched with certainty and every
shot of the burst is flagged for it; nothing is ever shifted to fill a gap.

Per shot and system the result is one frame index or -1, with a reason code (`SHOT_*`).

From shots to spots: a burst's pairing (`BurstPairing`) becomes what the map keeps of the
spot. Step-and-shoot (`reduce_spot`, several shots per spot): the mean of the shots valid on
both systems; a system whose frames are all missing leaves the other system's shots valid on
their own (the spot is then unpaired). A fly pass (`reduce_pass`, one shot per spot): a system
keeps its frame of a shot when the other systems all have theirs or all lack theirs (with two
systems each keeps its own frames; a shot one of them missed is unpaired). Every spot a system
loses carries its reason ("spot 12: missing").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from plumelink.drivers.protocols import Frames

SHOT_OK = 0
SHOT_MISSING = 1  # no frame arrived for this shot
SHOT_DUPLICATE = 2  # two different frames claim the shot
SHOT_AMBIGUOUS = 3  # frames arrived but their shots cannot be known with certainty
SHOT_CORRUPT = 4  # missing, and the device returned as many corrupt frames in the burst

REASONS = {SHOT_OK: "ok", SHOT_MISSING: "missing", SHOT_DUPLICATE: "duplicate",
           SHOT_AMBIGUOUS: "ambiguous", SHOT_CORRUPT: "corrupt frame"}

TOLERANCE = 0.25  # of a period: how far a timestamp may sit from its shot's slot


@dataclass(frozen=True)
class SystemPairing:
    """The shots of one burst as seen by one system."""

    frame_of_shot: np.ndarray  # (n_shots,) int64 index into the frames read, -1 none
    reason: np.ndarray  # (n_shots,) uint8 SHOT_* code
    anchor_s: float | None  # device time of shot 0; None when unknown
    self_anchored: bool  # the anchor came from this system's own frames
    discarded: int  # frames not assigned to any shot (stale, stray, duplicates)

    @property
    def valid(self) -> np.ndarray:
        return self.reason == SHOT_OK

    def timestamps(self, frames: Frames) -> np.ndarray:
        """Device time of each shot's frame, NaN where none."""
        out = np.full(self.frame_of_shot.shape, np.nan)
        ok = self.frame_of_shot >= 0
        out[ok] = frames.timestamps_s[self.frame_of_shot[ok]]
        return out


def _burst_cluster(t: np.ndarray, n_shots: int, period_s: float) -> np.ndarray:
    """Indices (time order) of the largest group of frames that can belong to one burst.

    Frames further apart than a whole burst from their neighbour start a new group, so a
    stale frame of an earlier burst (delivered late) is not mistaken for shot 0.
    """
    order = np.argsort(t, kind="stable")
    if order.size <= 1:
        return order
    split = np.flatnonzero(np.diff(t[order]) > n_shots * period_s) + 1
    groups = np.split(order, split)
    sizes = [len(g) for g in groups]
    if sizes.count(max(sizes)) > 1:  # two equally likely bursts: neither can be chosen
        return order[:0]
    return max(groups, key=len)


def _own_anchor(t: np.ndarray, idx: np.ndarray, n_shots: int, period_s: float) -> float | None:
    """Device time of shot 0 when these frames show both the first and the last shot."""
    if idx.size == 0:
        return None
    first, last = t[idx[0]], t[idx[-1]]
    span = (last - first) / period_s
    if abs(span - (n_shots - 1)) <= TOLERANCE:
        return float(first)
    return None


def assign(frames: Frames, n_shots: int, period_s: float, anchor_s: float | None
           ) -> SystemPairing:
    """Assign frames to shot slots given the anchor (None: use the frames' own span)."""
    t = np.asarray(frames.timestamps_s, dtype=np.float64)
    frame_of_shot = np.full(n_shots, -1, dtype=np.int64)
    reason = np.full(n_shots, SHOT_MISSING, dtype=np.uint8)
    usable = np.flatnonzero(np.isfinite(t))
    t_use = t[usable]
    cluster = usable[_burst_cluster(t_use, n_shots, period_s)] if usable.size else usable
    own = _own_anchor(t, cluster, n_shots, period_s)
    self_anchored = own is not None
    anchor = own if own is not None else anchor_s
    if anchor is None:
        if t.size:
            reason[:] = SHOT_AMBIGUOUS
        return SystemPairing(frame_of_shot, reason, None, False, int(t.size))
    slot = (t - anchor) / period_s
    k = np.rint(slot)
    fits = np.isfinite(slot) & (np.abs(slot - k) <= TOLERANCE) & (k >= 0) & (k < n_shots)
    assigned = 0
    for i in np.flatnonzero(fits):
        shot = int(k[i])
        j = frame_of_shot[shot]
        if j < 0 and reason[shot] == SHOT_MISSING:
            frame_of_shot[shot] = i
            reason[shot] = SHOT_OK
            assigned += 1
        elif j >= 0 and np.array_equal(frames.counts[j], frames.counts[i]):
            continue  # the same frame sent twice: keep one
        else:  # two different frames for one shot: neither can be trusted
            if j >= 0:
                assigned -= 1
            frame_of_shot[shot] = -1
            reason[shot] = SHOT_DUPLICATE
    return SystemPairing(frame_of_shot, reason, float(anchor), self_anchored,
                         int(t.size) - assigned)


def _complete(p: SystemPairing) -> bool:
    """Every shot has its own frame and no frame is left over."""
    return p.self_anchored and bool(p.valid.all()) and p.discarded == 0


def _corrupt(p: SystemPairing, corrupt: int) -> SystemPairing:
    """Missing shots say "corrupt frame" when the device returned at least as many corrupt
    frames in the burst (which of the missing shots they were is unknown)."""
    missing = p.reason == SHOT_MISSING
    if corrupt <= 0 or not 0 < missing.sum() <= corrupt:
        return p
    return replace(p, reason=np.where(missing, np.uint8(SHOT_CORRUPT), p.reason))


def _ambiguous(frames: Frames, n_shots: int) -> SystemPairing:
    reason = np.full(n_shots, SHOT_AMBIGUOUS if len(frames) else SHOT_MISSING, dtype=np.uint8)
    return SystemPairing(np.full(n_shots, -1, dtype=np.int64), reason, None, False, len(frames))


@dataclass
class Pairer:
    """Pairs the frames of several systems burst after burst, learning the offsets between
    their device clocks (each system's anchor minus the first system's) on the way."""

    systems: tuple[str, ...] = ("primary", "secondary")
    offsets_s: dict[str, float] = field(default_factory=dict)
    max_offset_jump: float = TOLERANCE  # periods; a larger change is logged by the caller
    clock_jumps: int = 0  # times the offsets were learnt again after a clock jump
    _new_offsets: dict[str, float] | None = field(default=None, repr=False)

    def pair(self, frames: dict[str, Frames], n_shots: int, period_s: float
             ) -> dict[str, SystemPairing]:
        """Pair one burst of ``n_shots`` shots ``period_s`` apart."""
        if n_shots < 1:
            raise ValueError(f"a burst has at least one shot, got {n_shots}")
        if not period_s > 0:
            raise ValueError(f"burst period must be > 0 s, got {period_s}")
        missing = set(self.systems) - set(frames)
        if missing:
            raise ValueError(f"no frames given for {sorted(missing)}")
        first = self.systems[0]
        own = {s: assign(frames[s], n_shots, period_s, None) for s in self.systems}
        if self._conflict(own, period_s):
            # Self-anchored systems disagree with the clock offsets learnt so far: either one
            # of them anchored on a stray frame (a late frame of an earlier burst) or a device
            # clock jumped (a unit restarted). Nothing in this burst says which, so none of
            # its frames is trusted; a jump is accepted, and the offsets learnt again, when
            # the next burst, whole on every system, shows the same new offsets.
            if not self._jump_confirmed(own, period_s):
                return {s: _ambiguous(frames[s], n_shots) for s in self.systems}
            self.offsets_s.clear()
            self.clock_jumps += 1
        else:
            self._new_offsets = None
        # learn clock offsets from systems that anchored themselves
        if own[first].self_anchored:
            for s in self.systems[1:]:
                if own[s].self_anchored:
                    self.offsets_s[s] = own[s].anchor_s - own[first].anchor_s  # type: ignore[operator]
        reference = self._reference_anchor(own)
        out = {}
        for s in self.systems:
            if own[s].self_anchored or reference is None:
                out[s] = own[s]
                continue
            offset = 0.0 if s == first else self.offsets_s.get(s)
            if offset is None:
                out[s] = own[s]
                continue
            out[s] = assign(frames[s], n_shots, period_s, reference + offset)
        return {s: _corrupt(p, frames[s].corrupt) for s, p in out.items()}

    def _jump_confirmed(self, own: dict[str, SystemPairing], period_s: float) -> bool:
        if not all(_complete(own[s]) for s in self.systems):
            self._new_offsets = None
            return False
        first = self.systems[0]
        offsets = {s: own[s].anchor_s - own[first].anchor_s  # type: ignore[operator]
                   for s in self.systems[1:]}
        seen, self._new_offsets = self._new_offsets, offsets
        return seen is not None and all(abs(offsets[s] - seen[s]) <= TOLERANCE * period_s
                                        for s in offsets)

    def _conflict(self, own: dict[str, SystemPairing], period_s: float) -> bool:
        first = self.systems[0]
        anchored = [s for s in self.systems if own[s].self_anchored
                    and (s == first or s in self.offsets_s)]
        shot0 = [own[s].anchor_s - (0.0 if s == first else self.offsets_s[s])  # type: ignore[operator]
                 for s in anchored]
        return len(shot0) > 1 and (max(shot0) - min(shot0)) > TOLERANCE * period_s

    def _reference_anchor(self, own: dict[str, SystemPairing]) -> float | None:
        """Shot 0 on the first system's clock, from any self-anchored system."""
        first = self.systems[0]
        if own[first].self_anchored:
            return own[first].anchor_s
        for s in self.systems[1:]:
            if own[s].self_anchored and s in self.offsets_s:
                return own[s].anchor_s - self.offsets_s[s]  # type: ignore[operator]
        return None


# ---------------------------------------------------------------------------- shots -> spots
@dataclass(frozen=True)
class BurstPairing:
    """One burst's frames of every system, paired by shot."""

    pairing: dict[str, SystemPairing]
    frames: dict[str, Frames]

    def distrusted(self) -> BurstPairing:
        """Every shot ambiguous on every system: shots may have been blocked at the laser (the
        DDG reported an inhibit), so no frame can be trusted either way."""
        return BurstPairing({s: replace(p, frame_of_shot=np.full_like(p.frame_of_shot, -1),
                                        reason=np.full_like(p.reason, SHOT_AMBIGUOUS))
                             for s, p in self.pairing.items()}, self.frames)

    def paired(self) -> np.ndarray:
        """Indices of the shots valid on every system."""
        return np.flatnonzero(np.logical_and.reduce([p.valid for p in self.pairing.values()]))

    def spot_valid(self) -> dict[str, bool]:
        """A spot is valid for a system when it has a shot valid on both systems, or when it
        has shots and the other system has none (that spot is then unpaired anyway)."""
        both = self.paired()
        out = {}
        for system, pairing in self.pairing.items():
            others = [p for s, p in self.pairing.items() if s != system]
            other_has = any(p.valid.any() for p in others)
            out[system] = both.size > 0 or (pairing.valid.any() and not other_has)
        return out

    def why(self) -> str:
        """What went wrong with the burst, per system ("ok" when nothing)."""
        parts = []
        for system, p in self.pairing.items():
            bad = [REASONS[int(r)] for r in p.reason if r]
            if bad:
                parts.append(f"{system}: {', '.join(sorted(set(bad)))}")
        return "; ".join(parts) or "ok"


@dataclass(frozen=True)
class SpotResult:
    """What one system keeps of a step-and-shoot spot: its spectrum (raw counts; the rounded
    mean of the shots used), the index of the first frame used among the burst's frames and
    that frame's device time; or, for an invalid spot, why (spectrum None, frame -1)."""

    spectrum: np.ndarray | None
    frame: int = -1
    timestamp_s: float = float("nan")
    reason: str = ""


def reduce_spot(burst: BurstPairing) -> dict[str, SpotResult]:
    """The spot of a burst of ``shots_per_spot`` shots, per system (see the module doc)."""
    both = burst.paired()
    ok = burst.spot_valid()
    out = {}
    for system, p in burst.pairing.items():
        if not ok[system]:
            bad = sorted({REASONS[int(r)] for r in p.reason if r} or {"unpaired"})
            out[system] = SpotResult(None, reason=", ".join(bad))
            continue
        f = burst.frames[system]
        frames_used = p.frame_of_shot[both if both.size else np.flatnonzero(p.valid)]
        counts = f.counts[frames_used]
        spectrum = (counts[0] if counts.shape[0] == 1 else
                    np.rint(counts.mean(axis=0)).astype(np.uint16))
        first = int(frames_used[0])
        out[system] = SpotResult(spectrum, first, float(f.timestamps_s[first]))
    return out


@dataclass(frozen=True)
class PassResult:
    """What one system keeps of a fly pass, per shot (= spot) in shot order: ``kept`` and,
    where kept, ``frame_of_shot`` (index among the pass's frames); ``reasons`` the shots lost,
    as (shot, why)."""

    kept: np.ndarray
    frame_of_shot: np.ndarray
    reasons: list[tuple[int, str]]


def reduce_pass(burst: BurstPairing) -> dict[str, PassResult]:
    """The spots of a fly pass, one shot each, per system (see the module doc)."""
    out = {}
    for system, p in burst.pairing.items():
        other = [q.valid for s, q in burst.pairing.items() if s != system]
        kept = p.valid & (np.logical_and.reduce(other) | ~np.logical_or.reduce(other))
        lost = [(int(j), REASONS[int(p.reason[j])] if p.reason[j] else "unpaired")
                for j in np.flatnonzero(~kept)]
        out[system] = PassResult(kept, p.frame_of_shot, lost)
    return out


__all__ = [
    "REASONS",
    "SHOT_AMBIGUOUS",
    "SHOT_CORRUPT",
    "SHOT_DUPLICATE",
    "SHOT_MISSING",
    "SHOT_OK",
    "BurstPairing",
    "Pairer",
    "PassResult",
    "SpotResult",
    "SystemPairing",
    "assign",
    "reduce_pass",
    "reduce_spot",
]
