"""The AvaSpec ctypes driver against the fake library (same function names, ctypes argument
conventions and negative error codes), plus the library-loading failure paths."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plumelink.drivers.avantes import (
    ERROR_MEANINGS,
    FPGA_TICK_S,
    LIBRARY_ENV,
    SIGNATURES,
    AvaSpec,
    AvsIdentityType,
    DeviceClock,
    MeasConfigType,
    frame_gaps,
)
from plumelink.drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from plumelink.drivers.protocols import Frames, Spectrometer
from plumelink.drivers.sim.avaspec_fake import AvaSpecFake

PERIOD = 0.02


def test_structure_layout_is_packed() -> None:
    # avaspec.h, packed to 1 byte: 2+2+4+4+4 + 2 + 3 + 1 + 3 + (2+4+4+4+2) = 41 bytes
    assert ctypes.sizeof(MeasConfigType) == 41
    assert ctypes.sizeof(AvsIdentityType) == 75
    assert MeasConfigType.Trigger.offset == 22
    assert MeasConfigType.Control.offset == 25


def test_connect_selects_serial_and_crops_wavelengths(fake: AvaSpecFake, spec: AvaSpec) -> None:
    assert isinstance(spec, Spectrometer)
    assert spec.serial == "2103123U1"
    assert fake.handle == 2 and fake.high_res_adc
    assert fake.calls[:7] == [
        "AVS_Init", "AVS_UpdateUSBDevices", "AVS_GetList", "AVS_Activate",
        "AVS_GetNumPixels", "AVS_GetLambda", "AVS_UseHighResAdc",
    ]  # fmt: skip
    lam = spec.wavelength_nm()
    assert lam.shape == (4062,)
    np.testing.assert_allclose(lam, fake.wavelengths[17:4079])
    assert np.all(np.diff(lam) > 0)


def test_close_deactivates_and_releases_library(fake: AvaSpecFake) -> None:
    spec = AvaSpec(library=fake)
    assert spec.serial == "1111111U1"
    spec.close()
    assert fake.calls[-2:] == ["AVS_Deactivate", "AVS_Done"]
    assert fake.handle is None and not fake.initialised


def test_unknown_serial_and_bad_pixel_range(fake: AvaSpecFake) -> None:
    with pytest.raises(InstrumentError, match="not found"):
        AvaSpec("nope", library=fake)
    assert not fake.initialised  # AVS_Done ran on the failure path
    with pytest.raises(SettingOutOfRange):
        AvaSpec(library=fake, start_pixel=100, stop_pixel=4096)
    assert fake.handle is None and not fake.initialised


def test_every_function_has_declared_signatures(fake: AvaSpecFake, spec: AvaSpec) -> None:
    for name, (argtypes, restype) in SIGNATURES.items():
        assert getattr(fake, name).argtypes == argtypes
        assert getattr(fake, name).restype is restype


def test_configure_validation_happens_before_any_call(fake: AvaSpecFake, spec: AvaSpec) -> None:
    before = list(fake.calls)
    for kwargs in (
        {"integration_time_s": 0.0},
        {"integration_time_s": 1e-7},
        {"integration_time_s": 1e3},
        {"integration_time_s": 1e-3, "delay_s": -1e-6},
        {"integration_time_s": 1e-3, "delay_s": 100.0},
        {"integration_time_s": 1e-3, "averages": 0},
        {"integration_time_s": 1e-3, "averages": 2.5},
    ):
        with pytest.raises(SettingOutOfRange):
            spec.configure(**kwargs)
    with pytest.raises(SettingOutOfRange):
        spec.arm(0)
    with pytest.raises(SettingOutOfRange):
        spec.arm(3, trigger="sideways")
    assert fake.calls == before


def test_arm_sends_hardware_trigger_config(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.configure(1.05e-3, delay_s=1.28e-6, averages=1)
    spec.arm(5)
    cfg = fake.config
    assert cfg is not None
    assert (cfg["start"], cfg["stop"]) == (17, 4078)
    assert cfg["integration_ms"] == pytest.approx(1.05, rel=1e-6)
    assert cfg["delay_ticks"] == round(1.28e-6 / FPGA_TICK_S) == 61
    assert (cfg["mode"], cfg["source"], cfg["source_type"]) == (1, 0, 0)
    assert fake.measuring and fake.remaining == 5


def test_arm_trigger_read_n_frames(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.configure(1e-3)
    spec.arm(10)
    rng = np.random.default_rng(1)
    spectra = rng.integers(0, 60000, size=(10, 4096)).astype(float)
    for i, s in enumerate(spectra):
        assert fake.trigger(s, time_s=1.0 + i * PERIOD)
    assert not fake.trigger()  # an 11th shot finds the device done
    assert spec.wait_frames(1.0) == 10
    frames = spec.read_frames()
    assert isinstance(frames, Frames) and len(frames) == 10
    assert frames.counts.dtype == np.uint16 and frames.counts.shape == (10, 4062)
    np.testing.assert_array_equal(frames.counts, spectra[:, 17:4079].astype(np.uint16))
    np.testing.assert_array_equal(frames.counters, np.arange(10))
    np.testing.assert_allclose(frames.timestamps_s, 1.0 + np.arange(10) * PERIOD, atol=1e-5)
    assert np.all(np.diff(frames.timestamps_s) > 0)
    assert np.all(frame_gaps(frames.timestamps_s, PERIOD) == 0)
    assert len(spec.read_frames()) == 0  # read clears the buffer


def test_frames_read_in_parts_keep_their_order_and_a_new_arm_leaves_them_intact(
        fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(4)
    writable = np.full(4096, 100.0)
    fake.trigger(writable, time_s=0.0)
    writable[:] = 7.0  # the fake copied a writable spectrum: the frame keeps 100
    block = np.arange(3 * 4096, dtype=np.uint16).reshape(3, 4096) % 5000
    block.flags.writeable = False  # kept without a copy (the simulated bench's batches)
    fake.trigger(block[0], time_s=PERIOD)
    first = spec.read_frames()
    for i in (1, 2):
        fake.trigger(block[i], time_s=(i + 1) * PERIOD)
    spec.wait_frames(1.0)
    rest = spec.read_frames()
    assert list(first.counters) == [0, 1] and list(rest.counters) == [2, 3]
    assert np.all(first.counts[0] == 100)
    np.testing.assert_array_equal(np.vstack([first.counts[1:], rest.counts]),
                                  block[:, 17:4079])
    kept = rest.counts.copy()
    spec.arm(2)  # the next arm fills a block of its own
    fake.trigger(np.zeros(4096), time_s=0.0)
    spec.read_frames()
    np.testing.assert_array_equal(rest.counts, kept)


def test_counts_are_clipped_to_uint16(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(1)
    fake.trigger(np.r_[-5.0, 70000.0, 12.6, np.zeros(4093)])
    spec.wait_frames(1.0)
    counts = spec.read_frames().counts[0]
    assert counts.shape == (4062,)
    fake2 = AvaSpecFake()
    with AvaSpec(library=fake2) as full:
        full.arm(1)
        fake2.trigger(np.r_[-5.0, 70000.0, 12.6, np.zeros(4093)])
        full.wait_frames(1.0)
        assert list(full.read_frames().counts[0, :3]) == [0, 65535, 13]


def test_frames_arrive_from_another_thread(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(20)

    def bench() -> None:
        for _ in range(20):
            time.sleep(0.002)
            fake.trigger()

    thread = threading.Thread(target=bench)
    start = time.monotonic()
    thread.start()
    assert spec.wait_frames(5.0) == 20
    thread.join()
    assert time.monotonic() - start < 2.0
    assert len(spec.read_frames()) == 20


def test_timestamp_wraparound() -> None:
    fake = AvaSpecFake(start_ticks=(1 << 32) - 3000)  # wraps ~10 ms after the first shot
    with AvaSpec(library=fake) as spec:
        spec.arm(4)
        for i in range(4):
            fake.trigger(time_s=i * PERIOD)
        spec.wait_frames(1.0)
        t = spec.read_frames().timestamps_s
    np.testing.assert_allclose(np.diff(t), PERIOD, atol=1e-5)
    assert t[0] == pytest.approx(((1 << 32) - 3000) * 1e-5)
    assert np.all(frame_gaps(t, PERIOD) == 0)


def test_device_clock_counts_wraps_and_places_late_frames_before_them() -> None:
    clock = DeviceClock()
    assert clock.seconds((1 << 32) - 5) == pytest.approx(((1 << 32) - 5) * 1e-5)
    assert clock.seconds(5) == pytest.approx(((1 << 32) + 5) * 1e-5)
    assert clock.wraps == 1
    # a late frame from before the wrap: before it in time, and no second wrap
    assert clock.seconds((1 << 32) - 2) == pytest.approx(((1 << 32) - 2) * 1e-5)
    assert clock.seconds(10) == pytest.approx(((1 << 32) + 10) * 1e-5)
    assert clock.seconds(8) == pytest.approx(((1 << 32) + 8) * 1e-5)  # slightly late: no wrap
    assert clock.wraps == 1


def test_the_clock_stays_continuous_across_arms_through_a_wrap() -> None:
    fake = AvaSpecFake(start_ticks=(1 << 32) - 3000)  # wraps 30 ms after time 0
    with AvaSpec(library=fake) as spec:
        stamps = []
        for burst in range(3):
            spec.arm(2)
            for i in range(2):
                fake.trigger(time_s=(2 * burst + i) * PERIOD)
            spec.wait_frames(1.0)
            stamps.extend(spec.read_frames().timestamps_s)
            spec.disarm()
    np.testing.assert_allclose(np.diff(stamps), PERIOD, atol=1e-5)


def test_missed_trigger_times_out_and_gap_is_flagged(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(6)
    fake.miss_triggers(1)
    for i in range(6):
        fake.trigger(time_s=i * PERIOD)
    # the first shot is missed: no gap to see, only the count (5 of 6) tells
    with pytest.raises(InstrumentTimeout, match="5 of 6"):
        spec.wait_frames(0.1)
    frames = spec.read_frames()
    assert len(frames) == 5
    assert list(frame_gaps(frames.timestamps_s, PERIOD)) == [0, 0, 0, 0, 0]

    spec.arm(6)  # six DDG shots, the second one missed
    fake.trigger(time_s=0.0)
    fake.miss_triggers(1)
    for i in range(1, 6):
        fake.trigger(time_s=i * PERIOD)
    with pytest.raises(InstrumentTimeout):
        spec.wait_frames(0.05)
    frames = spec.read_frames()
    assert list(frame_gaps(frames.timestamps_s, PERIOD)) == [0, 1, 0, 0, 0]
    np.testing.assert_array_equal(frames.counters, np.arange(5))  # counters have no gap


def test_duplicate_and_late_frames(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(4)
    fake.trigger(time_s=0.0)
    fake.duplicate_next_frame()
    fake.trigger(time_s=PERIOD)
    fake.trigger(time_s=2 * PERIOD)
    fake.trigger(time_s=3 * PERIOD)
    assert spec.wait_frames(1.0) == 4  # the copy does not take the last frame's place
    frames = spec.read_frames()
    assert list(frame_gaps(frames.timestamps_s, PERIOD)) == [0, 0, 0, 0]
    np.testing.assert_allclose(frames.timestamps_s, np.arange(4) * PERIOD, atol=1e-5)
    assert spec.duplicates_dropped == 1

    spec.arm(1)
    fake.delay_next_frame(0.15)
    fake.trigger()
    with pytest.raises(InstrumentTimeout):
        spec.wait_frames(0.03)
    start = time.monotonic()
    assert spec.wait_frames(2.0) == 1
    assert time.monotonic() - start < 1.0


def test_gap_helper_rejects_bad_period() -> None:
    with pytest.raises(SettingOutOfRange):
        frame_gaps(np.array([0.0, 1.0]), 0.0)
    assert list(frame_gaps(np.array([0.0, 0.02, 0.08, 0.1]), PERIOD)) == [0, 0, 2, 0]


def test_disarm_from_other_thread_interrupts_wait(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(3)
    timer = threading.Timer(0.05, spec.disarm)
    timer.start()
    start = time.monotonic()
    with pytest.raises(InstrumentError, match="disarmed after 0 of 3"):
        spec.wait_frames(5.0)
    assert time.monotonic() - start < 1.0
    assert not fake.measuring


@pytest.mark.parametrize(
    ("function", "code", "error", "meaning"),
    [
        ("AVS_PollScan", -6, InstrumentTimeout, "timeout"),
        ("AVS_PollScan", -8, ProtocolError, "invalid measurement data"),
        ("AVS_PrepareMeasure", -16, InstrumentError, "communication error"),
        ("AVS_Measure", -99, InstrumentError, "unknown error"),
    ],
)
def test_error_codes_map_to_meanings(
    fake: AvaSpecFake, spec: AvaSpec, function: str, code: int, error: type, meaning: str
) -> None:
    fake.fail_next_call(code, function)
    with pytest.raises(error) as info:
        spec.arm(1)
        fake.trigger()
        spec.wait_frames(1.0)
    assert info.value.code == code and info.value.meaning == meaning
    assert info.value.command == function
    assert f"code {code} ({meaning})" in str(info.value)


def test_a_corrupt_frame_is_counted_and_the_others_are_kept(fake: AvaSpecFake,
                                                           spec: AvaSpec) -> None:
    spec.arm(4)
    for i in range(4):
        if i == 2:
            fake.garble_next_frame()
        fake.trigger(time_s=i * PERIOD)
    assert spec.wait_frames(1.0) == 3
    frames = spec.read_frames()
    assert frames.corrupt == 1 and spec.bad_frames == 1
    np.testing.assert_allclose(frames.timestamps_s, np.array([0, 1, 3]) * PERIOD, atol=1e-5)
    assert spec.read_frames().corrupt == 0  # reported once


def test_fake_validation_codes_surface_through_driver(fake: AvaSpecFake, spec: AvaSpec) -> None:
    fake.MIN_INTEGRATION_MS = 0.5  # a slower detector than the driver's generic limit
    spec.configure(0.1e-3)
    with pytest.raises(InstrumentError) as info:
        spec.arm(1)
    assert info.value.code == -11 and info.value.meaning == "invalid integration time"
    assert ERROR_MEANINGS[-10] == "invalid pixel range"
    # measuring before prepare is -21 in the fake, as in the library
    fresh = AvaSpecFake()
    with AvaSpec(library=fresh) as s:
        assert fresh.AVS_Measure(s._handle, None, 1) == -21
        assert fresh.AVS_PollScan(99) == -4


def test_fake_rejects_undeclared_or_mistyped_calls() -> None:
    fake = AvaSpecFake()
    with pytest.raises(AttributeError, match="argtypes"):
        fake.AVS_Init(0)
    fake.AVS_GetNumPixels.argtypes = SIGNATURES["AVS_GetNumPixels"][0]
    with pytest.raises(ctypes.ArgumentError):
        fake.AVS_GetNumPixels(1, ctypes.byref(ctypes.c_double()))


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "libavs.so"
    with pytest.raises(InstrumentError, match=r"not found at .*libavs\.so.*library_path"):
        AvaSpec(library_path=str(missing))


def test_missing_library_via_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(InstrumentError, match=r"nowhere\.so"):
        AvaSpec()


def test_file_that_is_not_a_library(tmp_path: Path) -> None:
    bogus = tmp_path / "libavs.so"
    bogus.write_bytes(b"this is not an ELF file\n" * 10)
    with pytest.raises(InstrumentError, match="could not be loaded") as info:
        AvaSpec(library_path=str(bogus))
    assert isinstance(info.value.__cause__, OSError)


def test_real_library_without_avs_exports() -> None:
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc to load")
    with pytest.raises(InstrumentError, match="does not export AVS_Init"):
        AvaSpec(library=ctypes.CDLL(libc))


def test_software_trigger_runs_free(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.configure(2e-3)
    spec.arm(3, trigger="software")
    assert fake.config is not None and fake.config["mode"] == 0
    assert not fake.trigger()  # an external edge is ignored in software mode
    assert spec.wait_frames(1.0) == 3
    np.testing.assert_allclose(np.diff(spec.read_frames().timestamps_s), 2e-3, atol=1e-5)


def test_waiting_polls_with_sleeps_not_a_spin(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(1)
    with pytest.raises(InstrumentTimeout):
        spec.wait_frames(0.1)
    polls = fake.calls.count("AVS_PollScan")
    assert 5 <= polls <= 0.1 / AvaSpec.POLL_INTERVAL_S + 5


def test_fake_takes_an_explicit_calibration() -> None:
    axis = 200.0 + 0.05 * np.arange(64) + 1e-5 * np.arange(64) ** 2
    fake = AvaSpecFake(num_pixels=64, wavelengths=axis)
    with AvaSpec(library=fake, start_pixel=4, stop_pixel=59) as spectrometer:
        np.testing.assert_array_equal(spectrometer.wavelength_nm(), axis[4:60])
    with pytest.raises(ValueError, match="64 values"):
        AvaSpecFake(num_pixels=64, wavelengths=axis[:10])


def test_stopped_frames_time_out_until_the_next_arm(fake: AvaSpecFake, spec: AvaSpec) -> None:
    spec.arm(3)
    fake.trigger(None, 0.0)
    fake.stop_frames()
    assert not fake.trigger(None, 0.02)
    with pytest.raises(InstrumentTimeout):
        spec.wait_frames(0.05)
    assert len(spec.read_frames()) == 1
    spec.arm(1)
    assert fake.trigger(None, 0.04)
    assert spec.wait_frames(1.0) == 1


def test_disconnected_fake_fails_every_call_with_a_typed_error(fake: AvaSpecFake,
                                                              spec: AvaSpec) -> None:
    seen: list[str] = []
    fake.on_call = seen.append
    spec.arm(2)
    fake.disconnect()
    with pytest.raises(InstrumentError) as info:
        spec.wait_frames(1.0)
    assert info.value.code == -16 and "communication" in str(info.value)
    assert seen[:2] == ["AVS_PrepareMeasure", "AVS_Measure"] and "AVS_PollScan" in seen
    fake.reconnect()
    spec.arm(1)
    assert fake.trigger(None, 1.0) and spec.wait_frames(1.0) == 1
