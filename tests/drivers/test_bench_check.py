"""`plumelink bench check`: the simulated bench passes; a wrong microstep size, a missing
AvaSpec library, a wrong wavelength range or a bad profile each fail with one clear line; the
CLI prints them and exits non-zero. The stage identity also reaches the map's snapshot."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from plumelink.app.cli import main
from plumelink.drivers.bench import BenchProfile, _read, open_bench
from plumelink.drivers.bench_check import check_bench


def variant(tmp_path: Path, *changes: tuple[str, str]) -> Path:
    """The shipped simulated profile with each (pattern, replacement) applied once."""
    text, _ = _read("simulated")
    for pattern, replacement in changes:
        text, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
        assert n == 1, pattern
    path = tmp_path / "bench.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_simulated_bench_passes(no_leaks: None) -> None:
    result = check_bench("simulated")
    assert result.problems == []
    text = "\n".join(result.lines)
    assert "DG645, serial s/n001234, firmware ver1.14.10E" in text
    assert "error queue empty" in text and "outputs disabled" in text
    assert "axis x: device 1 axis 1, device id 30222, serial 12301, firmware 7.33" in text
    assert "microstep_um agrees" in text
    assert "4062 px, 245.00 .. 407.00 nm" in text
    assert "3872 px, 260.00 .. 369.97 nm" in text
    assert text.count("dark frame (1 ms)") == 2


def test_wrong_microstep_fails_with_what_to_change(tmp_path: Path, no_leaks: None) -> None:
    path = variant(tmp_path, (r"^microstep_um = 0\.1$", "microstep_um = 0.05"))
    result = check_bench(path)
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.startswith("[stage] zaber")
    assert "microstep_um 0.05 µm for axis x contradicts the device" in problem
    assert "resolution 64" in problem and "set microstep_um = 0.1" in problem
    # the other devices were still checked
    assert any("4062 px" in line for line in result.lines)


def test_missing_avaspec_library_is_named(tmp_path: Path, no_leaks: None) -> None:
    path = variant(tmp_path, (r'^resource = "sim"  # fake libavs object$',
                              'resource = "usb"\nlibrary_path = "/nonexistent/libavs.so"'))
    result = check_bench(path)
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.startswith("[spectrometers.primary] avaspec at 'usb' cannot be opened")
    assert "AvaSpec library not found at /nonexistent/libavs.so" in problem
    assert "install the Avantes SDK" in problem


def test_wavelength_range_against_the_profile(tmp_path: Path, no_leaks: None) -> None:
    path = variant(tmp_path, (r"^expected_wavelength_nm = \[260\.0, 370\.0\]$",
                              "expected_wavelength_nm = [250.0, 370.0]"))
    result = check_bench(path)
    assert result.problems == [
        "[spectrometers.secondary] wavelength range 260.00 .. 369.97 nm, but "
        "expected_wavelength_nm is 250 .. 370 nm (within 1 nm)"]


def test_a_bad_profile_is_one_problem(tmp_path: Path) -> None:
    path = variant(tmp_path, (r"^fullstep_um = 6\.4", "fullstep_um = -1"))
    result = check_bench(path)
    assert len(result.problems) == 1
    assert "[stage] fullstep_um must be a positive number" in result.problems[0]
    assert str(path) in result.problems[0]


def test_cli_exit_status_and_problem_lines(tmp_path: Path, no_leaks: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "check", "simulated"]) == 0
    assert "no problems found" in capsys.readouterr().out
    path = variant(tmp_path, (r"^microstep_um = 0\.1$", "microstep_um = 0.2"))
    assert main(["bench", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s):" in out
    assert re.search(r"PROBLEM \[stage\] .*microstep_um 0\.2 µm for axis x contradicts", out)


def test_stage_identity_is_in_the_settings_snapshot(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        axes = bench.settings_snapshot()["stage"]["axes"]
    assert axes["x"] == {"device": 1, "axis": 1, "device_id": 30222, "serial": 12301,
                         "firmware": "7.33", "peripheral_id": 0, "resolution": 64,
                         "microstep_um": 0.1, "microstep_source": "profile"}
    assert axes["y"]["serial"] == 12302


def test_pi_stage_is_checked_through_pipython(no_leaks: None) -> None:
    data = tomllib.loads(_read("simulated")[0])
    data["stage"] = {"driver": "pi_gcs", "resource": "sim", "timeout_s": 2.0}
    result = check_bench(BenchProfile.from_dict(data, source="pi.toml"))
    assert result.problems == []
    text = "\n".join(result.lines)
    assert "[stage] pi_gcs: (c)2024 Physik Instrumente (PI) GmbH & Co. KG, C-884.4DC" in text
    assert "axis x limits 0 .. 25000 µm" in text
    assert "axis y not referenced" in text
