"""The Ocean Insight (python-seabreeze) driver against the fake ``seabreeze.spectrometers``
(same names, signatures and SeaBreezeError), plus the missing-package path and, when
seabreeze is installed, a check that the fake's interface matches the real one."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from plumelink.drivers import ocean
from plumelink.drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from plumelink.drivers.ocean import OceanSpectrometer, clip_counts, load_seabreeze
from plumelink.drivers.protocols import Spectrometer
from plumelink.drivers.sim import seabreeze_fake
from plumelink.drivers.sim.seabreeze_fake import (
    FakeSeaBreezeDevice,
    SeaBreezeError,
    SeaBreezeFake,
)


@pytest.fixture
def device() -> FakeSeaBreezeDevice:
    return FakeSeaBreezeDevice("FLMS12345", "USB2000PLUS", acquisition_delay=True)


@pytest.fixture
def fake(device: FakeSeaBreezeDevice) -> SeaBreezeFake:
    return SeaBreezeFake([FakeSeaBreezeDevice("HR4C0001", "HR4000"), device])


@pytest.fixture
def spec(fake: SeaBreezeFake):
    s = OceanSpectrometer("FLMS12345", library=fake, timeout_s=2.0)
    yield s
    s.close()


def fire(device: FakeSeaBreezeDevice, spectra: list, gap_s: float = 0.002) -> threading.Thread:
    """Deliver one trigger per spectrum from another thread, each once a read is waiting."""

    def run() -> None:
        for s in spectra:
            assert device.wait_pending(2.0)
            assert device.trigger(s)
            time.sleep(gap_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- identify, axis, selection ------------------------------------------------------------------


def test_identify_axis_and_protocol(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    assert isinstance(spec, Spectrometer)
    assert spec.identify() == "Ocean Insight USB2000PLUS S/N FLMS12345"
    assert spec.device == "Ocean USB2000PLUS FLMS12345"
    axis = spec.wavelength_nm()
    assert axis.shape == (2048,) and axis.dtype == np.float64
    np.testing.assert_allclose(axis, device.wavelengths)
    axis[0] = -1.0  # a copy
    assert spec.wavelength_nm()[0] == pytest.approx(200.0)
    assert device.is_open
    assert spec.trigger_modes == {"hardware": 3, "software": 0}


def test_first_available_and_unknown_serial(fake: SeaBreezeFake) -> None:
    with OceanSpectrometer(library=fake) as first:
        assert first.model == "HR4000" and first.num_pixels == 3840
        # the HR4000 is open now: the next unopened one is picked
        with OceanSpectrometer(library=fake) as second:
            assert second.serial == "FLMS12345"
    assert not fake.devices[0].is_open
    with pytest.raises(InstrumentError, match="connected: \\['HR4C0001', 'FLMS12345'\\]"):
        OceanSpectrometer("NOPE", library=fake)
    with pytest.raises(InstrumentError, match="no Ocean spectrometer found"):
        OceanSpectrometer(library=SeaBreezeFake([]))


def test_already_open_is_typed_error(fake: SeaBreezeFake, spec: OceanSpectrometer) -> None:
    with pytest.raises(InstrumentError) as info:
        OceanSpectrometer("FLMS12345", library=fake)
    assert info.value.command == "Spectrometer.from_serial_number"
    assert info.value.meaning == "SeaBreezeError"
    assert "already opened" in str(info.value)


def test_trigger_mode_table_and_override() -> None:
    fake = SeaBreezeFake([FakeSeaBreezeDevice("STS0001", "STS")])
    with OceanSpectrometer(library=fake) as sts:
        assert sts.trigger_modes["hardware"] == 1  # OBP_EDGE
    with OceanSpectrometer(library=fake, hardware_trigger_mode=2) as sts:
        assert sts.trigger_modes["hardware"] == 2
        sts.arm(1, "hardware")
        assert fake.devices[0].mode == 2


# --- configure -----------------------------------------------------------------------------------


def test_configure_ranges(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    spec.configure(0.001, 0.0, 1)  # USB2000+: 1 ms .. 655.35 s (max exclusive)
    spec.configure(0.05, delay_s=1e-3, averages=3)
    assert (spec.integration_time_s, spec.delay_s, spec.averages) == (0.05, 1e-3, 3)
    for value in (0.0009, 655.35, -1.0, float("nan")):
        with pytest.raises(SettingOutOfRange) as info:
            spec.configure(value)
        assert info.value.setting == "integration_time_s"
        assert "USB2000PLUS" in info.value.allowed
    with pytest.raises(SettingOutOfRange, match="delay_s"):
        spec.configure(0.01, delay_s=2.0)  # feature max 1 s
    with pytest.raises(SettingOutOfRange, match="delay_s"):
        spec.configure(0.01, delay_s=-1e-6)
    for bad in (0, 70000, 1.5, True):
        with pytest.raises(SettingOutOfRange, match="averages"):
            spec.configure(0.01, averages=bad)  # type: ignore[arg-type]
    assert (spec.integration_time_s, spec.delay_s, spec.averages) == (0.05, 1e-3, 3)
    assert isinstance(SettingOutOfRange("x", 1, "y"), ValueError)


def test_delay_refused_without_feature(fake: SeaBreezeFake) -> None:
    with OceanSpectrometer("HR4C0001", library=fake) as hr:
        hr.configure(10e-6)  # the HR4000 goes down to 10 µs
        with pytest.raises(SettingOutOfRange, match="no acquisition delay feature"):
            hr.configure(0.01, delay_s=1e-6)


def test_arm_sends_settings(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    spec.configure(0.02, delay_s=5e-6)
    spec.arm(1, "software")
    assert ("set_integration_time_micros", 20000) in device.calls
    assert device.features["acquisition_delay"][0].get_delay_microseconds() == 5
    assert device.mode == 0
    assert spec.wait_frames(2.0) == 1
    with pytest.raises(SettingOutOfRange, match="trigger"):
        spec.arm(1, "single")
    with pytest.raises(SettingOutOfRange, match="n_frames"):
        spec.arm(0)


def test_unsupported_trigger_mode_is_typed(fake: SeaBreezeFake) -> None:
    with OceanSpectrometer("FLMS12345", library=fake, hardware_trigger_mode=7) as s:
        with pytest.raises(InstrumentError) as info:
            s.arm(1)
        assert info.value.command == "trigger_mode"
        assert "Only supports" in str(info.value)


# --- triggered acquisition -----------------------------------------------------------------------


def test_arm_trigger_wait_read(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    n = 5
    spec.configure(0.01)
    spectra = [np.full(2048, 100.0 * (k + 1)) for k in range(n)]
    spectra[2][7] = 70000.0  # above 16 bits: clipped
    spectra[3][9] = -3.0  # dark corrected below 0: clipped
    spec.arm(n, "hardware")
    assert device.mode == 3
    thread = fire(device, spectra)
    t0 = time.monotonic()
    assert spec.wait_frames(5.0) == n
    thread.join(2.0)
    frames = spec.read_frames()
    assert len(frames) == n
    assert frames.counts.shape == (n, 2048) and frames.counts.dtype == np.uint16
    assert frames.timestamps_s.dtype == np.float64 and frames.counters.dtype == np.int64
    np.testing.assert_array_equal(frames.counters, np.arange(n))
    assert np.all(np.diff(frames.timestamps_s) > 0)
    assert t0 - 1.0 < frames.timestamps_s[0] <= time.monotonic()  # host monotonic clock
    np.testing.assert_array_equal(frames.counts[:, 0], [100, 200, 300, 400, 500])
    assert frames.counts[2, 7] == 65535 and frames.counts[3, 9] == 0
    assert len(spec.read_frames()) == 0  # read clears
    assert spec.read_frames().counts.shape == (0, 2048)


def test_software_averaging(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    spec.configure(0.01, averages=2)
    spec.arm(2, "hardware")
    fire(device, [np.full(2048, v) for v in (10.0, 21.0, 100.0, 200.0)])
    assert spec.wait_frames(5.0) == 2
    np.testing.assert_array_equal(spec.read_frames().counts[:, 0], [16, 150])  # rint(15.5)=16


def test_free_running_software_mode(spec: OceanSpectrometer) -> None:
    spec.configure(0.001)
    spec.arm(3, "software")
    assert spec.wait_frames(2.0) == 3
    frames = spec.read_frames()
    assert frames.counts.shape == (3, 2048) and frames.counts.max() > 0


def test_timeout_keeps_partial_frames(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    spec.arm(4, "hardware")
    fire(device, [None, None]).join(2.0)
    with pytest.raises(InstrumentTimeout, match="2 of 4 frames") as info:
        spec.wait_frames(0.2)
    assert info.value.device == "Ocean USB2000PLUS FLMS12345"
    frames = spec.read_frames()
    assert len(frames) == 2
    np.testing.assert_array_equal(frames.counters, [0, 1])
    # the acquisition goes on: the remaining two frames keep their counters
    fire(device, [None, None]).join(2.0)
    assert spec.wait_frames(2.0) == 2
    np.testing.assert_array_equal(spec.read_frames().counters, [2, 3])


def test_backend_read_timeout_is_retried(fake: SeaBreezeFake, device: FakeSeaBreezeDevice) -> None:
    device.read_timeout_s = 0.05  # the USB read times out while no trigger comes
    with OceanSpectrometer("FLMS12345", library=fake) as s:
        s.arm(1)
        time.sleep(0.2)
        fire(device, [None])
        assert s.wait_frames(2.0) == 1


def test_disarm_from_other_thread_unblocks(
    spec: OceanSpectrometer, device: FakeSeaBreezeDevice
) -> None:
    spec.arm(3, "hardware")
    fire(device, [None]).join(2.0)
    timer = threading.Timer(0.1, spec.disarm)
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(InstrumentError, match="disarmed after 1 of 3") as info:
        spec.wait_frames(5.0)
    assert not isinstance(info.value, InstrumentTimeout)
    assert time.monotonic() - t0 < 2.0
    timer.join()
    assert spec._reader is None  # the blocked read was released and the thread ended
    assert device.mode == 0 and device.pending == 0
    assert len(spec.read_frames()) == 1
    # re-armable afterwards
    spec.arm(1, "hardware")
    fire(device, [None])
    assert spec.wait_frames(2.0) == 1


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (np.full(2048, np.nan), "NaN/infinite"),
        (np.r_[np.zeros(2047), np.inf], "NaN/infinite"),
        (np.zeros(2047), "shape \\(2047,\\)"),
        (np.zeros((2, 2048)), "shape \\(2, 2048\\)"),
        (np.array(["a"] * 2048), "not numeric"),
    ],
)
def test_garbage_is_protocol_error(
    spec: OceanSpectrometer, device: FakeSeaBreezeDevice, garbage: np.ndarray, match: str
) -> None:
    spec.arm(3, "hardware")
    fire(device, [None, garbage]).join(2.0)
    with pytest.raises(ProtocolError, match=match) as info:
        spec.wait_frames(2.0)
    assert info.value.command == "intensities" and info.value.reply
    frames = spec.read_frames()  # the good frame before the garbage stays readable
    np.testing.assert_array_equal(frames.counters, [0])


def test_closed_device_error_is_typed(spec: OceanSpectrometer, device: FakeSeaBreezeDevice) -> None:
    spec.arm(2, "hardware")
    assert device.wait_pending(2.0)
    device.close()  # e.g. unplugged / closed under the driver
    with pytest.raises(InstrumentError, match="intensities failed after 0 frames") as info:
        spec.wait_frames(2.0)
    assert info.value.meaning == "SeaBreezeError"


def test_close_is_idempotent_and_final(fake: SeaBreezeFake, device: FakeSeaBreezeDevice) -> None:
    s = OceanSpectrometer("FLMS12345", library=fake)
    s.arm(2)
    assert device.wait_pending(2.0)
    s.close()
    assert not device.is_open
    s.close()
    with pytest.raises(InstrumentError, match="closed"):
        s.arm(1)


def test_clip_counts() -> None:
    out = clip_counts(np.array([-1.0, 0.4, 0.6, 65535.4, 1e9]))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [0, 0, 1, 65535, 65535])


# --- fake behaviour -----------------------------------------------------------------------------


def test_fake_errors_like_seabreeze(device: FakeSeaBreezeDevice) -> None:
    fake = SeaBreezeFake([device])
    s = fake.Spectrometer.from_serial_number("FLMS12345")
    with pytest.raises(SeaBreezeError, match="Integration not in \\[1000, 655350000\\]"):
        s.integration_time_micros(999)
    with pytest.raises(SeaBreezeError, match="Only supports"):
        s.trigger_mode(9)
    with pytest.raises(SeaBreezeError, match="No unopened device"):
        fake.Spectrometer.from_first_available()
    with pytest.raises(SeaBreezeError, match="No device attached"):
        fake.Spectrometer.from_serial_number("X")
    assert s.integration_time_micros_limits == (1000, 655350000)
    assert s.spectrum().shape == (2, 2048)
    s.trigger_mode(3)
    assert device.trigger(np.full(2048, 5.0))  # triggered mode: the edge is acquired
    assert s.intensities()[0] == 5.0
    s.close()
    with pytest.raises(SeaBreezeError, match="not open"):
        s.intensities()
    assert not device.trigger(None)  # edges on a closed device are ignored
    with pytest.raises(TypeError):
        fake.Spectrometer(object())
    assert [d.serial_number for d in seabreeze_fake.list_devices()] == ["FLMS00001"]


# --- missing / real seabreeze --------------------------------------------------------------------


def test_missing_seabreeze_is_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "seabreeze", None)  # import seabreeze -> ImportError
    with pytest.raises(InstrumentError, match="pip install plumelink\\[ocean\\]") as info:
        OceanSpectrometer()
    assert not isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(SettingOutOfRange, match="backend"):
        load_seabreeze("libusb")


HAVE_SEABREEZE = importlib.util.find_spec("seabreeze") is not None


@pytest.mark.skipif(not HAVE_SEABREEZE, reason="python-seabreeze not installed")
def test_fake_matches_real_seabreeze_interface() -> None:
    real = importlib.import_module("seabreeze.spectrometers")
    from seabreeze._exc import SeaBreezeError as RealError

    assert real.SeaBreezeError is RealError
    assert set(real.__all__) <= set(dir(seabreeze_fake))
    assert set(seabreeze_fake.__all__) == set(real.__all__)
    assert inspect.signature(seabreeze_fake.list_devices).parameters.keys() == \
        inspect.signature(real.list_devices).parameters.keys()
    public = [n for n in vars(real.Spectrometer) if not n.startswith("_")] + ["__init__"]
    for name in public:
        real_attr = inspect.getattr_static(real.Spectrometer, name)
        fake_attr = inspect.getattr_static(seabreeze_fake.Spectrometer, name)
        assert type(fake_attr) is type(real_attr), name  # property / classmethod / function
        if isinstance(real_attr, property):
            continue
        real_sig = inspect.signature(getattr(real.Spectrometer, name))
        fake_sig = inspect.signature(getattr(seabreeze_fake.Spectrometer, name))
        assert [(p.name, p.kind, p.default) for p in fake_sig.parameters.values()] == [
            (p.name, p.kind, p.default) for p in real_sig.parameters.values()
        ], name
    # both the module-like fake and the real module are what the driver needs
    for module in (real, SeaBreezeFake()):
        assert callable(module.list_devices) and hasattr(module.Spectrometer, "from_serial_number")
        assert issubclass(module.SeaBreezeError, Exception)


@pytest.mark.skipif(not HAVE_SEABREEZE, reason="python-seabreeze not installed")
def test_real_seabreeze_imports_lazily() -> None:
    module = load_seabreeze()
    assert module.__name__ == "seabreeze.spectrometers"
    assert ocean.INSTALL_HINT == "pip install plumelink[ocean]"


def test_ocean_spectrometer_in_a_bench_profile(tmp_path):
    """The "ocean" driver opens from a profile like any spectrometer, on its seabreeze fake."""
    import tomllib

    from plumelink.drivers.bench import BenchProfile, open_bench

    data = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "resources/benches/simulated.toml").read_text())
    data["spectrometers"]["secondary"] = {"driver": "ocean", "resource": "sim",
                                          "sim_model": "USB2000PLUS", "sim_serial": "USB2+F0001"}
    profile = BenchProfile.from_dict(data, source="ocean-bench")
    with open_bench(profile) as bench:
        snap = bench.settings_snapshot()["spectrometers"]["secondary"]
        assert snap["driver"] == "ocean"
        assert snap["serial"] == "USB2+F0001"
        assert snap["n_pixels"] == bench.spectrometers["secondary"].wavelength_nm().size
