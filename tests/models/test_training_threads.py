"""The training's default thread count: the cores other processes leave free, decided from
/proc/stat readings (injected here; nothing is timed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plumelink.models.training import data
from plumelink.models.training.data import (
    FREE_CORE_FRACTION,
    free_cores,
    read_cpu_times,
    threads_for_free,
    training_threads,
)


def stat(*cpus: tuple[int, int, int, int]) -> str:
    """/proc/stat text; per CPU (user, nice, idle, iowait) ticks, system/irq/steal 0."""
    total = [sum(c[i] for c in cpus) for i in range(4)]
    lines = [f"cpu  {total[0]} {total[1]} 0 {total[2]} {total[3]} 0 0 0 0 0"]
    lines += [f"cpu{i} {u} {n} 0 {idle} {io} 0 0 0 0 0" for i, (u, n, idle, io) in
              enumerate(cpus)]
    lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000", "processes 42"]
    return "\n".join(lines) + "\n"


def test_proc_stat_is_read_per_cpu_with_iowait_counted_idle() -> None:
    text = ("cpu  10 20 30 40 50 60 70 80 90 100\n"
            "cpu0 1 2 3 4 5 6 7 8 9 10\n"
            "cpu3 10 0 0 90 0 0 0 0 0 0\n"
            "intr 1 2 3\n")
    # user nice system idle iowait irq softirq steal; guest is already in user
    assert read_cpu_times(text) == {0: (4 + 5, 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8), 3: (90, 100)}


def test_one_core_kept_busy_by_another_process_leaves_one_free() -> None:
    before = read_cpu_times(stat((0, 0, 0, 0), (0, 0, 0, 0)))
    after = read_cpu_times(stat((100, 0, 0, 0), (2, 0, 97, 1)))
    free = free_cores(before, after, {0, 1})
    assert free == pytest.approx(2 * 98 / 200)
    assert threads_for_free(free, 2) == 1


def test_idle_machine_gives_every_core() -> None:
    before = read_cpu_times(stat((5, 0, 5, 0), (5, 0, 5, 0)))
    after = read_cpu_times(stat((6, 0, 104, 0), (5, 0, 105, 0)))
    assert threads_for_free(free_cores(before, after, {0, 1}), 2) == 2


def test_niced_work_counts_as_busy() -> None:
    # autogroup scheduling gives a nice-19 job of another session its fair share
    before = read_cpu_times(stat((0, 0, 0, 0), (0, 0, 0, 0)))
    after = read_cpu_times(stat((0, 100, 0, 0), (0, 100, 0, 0)))
    assert free_cores(before, after, {0, 1}) == 0.0
    assert threads_for_free(0.0, 2) == 1  # never fewer than one


def test_own_cpu_time_counts_as_free_and_only_allowed_cpus_count() -> None:
    before = read_cpu_times(stat((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)))
    after = read_cpu_times(stat((100, 0, 0, 0), (0, 0, 100, 0), (100, 0, 0, 0)))
    # this process may run on cpu0 and cpu1 only; cpu2's load is not ours to share
    assert free_cores(before, after, {0, 1}) == pytest.approx(1.0)
    # cpu0 was busy with this very process: both are free for it
    assert free_cores(before, after, {0, 1}, own_cores=1.0) == pytest.approx(2.0)
    assert free_cores(before, after, {0, 1}, own_cores=5.0) == 2.0  # capped at the cores


def test_no_tick_between_readings_leaves_every_core() -> None:
    reading = read_cpu_times(stat((1, 0, 1, 0), (1, 0, 1, 0)))
    assert free_cores(reading, reading, {0, 1}) == 2.0
    assert free_cores({}, {}, {0, 1}) == 2.0


@pytest.mark.parametrize(("free", "cores", "threads"), [
    (4.0, 4, 4), (3.0, 4, 3), (3 + FREE_CORE_FRACTION, 4, 4), (3.7, 4, 3), (0.2, 4, 1),
    (9.0, 4, 4)])
def test_a_core_counts_when_mostly_idle(free: float, cores: int, threads: int) -> None:
    assert threads_for_free(free, cores) == threads


def test_training_threads_samples_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    readings = iter([stat((0, 0, 0, 0), (0, 0, 0, 0)), stat((100, 0, 0, 0), (0, 0, 100, 0))])
    assert training_threads(0.0, read=lambda: next(readings)) == 1
    readings = iter([stat((0, 0, 0, 0), (0, 0, 0, 0)), stat((0, 0, 100, 0), (0, 0, 100, 0))])
    assert training_threads(0.0, read=lambda: next(readings)) == 2


def test_unreadable_stat_gives_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)

    def unreadable() -> str:
        raise PermissionError("/proc/stat")

    assert training_threads(0.0, read=unreadable) == 3
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert training_threads(0.0, read=unreadable) == 1


class Readings:
    """Injected /proc/stat texts, wall clock and this process's CPU clock."""

    def __init__(self) -> None:
        self.text = stat((0, 0, 0, 0), (0, 0, 0, 0))
        self.wall = self.own = 0.0

    def advance(self, seconds: float, cpus: list[tuple[int, int, int, int]], own: float
                ) -> None:
        """``seconds`` pass (100 ticks a second per CPU); cpus: ticks added per CPU."""
        old = read_cpu_times(self.text)
        lines = self.text.splitlines()
        for i, (u, n, idle, io) in enumerate(cpus):
            fields = lines[1 + i].split()
            base = [int(f) for f in fields[1:]]
            base[0] += u
            base[1] += n
            base[3] += idle
            base[4] += io
            lines[1 + i] = f"cpu{i} " + " ".join(map(str, base))
        self.text = "\n".join(lines) + "\n"
        assert set(read_cpu_times(self.text)) == set(old)
        self.wall += seconds
        self.own += own


