"""Scan files: parsing, every validation error naming its field, shipped examples."""

from __future__ import annotations

import copy
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from plumelink.pipeline.plan import make_plan
from plumelink.pipeline.scan import (
    MAX_LASER_RATE_HZ,
    ScanConfig,
    ScanError,
    example_scans,
    load_scan,
    parse_scan,
)

BASE: dict[str, Any] = {
    "sample": "quartz slab",
    "operator": "tester",
    "bench": "simulated",
    "output": "out/test.h5",
    "region": {"origin_um": [0.0, 0.0], "size_um": [400.0, 200.0], "step_um": 40.0},
    "acquisition": {"mode": "step", "shots_per_spot": 1},
    "laser": {"rate_hz": 50.0},
    "ddg": {"laser_delay_s": 180e-6, "spectrometer_delay_s": 1e-6, "gate_s": 10e-6},
    "spectrometers": {"primary": {"integration_time_s": 1e-3},
                      "secondary": {"integration_time_s": 1e-3}},
}
FLY = {"acquisition": {"mode": "fly", "shots_per_spot": 1}, "laser": {"rate_hz": 100.0},
       "fly": {"trigger": "ddg-clock"}}
DELETE = object()


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def dump(data: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for the test documents (scalars first, then sub-tables)."""
    lines = [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            name = prefix + key
            scalars = any(not isinstance(v, dict) for v in value.values())
            body = dump(value, name + ".")
            lines.append((f"[{name}]\n" if scalars or not value else "") + body)
    return "\n".join(lines) + "\n"


def document(*changes: dict[str, Any], **dotted: Any) -> str:
    """BASE merged with ``changes`` (nested dicts) and ``dotted`` (a__b=value, DELETE removes)."""
    data = copy.deepcopy(BASE)
    for change in changes:
        for key, value in change.items():
            data[key] = copy.deepcopy(value)
    for key, value in dotted.items():
        *path, last = key.split("__")
        table = data
        for part in path:
            table = table.setdefault(part, {})
        if value is DELETE:
            table.pop(last, None)
        else:
            table[last] = value
    return dump(data)


def parse(text: str, **kwargs: Any) -> ScanConfig:
    return parse_scan(text, source="scan.toml", **kwargs)


def test_a_valid_scan_parses_with_defaults() -> None:
    scan = parse(document())
    assert scan.shape == (5, 10)
    assert (scan.region.nx, scan.region.ny) == (10, 5)
    assert scan.order == "snake-horizontal"
    assert scan.mode == "step" and scan.fly is None
    assert scan.rate_hz == 50.0 and not scan.rate_from_bench
    assert scan.spectrometers["primary"].averages == 1
    assert scan.spectrometers["secondary"].delay_s == 0.0
    assert scan.stage.speed_um_s > 0 and scan.stage.settle_s >= 0
    assert scan.reshoot_invalid is False
    assert scan.text == document()
    assert scan.source == "scan.toml"


ERRORS = [
    # (dotted changes, message fragment)
    ({"sample": DELETE}, "sample is missing"),
    ({"sample": " "}, "sample must be a non-empty string"),
    ({"operator": 3}, "operator must be a non-empty string, got 3"),
    ({"bench": "no_such_bench"}, "bench 'no_such_bench' cannot be loaded"),
    ({"output": "out/test.txt"}, "output must name an HDF5 file"),
    ({"reshoot_invalid": "yes"}, "reshoot_invalid must be true or false"),
    ({"colour": "red"}, "colour is not a known key; allowed in the top level"),
    ({"region": DELETE}, "region is missing"),
    ({"region": 3}, "region must be a table"),
    ({"region__step_um": -5}, "region.step_um must be > 0, got -5"),
    ({"region__step_um": "40"}, "region.step_um must be a number"),
    ({"region__step_um": DELETE}, "region.step_um is missing"),
    ({"region__origin_um": [1.0]}, "region.origin_um must be a list of two numbers"),
    ({"region__size_um": [0.0, 200.0]}, "region.size_um must have both values > 0"),
    ({"region__size_um": [410.0, 200.0]}, "region.size_um must be a whole number"),
    ({"region__size_um": [10.0, 200.0]}, "region.size_um must be a whole number (>= 1)"),
    ({"region__size_um": [400.0, 4e7]}, "region.size_um gives 1000000 spots along y; at most"),
    ({"region__order": "spiral"}, "region.order must be one of"),
    ({"region__spots": 3}, "region.spots is not a known key; allowed in [region]: order, "
                           "origin_um, size_um, step_um"),
    ({"acquisition__mode": "burst"}, "acquisition.mode must be one of 'step', 'fly'"),
    ({"acquisition__shots_per_spot": 0}, "acquisition.shots_per_spot must be in 1..32767"),
    ({"acquisition__shots_per_spot": 2.5}, "acquisition.shots_per_spot must be an integer"),
    ({"acquisition__shots_per_spot": 4000}, "acquisition.shots_per_spot gives 40000 shots per"),
    ({"acquisition__line_overhead_s": -1}, "acquisition.line_overhead_s must be >= 0"),
    ({"laser__rate_hz": 0}, "laser.rate_hz must be > 0"),
    ({"laser__rate_hz": 2 * MAX_LASER_RATE_HZ}, "laser.rate_hz must be <= 10000 Hz"),
    ({"laser__power": 1}, "laser.power is not a known key"),
    ({"stage__speed_um_s": 0}, "stage.speed_um_s must be > 0"),
    ({"stage__settle_s": -0.1}, "stage.settle_s must be >= 0"),
    ({"ddg": DELETE}, "ddg is missing"),
    ({"ddg__laser_delay_s": DELETE}, "ddg.laser_delay_s is missing"),
    ({"ddg__spectrometer_delay_s": -1e-6}, "ddg.spectrometer_delay_s must be >= 0"),
    ({"ddg__gate_s": 0}, "ddg.gate_s must be > 0"),
    ({"ddg__gate_s": 0.05}, "ddg.gate_s is too long"),
    ({"spectrometers": DELETE}, "spectrometers is missing"),
    ({"spectrometers__tertiary": {"integration_time_s": 1e-3}},
     "spectrometers.tertiary is not a known key"),
    ({"spectrometers__primary__integration_time_s": DELETE},
     "spectrometers.primary.integration_time_s is missing"),
    ({"spectrometers__primary__integration_time_s": 1e-7},
     "spectrometers.primary.integration_time_s must be in"),
    ({"spectrometers__primary__integration_time_s": 0.03},
     "spectrometers.primary.integration_time_s + delay_s"),
    ({"spectrometers__secondary__delay_s": 0.02},
     "spectrometers.secondary.integration_time_s + delay_s"),
    ({"spectrometers__primary__averages": 0}, "spectrometers.primary.averages must be in 1..65535"),
    ({"spectrometers__primary__averages": 2},
     "spectrometers.primary.averages (2) must divide acquisition.shots_per_spot (1)"),
    ({"spectrometers__primary__gain": 2}, "spectrometers.primary.gain is not a known key"),
    ({"fly": {"trigger": "ddg-clock"}}, "fly is only allowed with acquisition.mode = 'fly'"),
]
FLY_ERRORS = [
    ({"acquisition__shots_per_spot": 2}, "acquisition.shots_per_spot must be 1 in fly mode"),
    ({"spectrometers__primary__averages": 1, "spectrometers__secondary__averages": 3},
     "spectrometers.secondary.averages must be 1 in fly mode"),
    ({"fly__trigger": "camera"}, "fly.trigger must be one of 'ddg-clock', 'stage-distance'"),
    ({"fly__speed_um_s": 8000.0}, "fly.speed_um_s 8000 µm/s at laser.rate_hz 100 spaces shots "
                                  "80 µm apart, not region.step_um = 40"),
    ({"fly__trigger": "stage-distance", "fly__speed_um_s": 8000.0},
     "fly.speed_um_s 8000 µm/s with a trigger every 40 µm asks for 200 shots/s"),
    ({"fly__run_up_um": -1}, "fly.run_up_um must be >= 0"),
    ({"stage__speed_um_s": 1000.0}, "fly.speed_um_s 4000 µm/s exceeds stage.speed_um_s 1000"),
    ({"fly__speed": 1}, "fly.speed is not a known key; allowed in [fly]: run_up_um, speed_um_s, "
                        "trigger"),
]


@pytest.mark.parametrize(("changes", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_every_error_names_the_file_and_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ScanError) as info:
        parse(document(**changes))
    assert str(info.value).startswith("scan.toml: ")
    assert message in str(info.value)


@pytest.mark.parametrize(("changes", "message"), FLY_ERRORS, ids=[m for _, m in FLY_ERRORS])
def test_fly_mode_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ScanError) as info:
        parse(document(FLY, **changes))
    assert str(info.value).startswith("scan.toml: ")
    assert message in str(info.value)


def test_scan_error_is_a_value_error_and_bad_toml_is_reported() -> None:
    assert issubclass(ScanError, ValueError)
    with pytest.raises(ScanError, match=r"^scan.toml: not valid TOML"):
        parse("sample = \n")


def test_fly_mode_derives_its_speed_from_step_and_rate() -> None:
    scan = parse(document(FLY))
    assert scan.fly is not None
    assert scan.fly.trigger == "ddg-clock"
    assert scan.fly.speed_um_s == pytest.approx(40.0 * 100.0)
    slower = parse(document(FLY, fly__trigger="stage-distance", fly__speed_um_s=2000.0))
    assert slower.fly is not None and slower.fly.speed_um_s == 2000.0


def test_the_rate_defaults_to_the_bench_profile() -> None:
    scan = parse(document(laser=DELETE))
    assert scan.rate_hz == 50.0 and scan.rate_from_bench
    with pytest.raises(ScanError, match=r"laser.rate_hz is missing"):
        parse(document(laser=DELETE), check_bench=False)
    unchecked = parse(document(bench="elsewhere", spectrometers__other={"integration_time_s":
                                                                        1e-3}),
                      check_bench=False)
    assert set(unchecked.spectrometers) == {"primary", "secondary", "other"}


def test_a_bench_path_resolves_against_the_scan_folder(tmp_path: Path) -> None:
    shipped = resources.files("plumelink.resources").joinpath("benches", "simulated.toml")
    (tmp_path / "benches").mkdir()
    shutil.copyfile(str(shipped), tmp_path / "benches" / "mine.toml")
    path = tmp_path / "scan.toml"
    path.write_text(document(bench="benches/mine.toml", laser=DELETE), encoding="utf-8")
    scan = load_scan(path)
    assert Path(scan.bench) == tmp_path / "benches" / "mine.toml"
    assert scan.rate_from_bench and scan.rate_hz == 50.0
    path.write_text(document(bench="benches/missing.toml"), encoding="utf-8")
    with pytest.raises(ScanError, match=r"scan.toml: bench .*missing.toml' cannot be loaded"):
        load_scan(path)


def test_the_output_resolves_against_the_working_directory(tmp_path: Path) -> None:
    scan = parse(document())
    assert scan.output == Path("out/test.h5")
    assert scan.output_path(tmp_path) == tmp_path / "out" / "test.h5"
    assert scan.output_path() == Path.cwd() / "out" / "test.h5"
    absolute = parse(document(output=str(tmp_path / "x.nxs")))
    assert absolute.output_path("/elsewhere") == tmp_path / "x.nxs"


def test_load_scan_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="cannot read scan file"):
        load_scan(tmp_path / "absent.toml")
    path = tmp_path / "bad.toml"
    path.write_text(document(region__step_um=-5), encoding="utf-8")
    with pytest.raises(ScanError, match=rf"^{path}: region.step_um must be > 0, got -5"):
        load_scan(path)


def test_examples_are_shipped_and_load() -> None:
    examples = example_scans()
    assert {"demo_small", "fly_large"} <= set(examples)
    for path in examples.values():
        scan = load_scan(path)
        assert scan.text == path.read_text(encoding="utf-8")
        assert scan.output.parts[0] == "out"
        plan = make_plan(scan)
        assert plan.total_shots > 0


def test_demo_small_and_fly_large_are_what_they_say() -> None:
    demo = load_scan(example_scans()["demo_small"])
    assert demo.bench == "simulated"
    assert demo.shape == (40, 40) and demo.region.step_um == 40.0
    assert (demo.mode, demo.order, demo.shots_per_spot) == ("step", "snake-horizontal", 1)
    fly = load_scan(example_scans()["fly_large"])
    assert fly.shape == (200, 200) and fly.mode == "fly" and fly.rate_hz == 1000.0
    assert fly.fly is not None and fly.fly.speed_um_s == pytest.approx(
        fly.region.step_um * fly.rate_hz)


def test_a_scan_round_trips_through_its_text() -> None:
    for path in example_scans().values():
        scan = load_scan(path)
        again = parse_scan(scan.text, source=scan.source)
        assert again == scan
