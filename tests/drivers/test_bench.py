"""Bench profiles and `open_bench` on the shipped simulated profile: real drivers against their
emulators, and the safety rule that every way out leaves the DG645 outputs inhibited."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plumelink.drivers import bench as bench_module
from plumelink.drivers.bench import DRIVERS, Bench, BenchProfile, ProfileError, open_bench
from plumelink.drivers.errors import InstrumentError
from plumelink.drivers.protocols import DelayGenerator, Spectrometer, Stage


def _shipped(name: str) -> dict[str, Any]:
    path = resources.files("plumelink.resources").joinpath("benches", f"{name}.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _enable_and_check(bench: Bench) -> Any:
    emulator = bench.emulators["delay_generator"]
    assert emulator.outputs_inhibited  # the bench opens safe
    bench.delay_generator.enable_outputs()
    assert not emulator.outputs_inhibited
    return emulator


def _closed(bench: Bench) -> None:
    with pytest.raises(InstrumentError):
        bench.delay_generator.identify()
    with pytest.raises(InstrumentError):  # the Zaber stage's connection is closed
        bench.stage.position()
    for spectrometer in bench.spectrometers.values():
        assert spectrometer._handle is None  # type: ignore[attr-defined]
    for role in ("spectrometers.primary", "spectrometers.secondary"):
        assert not bench.emulators[role].initialised


# ------------------------------------------------------------------------- profiles
def test_shipped_profiles_load() -> None:
    sim = BenchProfile.load("simulated")
    assert sim.delay_generator.driver == "dg645" and sim.delay_generator.simulated
    assert sim.stage.driver == "zaber" and sim.stage.options["microstep_um"] == 0.1
    assert set(sim.spectrometers) == {"primary", "secondary"}
    assert (sim.laser.wavelength_nm, sim.laser.rate_hz) == (266.0, 50.0)
    shipped = resources.files("plumelink.resources").joinpath("benches", "example_real.toml")
    real = BenchProfile.load(Path(str(shipped)))
    assert real.delay_generator.resource == "TCPIP::192.168.1.20::5025::SOCKET"
    assert real.stage.resource == "/dev/ttyUSB0"
    assert not any(s.simulated for s in real.spectrometers.values())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["stage"].update(driver="thorlabs"), r"\[stage\] driver 'thorlabs' is unknown"),
    (lambda d: d["delay_generator"].update(driver="zaber"),
     r"\[delay_generator\] driver 'zaber' is a stage driver"),
    (lambda d: d["spectrometers"]["primary"].pop("resource"),
     r"\[spectrometers.primary\] is missing resource"),
    (lambda d: d["stage"].update(microstep_um="0.1"), r"\[stage\] microstep_um must be"),
    (lambda d: d["spectrometers"]["secondary"].update(start_pixel=1.5),
     r"\[spectrometers.secondary\] start_pixel must be an integer"),
    (lambda d: d["delay_generator"].update(resource=5), r"resource must be a non-empty string"),
    (lambda d: d["stage"].update(speed=3), r"\[stage\] has unknown keys \['speed'\]"),
    (lambda d: d.pop("laser"), r"missing table \[laser\]"),
    (lambda d: d["laser"].update(rate_hz=-1), r"\[laser\] rate_hz must be > 0, got -1"),
    (lambda d: d.update(spectrometers={}), r"at least one spectrometer"),
    (lambda d: d.update(stages={}), r"unknown top-level keys \['stages'\]"),
])
def test_invalid_profile_names_table_and_field(edit: Any, message: str) -> None:
    data = _shipped("simulated")
    edit(data)
    with pytest.raises(ProfileError, match=message):
        BenchProfile.from_dict(data, source="bad.toml")


def test_unknown_profile_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"no shipped bench profile 'nope'.*simulated"):
        BenchProfile.load("nope")
    broken = tmp_path / "broken.toml"
    broken.write_text("[stage\n")
    with pytest.raises(ProfileError, match=r"broken\.toml: not valid TOML"):
        BenchProfile.load(broken)
    with pytest.raises(ProfileError, match="cannot read"):
        BenchProfile.load(tmp_path / "missing.toml")


def test_registry_names() -> None:
    assert set(DRIVERS) == {"dg645", "zaber", "pi_gcs", "avaspec", "ocean"}


# ------------------------------------------------------------------------- opening
def test_simulated_bench_gives_working_devices(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        assert isinstance(bench.delay_generator, DelayGenerator)
        assert isinstance(bench.stage, Stage)
        assert all(isinstance(s, Spectrometer) for s in bench.spectrometers.values())
        assert bench.delay_generator.identify().split(",")[1] == "DG645"
        stage = bench.stage
        stage.set_speed(1e6)  # fast homing on the emulator's 100 mm travel
        stage.home()
        stage.move_absolute(1500.0, 2500.0)
        stage.wait_until_idle(5.0)
        assert stage.position() == pytest.approx((1500.0, 2500.0))
        assert bench.emulators["stage"].position(1, 1) == 15_000
        primary = bench.spectrometers["primary"].wavelength_nm()
        secondary = bench.spectrometers["secondary"].wavelength_nm()
        assert (primary.size, secondary.size) == (4062, 3872)
        assert np.all(np.diff(primary) > 0) and 244 < primary[0] < primary[-1] < 412
        snapshot = bench.settings_snapshot()
    assert snapshot["delay_generator"]["identity"].startswith("Stanford Research Systems,DG645")
    assert snapshot["delay_generator"]["trigger_source"] == "SINGLE_SHOT"
    assert snapshot["stage"]["position_um"] == pytest.approx([1500.0, 2500.0])
    assert snapshot["spectrometers"]["secondary"]["serial"] == "2203456U2"
    assert snapshot["spectrometers"]["primary"]["n_pixels"] == 4062
    assert snapshot["laser"] == {"wavelength_nm": 266.0, "rate_hz": 50.0}
    _closed(bench)


def test_normal_exit_disables_outputs(no_leaks: None) -> None:
    with open_bench("simulated") as bench:
        emulator = _enable_and_check(bench)
    assert emulator.outputs_inhibited
    _closed(bench)


@pytest.mark.parametrize("error", [RuntimeError("scan failed"), KeyboardInterrupt()])
def test_exception_and_ctrl_c_disable_outputs(error: BaseException, no_leaks: None) -> None:
    with pytest.raises(type(error)), open_bench("simulated") as bench:
        emulator = _enable_and_check(bench)
        raise error
    assert emulator.outputs_inhibited
    _closed(bench)


def test_disable_comes_before_closing(monkeypatch: pytest.MonkeyPatch, no_leaks: None) -> None:
    calls: list[str] = []
    with open_bench("simulated") as bench:
        for name, device in [("ddg", bench.delay_generator), ("stage", bench.stage),
                             *bench.spectrometers.items()]:
            close = device.close
            monkeypatch.setattr(device, "close",
                                lambda n=name, c=close: (calls.append(f"close {n}"), c())[1])
        disable = bench.delay_generator.disable_outputs
        monkeypatch.setattr(bench.delay_generator, "disable_outputs",
                            lambda: (calls.append("disable"), disable())[1])
    assert calls[0] == "disable"
    assert sorted(calls[1:]) == ["close ddg", "close primary", "close secondary", "close stage"]


def test_close_errors_never_mask_the_original(no_leaks: None,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(RuntimeError, match="original"), open_bench("simulated") as bench:
        emulator = _enable_and_check(bench)

        def broken() -> None:
            raise OSError("port gone")

        bench.stage.close = broken  # type: ignore[method-assign]
        raise RuntimeError("original")
    assert emulator.outputs_inhibited
    assert "error while closing stage" in caplog.text


def test_failed_disable_on_normal_exit_is_raised(no_leaks: None) -> None:
    with pytest.raises(InstrumentError, match="link down"), open_bench("simulated") as bench:
        real_disable = bench.delay_generator.disable_outputs

        def failing() -> None:
            real_disable()
            raise InstrumentError("link down", device="DG645")

        bench.delay_generator.disable_outputs = failing  # type: ignore[method-assign]
    _closed(bench)


def test_device_failing_to_open_closes_the_others(monkeypatch: pytest.MonkeyPatch,
                                                  no_leaks: None) -> None:
    opened: list[Any] = []
    real_open = DRIVERS["avaspec"].open

    def open_avaspec(resource: str, options: dict[str, Any]) -> Any:
        if opened:
            raise InstrumentError("no AvaSpec found on USB", device="AvaSpec")
        opened.append(real_open(resource, options))
        return opened[-1]

    monkeypatch.setitem(DRIVERS, "avaspec",
                        bench_module.DriverFactory(**{**vars(DRIVERS["avaspec"]),
                                                      "open": open_avaspec}))
    seen: dict[str, Any] = {}
    real_open_device = bench_module._open_device

    def spy(spec: Any, sims: Any, simulation: Any = None) -> Any:
        device, emulator = real_open_device(spec, sims, simulation)
        seen[spec.table] = (device, emulator)
        return device, emulator

    monkeypatch.setattr(bench_module, "_open_device", spy)
    with pytest.raises(InstrumentError, match="no AvaSpec"), open_bench("simulated"):
        pytest.fail("the bench must not open")
    ddg, ddg_emulator = seen["delay_generator"]
    assert ddg_emulator.outputs_inhibited
    with pytest.raises(InstrumentError):
        ddg.identify()
    stage, _ = seen["stage"]
    with pytest.raises(InstrumentError):  # closed
        stage.position()
    primary, fake = seen["spectrometers.primary"]
    assert primary._handle is None and not fake.initialised


def test_pi_stage_profile_opens_its_emulator(no_leaks: None) -> None:
    data = _shipped("simulated")
    data["stage"] = {"driver": "pi_gcs", "resource": "sim", "timeout_s": 2.0}
    with open_bench(BenchProfile.from_dict(data, source="pi.toml")) as bench:
        assert bench.settings_snapshot()["stage"]["limits_um"]["x"][1] > 0
        emulator = _enable_and_check(bench)
    assert emulator.outputs_inhibited
    assert not bench.stage._port.is_open  # type: ignore[attr-defined]


def test_write_simulated_profile_changes_only_the_speedup(tmp_path: Path) -> None:
    path = bench_module.write_simulated_profile(tmp_path, 250.0)
    shipped = BenchProfile.load("simulated")
    changed = BenchProfile.load(path)
    assert changed.simulation.speedup == 250.0
    assert changed.devices() == shipped.devices() and changed.laser == shipped.laser
    assert changed.simulation.batch_size == shipped.simulation.batch_size
    with pytest.raises(ProfileError, match="speedup"):
        bench_module.write_simulated_profile(tmp_path, -1.0)