def governor(monkeypatch: pytest.MonkeyPatch, readings: Readings, threads: int,
             applied: list[int]) -> data.FreeCoreThreads:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    return data.FreeCoreThreads(threads, read=lambda: readings.text, apply=applied.append,
                                min_interval_s=1.0, clock=lambda: readings.wall,
                                own_clock=lambda: readings.own)


def test_threads_drop_when_another_process_arrives_and_return_when_it_leaves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r, applied = Readings(), []
    g = governor(monkeypatch, r, 2, applied)
    # our two threads alone: both cores ours
    r.advance(10, [(1000, 0, 0, 0), (1000, 0, 0, 0)], own=20)
    assert g.update("vae epoch 0") == 2 and applied == []
    # another process arrives: it takes 0.8 of a core, we get the rest
    r.advance(10, [(1000, 0, 0, 0), (1000, 0, 0, 0)], own=12)
    assert g.update("vae epoch 1") == 1 and applied == [1]
    # on one thread; the other process keeps its core
    r.advance(10, [(1000, 0, 0, 0), (1000, 0, 0, 0)], own=10)
    assert g.update("vae epoch 2") == 1 and applied == [1]
    # it has left: one core idle, one ours
    r.advance(10, [(1000, 0, 0, 0), (0, 0, 1000, 0)], own=10)
    assert g.update("latent_mlp epoch 0") == 2 and applied == [1, 2]
    assert g.changes == [{"at": "vae epoch 1", "threads": 1},
                         {"at": "latent_mlp epoch 0", "threads": 2}]


def test_a_short_interval_is_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    r, applied = Readings(), []
    g = governor(monkeypatch, r, 2, applied)
    r.advance(0.5, [(50, 0, 0, 0), (50, 0, 0, 0)], own=0.0)  # all busy, but 0.5 s only
    assert g.update() == 2 and applied == []
    r.advance(0.6, [(60, 0, 0, 0), (60, 0, 0, 0)], own=0.0)  # judged over the 1.1 s
    assert g.update() == 1 and applied == [1]


def test_unreadable_stat_keeps_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    def unreadable() -> str:
        raise FileNotFoundError("/proc/stat")

    g = data.FreeCoreThreads(2, read=unreadable, apply=lambda n: pytest.fail("applied"))
    assert g.update() == 2 and g.changes == []


def test_a_run_on_default_threads_records_the_choice(maps: dict, tmp_path: Path) -> None:
    from plumelink.models.package import load_package
    from plumelink.models.train import TrainOptions, train_transfer

    out = train_transfer(maps["train"], maps["val"], tmp_path / "model",
                         TrainOptions(epochs=2, fine_tune=False, baselines=False,
                                      hash_inputs=False, max_batches=2))
    options = load_package(out).manifest["metrics"]["options"]
    assert 1 <= options["threads"] <= data.available_cores()
    assert options["threads_chosen"] == "free cores"
    assert all(1 <= c["threads"] <= data.available_cores() for c in options["thread_changes"])
