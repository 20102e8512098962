"""Raster plans: a validated scan turned into its ordered raster lines, as plain data.

A plan is what the acquisition engine executes and what a person reads before pressing start
(STYLE.md: a scan is a plan that can be printed and dry-run). `make_plan` needs no hardware;
`dry_run` also checks the bench profile (a file, no device is opened); `format_plan` prints it.
The plan names the line procedure that shoots its lines (`PROCEDURES`: step-and-shoot, fly on
the DDG clock, fly on the stage's distance trigger); the engine runs the procedure of that name.

A raster line is what the stage shoots in one go: for horizontal orders a row at fixed y (spots
along x), for vertical orders a column at fixed x (spots along y). A plan has (n_lines, n_spots)
spots; the map file always holds them as (ny, nx), a vertical line being one of its columns.
`LinePlan.storage_index` gives, for each shot in shot order, its position within the stored
line (reversed on odd lines of a snake).

Duration estimate (acceleration-free): a move takes max(|dx|, |dy|) / stage speed (both axes
move at once); step mode: every move is followed by ``settle_s``, every spot by a burst of
``shots_per_spot`` shots taking ``shots_per_spot / rate_hz``; fly mode: between lines a move
at stage speed plus ``settle_s``, each line one pass of ``(n_spots - 1) * step + 2 * run_up``
at the fly speed (with a stage-distance trigger the pass starts one step before the first spot
instead of ``run_up``); every line adds ``line_overhead_s``. The stage starts at the first
position.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .raster import line_axis, shot_order
from .scan import ScanConfig, ScanError, load_scan

MODE_NAMES = {"step": "step-and-shoot", "fly": "fly scan"}

STEP_AND_SHOOT = "step-and-shoot"
FLY_DDG_CLOCK = "fly-ddg-clock"
FLY_STAGE_DISTANCE = "fly-stage-distance"
#: the line procedures a plan can choose, with what each does per raster line
PROCEDURES = {
    STEP_AND_SHOOT: "per spot: move, settle, one DDG burst of shots_per_spot shots",
    FLY_DDG_CLOCK: "one pass at constant speed; the stage's distance trigger starts a DDG "
                   "burst at the first spot, the DDG clock spaces the shots",
    FLY_STAGE_DISTANCE: "one pass at constant speed; each step of the stage's distance trigger "
                        "fires one DDG shot",
}


def procedure_for(scan: ScanConfig) -> str:
    """The line procedure that shoots ``scan``'s lines (a key of `PROCEDURES`)."""
    if scan.mode != "fly":
        return STEP_AND_SHOOT
    assert scan.fly is not None  # validated: mode "fly" always has fly settings
    return FLY_STAGE_DISTANCE if scan.fly.trigger == "stage-distance" else FLY_DDG_CLOCK


@dataclass(frozen=True)
class FlyPass:
    """One constant-speed pass of a fly scan line, positions in µm.

    The stage moves from ``start_um`` to ``end_um`` at ``speed_um_s``; the first shot fires
    ``first_shot_delay_s`` after it leaves the start (the run-up), then one every
    ``trigger_spacing_um`` of travel (DDG clock at the laser rate, or the stage's own trigger).
    """

    start_um: tuple[float, float]
    end_um: tuple[float, float]
    speed_um_s: float
    trigger: str
    trigger_spacing_um: float
    first_shot_delay_s: float
    duration_s: float


@dataclass(frozen=True, eq=False)
class LinePlan:
    """One raster line; arrays are in shot order."""

    index: int
    x_um: np.ndarray
    y_um: np.ndarray
    storage_index: np.ndarray  # position of each shot's spot within the stored line
    shots_per_spot: int
    first_spot: int  # spot number (scan order) of the first spot of this line
    duration_s: float  # estimate: approach move and settle, shooting, line overhead
    fly: FlyPass | None = None

    @property
    def n_spots(self) -> int:
        return int(self.storage_index.size)

    @property
    def n_shots(self) -> int:
        return self.n_spots * self.shots_per_spot

    @property
    def first_shot(self) -> int:
        return self.first_spot * self.shots_per_spot


