"""Device capabilities as runtime-checkable protocols: the real drivers on the simulated bench
have what a fly scan needs (or not, and the missing methods are named); the DG645 reports its
latched status in the device-independent `BurstStatus`; the bench's time scale."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from importlib import resources

import pytest

from plumelink.drivers.bench import Bench, BenchProfile, open_bench
from plumelink.drivers.dg645 import StatusFlag
from plumelink.drivers.protocols import (
    BurstMode,
    DistanceTrigger,
    ExternalTrigger,
    LatchedStatus,
    missing_methods,
)


def test_the_simulated_bench_has_every_fly_scan_capability(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        ddg, stage = bench.delay_generator, bench.stage
        for capability in (ExternalTrigger, BurstMode, LatchedStatus):
            assert isinstance(ddg, capability) and missing_methods(ddg, capability) == []
        assert isinstance(stage, DistanceTrigger)
        assert not isinstance(ddg, DistanceTrigger)
        assert missing_methods(ddg, DistanceTrigger) == [
            "configure_distance_trigger", "disable_distance_trigger", "set_digital_output"]


def test_a_pi_stage_has_no_distance_trigger(no_leaks: None) -> None:
    path = resources.files("plumelink.resources").joinpath("benches", "simulated.toml")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["stage"] = {"driver": "pi_gcs", "resource": "sim", "timeout_s": 2.0}
    with open_bench(BenchProfile.from_dict(data, source="pi.toml")) as bench:
        assert not isinstance(bench.stage, DistanceTrigger)
        assert missing_methods(bench.stage, DistanceTrigger) == [
            "configure_distance_trigger", "disable_distance_trigger", "set_digital_output"]


def test_latched_status_reads_as_a_burst_status_and_clears(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        ddg = bench.delay_generator
        assert ddg.read_burst_status().triggers_ignored is False  # nothing latched yet
        bench.emulators["delay_generator"].set_status_bits(StatusFlag.RATE | StatusFlag.INHIBIT)
        seen = ddg.read_burst_status()
        assert (seen.triggers_ignored, seen.inhibited, seen.end_of_burst) == (True, True, False)
        assert seen.flags == int(StatusFlag.RATE | StatusFlag.INHIBIT)
        again = ddg.read_burst_status()  # reading cleared the latch
        assert (again.triggers_ignored, again.inhibited, again.flags) == (False, False, 0)


def test_time_scale_is_the_simulated_clock_speed_or_one_on_hardware(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        assert bench.time_scale == BenchProfile.load("simulated").simulation.speedup == 20.0
        assert bench.simulation is not None
        bench.simulation.clock.speedup = 50.0
        assert bench.time_scale == 50.0
        hardware = Bench(**{f.name: getattr(bench, f.name) for f in fields(Bench)
                            if f.name != "simulation"})
        assert hardware.time_scale == 1.0


@pytest.mark.parametrize("capability", [ExternalTrigger, BurstMode, LatchedStatus,
                                        DistanceTrigger])
def test_a_plain_object_has_no_capability(capability: type) -> None:
    assert not isinstance(object(), capability)
    assert missing_methods(object(), capability)
