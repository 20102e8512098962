"""Stage round trips the engine makes per fly line and per step spot on the simulated bench
(zaber-motion on the Zaber emulator's TCP port), counted in the emulator's transcript: each
one costs a few hundred µs, more on a loaded host, so what is known is not asked or sent
again (and the map still holds what the stage really did)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from scan_files import step_scan_text
from test_engine import fly_scan_text

from plumelink.drivers.bench import open_bench
from plumelink.pipeline.acquisition.handle import ScanHandle
from plumelink.pipeline.acquisition.stage_motion import StageMotion
from plumelink.pipeline.engine import acquire
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.plan import FlyPass
from plumelink.pipeline.scan import parse_scan


def _kind(line: bytes) -> str:
    """A command without its address, message id and checksum, trigger numbers and values
    dropped: "trigger when", "move abs", "get pos", "io set do", "" (an empty poll)."""
    words = line.decode().split(":")[0].split()[1:]
    while words and words[0].isdigit():
        words.pop(0)
    words = [w for w in words if not w.lstrip("-").isdigit()]
    return " ".join(words[:2] if words[:1] != ["io"] else words[:3])


def test_a_fly_line_sends_only_its_trigger_condition_and_enable(
        sim_profile: Path, tmp_path: Path) -> None:
    ny = 4
    scan = parse_scan(fly_scan_text(sim_profile, tmp_path / "fly.h5", ny=ny, nx=20),
                      source="fly.toml")
    with open_bench(sim_profile) as bench:
        emulator = bench.emulators["stage"]
        emulator.clear_transcript()
        result = acquire(scan, bench=bench)
        sent = Counter(_kind(c) for c in emulator.commands)
        output = emulator.output(1, 1)
    assert result.status == "complete" and result.invalid_primary == 0
    assert result.invalid_secondary == 0  # every shot still fired where it should
    # per line: the condition and the enable. Each pass toggles the output twice (up at the
    # first spot, down one run-up later) and so spends its trigger: the output is known low
    # and the trigger disabled for the next line. Once for the scan: the output low, the
    # action, and one disable before the first set-up.
    assert sent["trigger when"] == sent["trigger enable"] == ny
    assert sent["io set do"] == sent["trigger action"] == sent["trigger disable"] == 1
    assert sent[""] == 0  # the idle polls are "get pos"
    assert output == 0


def test_a_measured_step_move_reads_the_position_in_its_idle_polls(sim_profile: Path,
                                                                   tmp_path: Path) -> None:
    """A step spot: the move, then polls ("get pos") of the moving axis until IDLE and one of
    the other axis; no position query after them, and the position is the device's."""
    with open_bench(sim_profile) as bench:
        motion = StageMotion(bench, ScanHandle(), 10_000.0)
        motion.home()
        motion.move_to(1_000.0, 2_000.0)
        emulator = bench.emulators["stage"]
        emulator.clear_transcript()
        at = motion.move_to(1_040.0, 2_000.0)
        commands = emulator.commands
        assert at == pytest.approx((emulator.position(1, 1) * 0.1,
                                    emulator.position(2, 1) * 0.1))
    assert at == pytest.approx((1_040.0, 2_000.0))
    kinds = [_kind(c) for c in commands]
    assert kinds[0] == "move abs" and set(kinds[1:]) == {"get pos"}, kinds
    assert sum(c.startswith(b"/2 ") for c in commands) == 1  # y: one poll, no read-back


def test_a_step_scan_records_the_measured_positions(sim_profile: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "step.h5"
    scan = parse_scan(step_scan_text(sim_profile, out, ny=2, nx=3), source="step.toml")
    with open_bench(sim_profile) as bench:
        emulator = bench.emulators["stage"]
        emulator.clear_transcript()
        result = acquire(scan, bench=bench)
        sent = Counter(_kind(c) for c in emulator.commands)
        print(sent)
    assert result.status == "complete"
    assert sent[""] == 0
    with MapReader(out) as m:
        for iy in range(2):
            line = m.read_line(iy)
            assert line.x_measured_um == pytest.approx(line.x_um, abs=0.1)
            assert line.y_measured_um == pytest.approx(line.y_um, abs=0.1)


def _pass(start_x: float, end_x: float, speed: float) -> FlyPass:
    duration = abs(end_x - start_x) / speed
    return FlyPass((start_x, 2_000.0), (end_x, 2_000.0), speed, "ddg-clock", 25.0, 0.0,
                   duration)


def test_a_fly_pass_runs_its_burst_wait_while_the_stage_moves(sim_profile: Path) -> None:
    """``during`` (the DDG's end of burst) runs once the stage is under way and before its
    run-out is over; the pass then ends where it was planned, with the stage idle. Should
    ``during`` fail, the stage still ends its pass before the error goes on."""
    with open_bench(sim_profile) as bench:
        emulator = bench.emulators["stage"]
        motion = StageMotion(bench, ScanHandle(), 100_000.0)
        motion.home()
        motion.move_to(1_000.0, 2_000.0)
        pass_ = _pass(1_000.0, 3_000.0, 10_000.0)  # 0.2 s simulated, 2 ms real

        def during() -> tuple[bool, float]:
            return emulator.busy(1, 1), emulator.position(1, 1) * 0.1

        busy, x = motion.fly(pass_, during, 0.0)
        assert busy and 1_000.0 <= x < 3_000.0  # under way, not yet at the end
        assert not emulator.busy(1, 1)
        assert emulator.position(1, 1) * 0.1 == pytest.approx(3_000.0)
        sent = len(emulator.commands)
        motion.move_to(3_000.0, 2_000.0, measure=False)  # where the pass ended is known:
        assert len(emulator.commands) == sent  # no position query, no move

        def failing() -> None:
            raise RuntimeError("burst lost")

        with pytest.raises(RuntimeError, match="burst lost"):
            motion.fly(_pass(3_000.0, 1_000.0, 10_000.0), failing, 0.0)
        assert not emulator.busy(1, 1)
        assert emulator.position(1, 1) * 0.1 == pytest.approx(1_000.0)