@dataclass(frozen=True)
class Estimate:
    """Duration estimate of a whole plan, split by cause (seconds)."""

    move_s: float
    settle_s: float
    shoot_s: float  # step mode: the bursts; fly mode: the constant-speed passes
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.move_s + self.settle_s + self.shoot_s + self.overhead_s


@dataclass(frozen=True, eq=False)
class RasterPlan:
    """The ordered raster lines of a scan; ``x_um``, ``y_um`` are the grid axes."""

    scan: ScanConfig
    order: str
    mode: str
    procedure: str  # the line procedure that shoots the lines (a key of `PROCEDURES`)
    line_axis: str  # "y": a line is a row at fixed y; "x": a column at fixed x
    x_um: np.ndarray
    y_um: np.ndarray
    lines: tuple[LinePlan, ...]
    rate_hz: float
    shots_per_spot: int
    estimate: Estimate

    @property
    def n_lines(self) -> int:
        return len(self.lines)

    @property
    def n_spots(self) -> int:
        """Spots per raster line."""
        return self.lines[0].n_spots

    @property
    def shape(self) -> tuple[int, int]:
        """(n_lines, n_spots): the stored shape of the map."""
        return self.n_lines, self.n_spots

    @property
    def line_coords_um(self) -> np.ndarray:
        """The fixed coordinate of each line (y for horizontal orders, x for vertical)."""
        return self.y_um if self.line_axis == "y" else self.x_um

    @property
    def spot_coords_um(self) -> np.ndarray:
        """The coordinate along a line, in storage order."""
        return self.x_um if self.line_axis == "y" else self.y_um

    @property
    def total_spots(self) -> int:
        return self.n_lines * self.n_spots

    @property
    def total_shots(self) -> int:
        return self.total_spots * self.shots_per_spot

    @property
    def duration_s(self) -> float:
        return self.estimate.total_s

    def positions(self) -> np.ndarray:
        """Every spot in shot order, (total_spots, 2) of (x, y) µm."""
        return np.concatenate([np.column_stack([ln.x_um, ln.y_um]) for ln in self.lines])

    def grid_indices(self, line: LinePlan) -> tuple[np.ndarray, np.ndarray]:
        """(iy, ix) grid indices of each shot of ``line``, in shot order."""
        fixed = np.full(line.n_spots, line.index)
        if self.line_axis == "y":
            return fixed, line.storage_index
        return line.storage_index, fixed


def _move_s(a: tuple[float, float], b: tuple[float, float], speed: float) -> float:
    return max(abs(b[0] - a[0]), abs(b[1] - a[1])) / speed


def make_plan(scan: ScanConfig) -> RasterPlan:
    """The raster plan of a validated scan, with its duration estimate. Touches no hardware."""
    region = scan.region
    x_um = region.origin_um[0] + region.step_um * np.arange(region.nx, dtype=np.float64)
    y_um = region.origin_um[1] + region.step_um * np.arange(region.ny, dtype=np.float64)
    axis = line_axis(scan.order)
    fixed, along = (y_um, x_um) if axis == "y" else (x_um, y_um)
    speed, settle = scan.stage.speed_um_s, scan.stage.settle_s
    burst_s = scan.shots_per_spot / scan.rate_hz
    move = settle_total = shoot = 0.0
    previous: tuple[float, float] | None = None  # where the stage is before the line
    lines = []
    for i, coord in enumerate(fixed):
        storage = shot_order(along.size, i, scan.order)
        a = along[storage]
        c = np.full(along.size, coord)
        xs, ys = (a, c) if axis == "y" else (c, a)
        points = np.column_stack([xs, ys])
        fly = None
        if scan.mode == "fly":
            fly = _fly_pass(scan, points, axis)
            approach = fly.start_um
            line_move = [] if previous is None else [_move_s(previous, approach, speed)]
            line_shoot = fly.duration_s
            previous = fly.end_um
        else:
            first = (float(xs[0]), float(ys[0]))
            line_move = [] if previous is None else [_move_s(previous, first, speed)]
            steps = np.abs(np.diff(points, axis=0)).max(axis=1) / speed
            line_move += steps.tolist()
            line_shoot = along.size * burst_s
            previous = (float(xs[-1]), float(ys[-1]))
        line_settle = len(line_move) * settle
        duration = sum(line_move) + line_settle + line_shoot + scan.line_overhead_s
        move += sum(line_move)
        settle_total += line_settle
        shoot += line_shoot
        lines.append(LinePlan(index=i, x_um=xs, y_um=ys, storage_index=storage,
                              shots_per_spot=scan.shots_per_spot, first_spot=i * along.size,
                              duration_s=duration, fly=fly))
    estimate = Estimate(move, settle_total, shoot, scan.line_overhead_s * len(lines))
    return RasterPlan(scan=scan, order=scan.order, mode=scan.mode,
                      procedure=procedure_for(scan), line_axis=axis, x_um=x_um, y_um=y_um,
                      lines=tuple(lines), rate_hz=scan.rate_hz,
                      shots_per_spot=scan.shots_per_spot, estimate=estimate)


