"""Raster plans: shot order, storage index, fly passes, duration estimate, summary, dry run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumelink.pipeline.plan import dry_run, format_plan, make_plan
from plumelink.pipeline.raster import ALL_ORDERS, RasterGrid
from plumelink.pipeline.scan import (
    DdgSettings,
    FlySettings,
    Region,
    ScanConfig,
    ScanError,
    SpectrometerSettings,
    StageSettings,
    example_scans,
    load_scan,
)


def scan_of(nx: int, ny: int, *, step: float = 10.0, order: str = "snake-horizontal",
            mode: str = "step", shots: int = 1, rate: float = 10.0, speed: float = 100.0,
            settle: float = 0.1, overhead: float = 0.5, fly: FlySettings | None = None,
            origin: tuple[float, float] = (0.0, 0.0)) -> ScanConfig:
    """A ScanConfig built directly (plans do not re-validate)."""
    return ScanConfig(
        sample="s", operator="o", bench="simulated", output=Path("out/plan.h5"),
        region=Region(origin, (nx * step, ny * step), step), order=order, mode=mode,
        shots_per_spot=shots, rate_hz=rate, rate_from_bench=False,
        ddg=DdgSettings(0.0, 1e-6, 1e-5),
        spectrometers={"primary": SpectrometerSettings(1e-3),
                       "secondary": SpectrometerSettings(1e-3)},
        stage=StageSettings(speed, settle), fly=fly, line_overhead_s=overhead,
        source="plan.toml")


def test_horizontal_snake_reverses_odd_lines() -> None:
    plan = make_plan(scan_of(4, 3, origin=(100.0, 200.0)))
    assert plan.line_axis == "y" and plan.shape == (3, 4)
    np.testing.assert_array_equal(plan.x_um, [100, 110, 120, 130])
    np.testing.assert_array_equal(plan.y_um, [200, 210, 220])
    even, odd = plan.lines[0], plan.lines[1]
    np.testing.assert_array_equal(even.x_um, [100, 110, 120, 130])
    np.testing.assert_array_equal(odd.x_um, [130, 120, 110, 100])
    np.testing.assert_array_equal(odd.y_um, [210] * 4)
    np.testing.assert_array_equal(even.storage_index, [0, 1, 2, 3])
    np.testing.assert_array_equal(odd.storage_index, [3, 2, 1, 0])
    for line in plan.lines:  # storage_index maps shots back onto the stored (sorted) line
        stored = np.empty(line.n_spots)
        stored[line.storage_index] = line.x_um
        np.testing.assert_array_equal(stored, plan.x_um)
        np.testing.assert_array_equal(line.x_um[np.argsort(line.storage_index)], plan.x_um)
    assert [ln.first_spot for ln in plan.lines] == [0, 4, 8]


def test_plain_order_runs_every_line_forwards() -> None:
    plan = make_plan(scan_of(3, 3, order="plain-horizontal", shots=2))
    for line in plan.lines:
        np.testing.assert_array_equal(line.storage_index, [0, 1, 2])
        np.testing.assert_array_equal(line.x_um, plan.x_um)
    assert plan.lines[2].first_shot == 12 and plan.lines[2].n_shots == 6


@pytest.mark.parametrize("order", ["snake-vertical", "plain-vertical"])
def test_vertical_orders_shoot_columns(order: str) -> None:
    plan = make_plan(scan_of(4, 3, order=order))
    assert plan.line_axis == "x"
    assert plan.shape == (4, 3)  # n_lines = nx columns of ny spots
    np.testing.assert_array_equal(plan.line_coords_um, plan.x_um)
    np.testing.assert_array_equal(plan.spot_coords_um, plan.y_um)
    for line in plan.lines:
        np.testing.assert_array_equal(line.x_um, plan.x_um[line.index])
        snake_back = order.startswith("snake") and line.index % 2 == 1
        expected = plan.y_um[::-1] if snake_back else plan.y_um
        np.testing.assert_array_equal(line.y_um, expected)
        iy, ix = plan.grid_indices(line)
        np.testing.assert_array_equal(ix, line.index)
        np.testing.assert_array_equal(plan.y_um[iy], line.y_um)


def test_raster_grid_agrees_with_the_plan() -> None:
    grid = RasterGrid(3, 5, 10.0)
    plan = make_plan(scan_of(5, 3))
    for line in plan.lines:
        np.testing.assert_array_equal(grid.columns_in_shot_order(line.index), line.storage_index)
    with pytest.raises(ValueError, match="unknown raster order"):
        RasterGrid(3, 5, 10.0, order="snake-vertical")


def test_step_duration_matches_a_hand_computation() -> None:
    # 3 x 2 snake, step 10 µm at 100 µm/s, settle 0.1 s, 2 shots at 10 Hz, 0.5 s per line:
    # 5 moves of 10 µm = 0.5 s, 5 settles = 0.5 s, 6 bursts of 0.2 s = 1.2 s, 2 x 0.5 s = 1 s.
    plan = make_plan(scan_of(3, 2, shots=2))
    assert plan.estimate.move_s == pytest.approx(0.5)
    assert plan.estimate.settle_s == pytest.approx(0.5)
    assert plan.estimate.shoot_s == pytest.approx(1.2)
    assert plan.estimate.overhead_s == pytest.approx(1.0)
    assert plan.duration_s == pytest.approx(3.2)
    assert sum(ln.duration_s for ln in plan.lines) == pytest.approx(3.2)
    assert plan.total_shots == 12


def test_diagonal_moves_take_the_longer_axis() -> None:
    # plain order: the retrace from (20, 0) to (0, 10) takes 20 µm / 100 µm/s
    plan = make_plan(scan_of(3, 2, order="plain-horizontal", settle=0.0, overhead=0.0))
    assert plan.estimate.move_s == pytest.approx(4 * 0.1 + 0.2)


@pytest.mark.parametrize("trigger", ["ddg-clock", "stage-distance"])
def test_fly_lines_space_triggers_by_the_step(trigger: str) -> None:
    # 3 x 2 fly snake, step 10 µm at 10 Hz -> 100 µm/s, run-up 5 µm, stage 200 µm/s
    fly = FlySettings(trigger, 100.0, run_up_um=5.0)
    plan = make_plan(scan_of(3, 2, mode="fly", fly=fly, speed=200.0))
    first, second = plan.lines
    assert first.fly is not None and second.fly is not None
    assert first.fly.trigger_spacing_um == pytest.approx(10.0)
    # the stage's trigger counts from the pass start: it starts one step before the first spot
    lead = 5.0 if trigger == "ddg-clock" else 10.0
    assert first.fly.start_um == (-lead, 0.0) and first.fly.end_um == (25.0, 0.0)
    assert second.fly.start_um == (20.0 + lead, 10.0) and second.fly.end_um == (-5.0, 10.0)
    assert first.fly.first_shot_delay_s == pytest.approx(lead / 100.0)
    pass_s = (20.0 + lead + 5.0) / 100.0
    assert first.fly.duration_s == pytest.approx(pass_s)
    np.testing.assert_array_equal(second.x_um, [20, 10, 0])
    # two passes, one move at 200 µm/s (10 µm in y is the longer axis), one settle, two line
    # overheads
    assert plan.estimate.shoot_s == pytest.approx(2 * pass_s)
    assert plan.estimate.move_s == pytest.approx(0.05)
    assert plan.estimate.settle_s == pytest.approx(0.1)
    assert plan.duration_s == pytest.approx(2 * pass_s + 0.05 + 0.1 + 1.0)


def test_vertical_fly_runs_along_y() -> None:
    fly = FlySettings("ddg-clock", 100.0)
    plan = make_plan(scan_of(2, 4, order="snake-vertical", mode="fly", fly=fly))
    line = plan.lines[1]
    assert line.fly is not None
    assert line.fly.start_um == (10.0, 30.0) and line.fly.end_um == (10.0, 0.0)


def test_format_plan_shows_the_key_numbers(tmp_path: Path) -> None:
    plan = make_plan(load_scan(example_scans()["demo_small"]))
    text = format_plan(plan, cwd=tmp_path)
    assert "40 lines x 40 spots" in text
    assert "1600" in text
    assert f"~{plan.duration_s:.1f} s" in text
    assert str(tmp_path / "out" / "demo_small.h5") in text
    assert "(0, 0) (40, 0) (80, 0)" in text
    assert "step 40 µm" in text and "snake-horizontal" in text
    fly_text = format_plan(make_plan(load_scan(example_scans()["fly_large"])))
    assert "200 lines x 200 spots" in fly_text and "40000" in fly_text
    assert "ddg-clock every 25 µm" in fly_text


@pytest.mark.parametrize(("mode", "trigger", "procedure"), [
    ("step", None, "step-and-shoot"),
    ("fly", "ddg-clock", "fly-ddg-clock"),
    ("fly", "stage-distance", "fly-stage-distance"),
])
def test_the_plan_chooses_the_line_procedure_and_says_so(mode: str, trigger: str | None,
                                                         procedure: str) -> None:
    fly = FlySettings(trigger, 100.0) if trigger is not None else None
    plan = make_plan(scan_of(3, 2, mode=mode, fly=fly, speed=200.0))
    assert plan.procedure == procedure
    assert f"  procedure {procedure}: " in format_plan(plan)


def test_dry_run_checks_the_bench_and_opens_no_device(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from plumelink.drivers import bench

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a dry run must not open a device")

    for name in ("open_bench", "_open_device"):
        monkeypatch.setattr(bench, name, refuse, raising=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fly_large.h5").write_bytes(b"")
    report = dry_run(example_scans()["fly_large"], cwd=tmp_path)
    assert report.profile.name == "simulated"
    assert report.plan.total_shots == 40_000
    assert report.output == tmp_path / "out" / "fly_large.h5"
    assert any("already exists" in w for w in report.warnings)
    assert any("differs from the bench profile" in w for w in report.warnings)
    assert "warning:" in report.text and "200 lines x 200 spots" in report.text
    assert "procedure fly-ddg-clock" in report.text


def test_dry_run_refuses_an_unknown_bench_or_spectrometer() -> None:
    scan = scan_of(2, 2)
    with pytest.raises(ScanError, match=r"plan.toml: bench 'nowhere' cannot be loaded"):
        dry_run(replace(scan, bench="nowhere"))
    extra = dict(scan.spectrometers, tertiary=SpectrometerSettings(1e-3))
    with pytest.raises(ScanError, match=r"spectrometers.tertiary is not a spectrometer"):
        dry_run(replace(scan, spectrometers=extra))
    only_primary = replace(scan, spectrometers={"primary": SpectrometerSettings(1e-3)})
    assert any("spectrometers.secondary" in w for w in dry_run(only_primary).warnings)


@settings(max_examples=60, deadline=None)
@given(nx=st.integers(1, 9), ny=st.integers(1, 9), order=st.sampled_from(ALL_ORDERS),
       shots=st.integers(1, 3))
def test_every_spot_is_shot_exactly_once(nx: int, ny: int, order: str, shots: int) -> None:
    plan = make_plan(scan_of(nx, ny, order=order, shots=shots, origin=(-5.0, 7.5)))
    seen = np.zeros((ny, nx), dtype=int)
    for line in plan.lines:
        assert sorted(line.storage_index.tolist()) == list(range(plan.n_spots))
        iy, ix = plan.grid_indices(line)
        np.testing.assert_array_equal(plan.x_um[ix], line.x_um)
        np.testing.assert_array_equal(plan.y_um[iy], line.y_um)
        np.add.at(seen, (iy, ix), 1)
    assert (seen == 1).all()
    assert plan.total_spots == nx * ny and plan.total_shots == nx * ny * shots
    assert plan.positions().shape == (nx * ny, 2)
    if order.startswith("snake"):  # consecutive shots are always one step apart
        steps = np.abs(np.diff(plan.positions(), axis=0)).max(axis=1)
        np.testing.assert_allclose(steps, 10.0)