def _fly_pass(scan: ScanConfig, points: np.ndarray, axis: str) -> FlyPass:
    fly = scan.fly
    assert fly is not None  # validated: mode "fly" always has fly settings
    k = 0 if axis == "y" else 1  # the moving coordinate
    first, last = points[0].astype(float), points[-1].astype(float)
    direction = 1.0 if points.shape[0] == 1 or last[k] >= first[k] else -1.0
    start, end = first.copy(), last.copy()
    if fly.trigger == "ddg-clock":
        spacing, run_up = fly.speed_um_s / scan.rate_hz, fly.run_up_um
    else:
        # the stage's trigger counts travel from the pass start and fires every step: the
        # pass starts one step before the first spot (shots placed by distance need no run-up
        # to constant speed)
        spacing = run_up = scan.region.step_um
    start[k] -= direction * run_up
    end[k] += direction * fly.run_up_um
    distance = abs(end[k] - start[k])
    return FlyPass(start_um=(float(start[0]), float(start[1])),
                   end_um=(float(end[0]), float(end[1])), speed_um_s=fly.speed_um_s,
                   trigger=fly.trigger, trigger_spacing_um=spacing,
                   first_shot_delay_s=run_up / fly.speed_um_s,
                   duration_s=distance / fly.speed_um_s)


# ---------------------------------------------------------------------------- printing
def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _xy(p: tuple[float, float] | np.ndarray) -> str:
    return f"({p[0]:g}, {p[1]:g})"


def format_plan(plan: RasterPlan, *, cwd: str | Path | None = None, n_positions: int = 6) -> str:
    """A human summary: region, lines x spots, shots, duration, output, first positions."""
    scan, region, est = plan.scan, plan.scan.region, plan.estimate
    what = "rows at fixed y" if plan.line_axis == "y" else "columns at fixed x"
    rate = f"{plan.rate_hz:g} Hz" + (" (bench profile)" if scan.rate_from_bench else "")
    out = [
        f"scan {scan.source}",
        f"  sample    {scan.sample}  (operator {scan.operator})",
        f"  bench     {scan.bench}, laser {rate}",
        f"  region    origin {_xy(region.origin_um)} µm, size {region.size_um[0]:g} x "
        f"{region.size_um[1]:g} µm, step {region.step_um:g} µm -> {region.nx} x {region.ny} "
        "spots (x x y)",
        f"  order     {plan.order}: {plan.n_lines} lines x {plan.n_spots} spots ({what})",
    ]
    if plan.mode == "fly":
        assert scan.fly is not None
        fp = plan.lines[0].fly
        assert fp is not None
        out.append(f"  mode      fly scan at {scan.fly.speed_um_s:g} µm/s, trigger "
                   f"{scan.fly.trigger} every {fp.trigger_spacing_um:g} µm, run-up "
                   f"{scan.fly.run_up_um:g} µm, 1 shot/spot")
    else:
        out.append(f"  mode      step-and-shoot, {plan.shots_per_spot} shot(s)/spot, stage "
                   f"{scan.stage.speed_um_s:g} µm/s, settle {scan.stage.settle_s:g} s")
    out.append(f"  procedure {plan.procedure}: {PROCEDURES[plan.procedure]}")
    out += [
        f"  shots     {plan.total_shots} ({plan.total_spots} spots x {plan.shots_per_spot})",
        f"  duration  ~{plan.duration_s:.1f} s ({_hms(plan.duration_s)}): moves "
        f"{est.move_s:.1f} s + settle {est.settle_s:.1f} s + "
        f"{'passes' if plan.mode == 'fly' else 'shooting'} {est.shoot_s:.1f} s + line "
        f"overhead {est.overhead_s:.1f} s",
        f"  output    {scan.output_path(cwd)}"
        + ("  (re-shoot invalid spots)" if scan.reshoot_invalid else ""),
    ]
    first = plan.positions()[:n_positions]
    out.append("  first positions (x, y µm): " + " ".join(_xy(p) for p in first)
               + (" ..." if plan.total_spots > n_positions else ""))
    for line in plan.lines[:2]:
        out.append(f"  line {line.index}: {line.n_shots} shots from "
                   f"{_xy((line.x_um[0], line.y_um[0]))} to "
                   f"{_xy((line.x_um[-1], line.y_um[-1]))}, ~{line.duration_s:.2f} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------- dry run
@dataclass(frozen=True, eq=False)
class DryRun:
    """What a scan would do: its plan, bench profile, output file, warnings and summary."""

    plan: RasterPlan
    profile: object  # plumelink.drivers.bench.BenchProfile
    output: Path
    warnings: tuple[str, ...]
    text: str


def dry_run(scan: ScanConfig | str | Path, *, cwd: str | Path | None = None) -> DryRun:
    """Validate a scan (a `ScanConfig` or a scan file) and its bench profile, build the plan
    and summarise it, without opening any device. Raises `ScanError` on any problem."""
    from plumelink.drivers.bench import BenchProfile, ProfileError

    if not isinstance(scan, ScanConfig):
        scan = load_scan(scan)
    try:
        profile = BenchProfile.load(scan.bench)
    except ProfileError as exc:
        raise ScanError(f"{scan.source}: bench {scan.bench!r} cannot be loaded: {exc}") from exc
    unknown = sorted(set(scan.spectrometers) - set(profile.spectrometers))
    if unknown:
        raise ScanError(f"{scan.source}: spectrometers.{unknown[0]} is not a spectrometer of "
                        f"bench {profile.name!r}; it has {sorted(profile.spectrometers)}")
    warnings = [f"spectrometers.{role} has no settings in the scan; the bench's {role} "
                "spectrometer keeps its current settings"
                for role in sorted(set(profile.spectrometers) - set(scan.spectrometers))]
    if not scan.rate_from_bench and scan.rate_hz != profile.laser.rate_hz:
        warnings.append(f"laser.rate_hz {scan.rate_hz:g} Hz differs from the bench profile's "
                        f"{profile.laser.rate_hz:g} Hz")
    output = scan.output_path(cwd)
    if output.exists():
        warnings.append(f"output {output} already exists")
    plan = make_plan(scan)
    text = format_plan(plan, cwd=cwd)
    if warnings:
        text += "\n" + "\n".join(f"  warning: {w}" for w in warnings)
    return DryRun(plan, profile, output, tuple(warnings), text)


__all__ = ["FLY_DDG_CLOCK", "FLY_STAGE_DISTANCE", "PROCEDURES", "STEP_AND_SHOOT", "DryRun",
           "Estimate", "FlyPass", "LinePlan", "RasterPlan", "dry_run", "format_plan", "make_plan",
           "procedure_for"]
