"""The spectrometer drivers' reconnect hook, against the vendor-library fakes: a unit that
stopped answering or dropped off the bus is opened again with its settings, and one that is
still gone raises a typed error; the fakes' unresponsive and unplugged faults."""

from __future__ import annotations

import numpy as np
import pytest

from plumelink.drivers.avantes import AvaSpec
from plumelink.drivers.errors import InstrumentError, InstrumentTimeout
from plumelink.drivers.ocean import OceanSpectrometer
from plumelink.drivers.protocols import Reconnect
from plumelink.drivers.sim.avaspec_fake import AvaSpecFake
from plumelink.drivers.sim.bench_bus import FaultKind, ShotFault
from plumelink.drivers.sim.seabreeze_fake import FakeSeaBreezeDevice, SeaBreezeFake


def _one_frame(fake: AvaSpecFake, spec: AvaSpec, t: float) -> np.ndarray:
    spec.arm(1)
    assert fake.trigger(np.arange(4096, dtype=np.float64), t)
    assert spec.wait_frames(1.0) == 1
    frames = spec.read_frames()
    spec.disarm()
    return frames.counts[0]


def test_an_unresponsive_unit_times_out_for_its_calls_then_answers(fake, spec) -> None:
    spec.arm(2)
    fake.stop_answering(3)
    for _ in range(3):
        with pytest.raises(InstrumentTimeout):
            spec.read_frames()
    assert fake.unanswered_calls == 3
    assert isinstance(spec, Reconnect)
    spec.reconnect()  # the measurement in flight was lost; the unit is opened again
    assert _one_frame(fake, spec, 1.0)[0] == 17


def test_an_unplugged_unit_needs_a_reconnect_and_keeps_its_settings(fake, spec) -> None:
    spec.configure(2e-3, 1e-6, 3)
    spec.arm(1)
    fake.unplug(calls=2)
    with pytest.raises(InstrumentError, match="communication error"):
        spec.wait_frames(0.2)
    with pytest.raises(InstrumentError, match="communication error"):
        spec.arm(1)
    with pytest.raises(InstrumentError, match="invalid device id"):  # back, session lost
        spec.arm(1)
    spec.reconnect()
    assert fake.calls[-8:].count("AVS_Activate") == 1 and fake.handle is not None
    counts = _one_frame(fake, spec, 2.0)
    assert counts.shape == (4062,) and counts[0] == 17
    assert fake.config["averages"] == 3 and fake.config["integration_ms"] == pytest.approx(2.0)


def test_reconnecting_a_unit_that_is_still_gone_raises_and_closes_cleanly(fake, spec) -> None:
    fake.unplug()
    for _ in range(3):
        with pytest.raises(InstrumentError, match=r"AVS_Init failed.*communication error"):
            spec.reconnect()
    spec.close()  # nothing left to close; no error
    fake.reconnect()  # back on the bus (its session stays lost)
    spec.reconnect()
    assert _one_frame(fake, spec, 3.0).size == 4062


def test_call_counted_faults_are_checked() -> None:
    assert ShotFault.unplugged("primary", 4).calls == 4
    assert ShotFault.unresponsive("primary").calls is None
    with pytest.raises(ValueError, match="calls"):
        ShotFault(FaultKind.GARBAGE, "primary", calls=2)
    with pytest.raises(ValueError, match="calls"):
        ShotFault.unresponsive("primary", 0)
    with pytest.raises(ValueError, match="spectrometers, not stage"):
        ShotFault.unplugged("stage", 1)


def test_ocean_reconnect_opens_the_unit_again_with_its_settings() -> None:
    device = FakeSeaBreezeDevice("FLMS12345", "USB2000PLUS", acquisition_delay=True)
    spec = OceanSpectrometer("FLMS12345", library=SeaBreezeFake([device]), timeout_s=2.0)
    try:
        spec.configure(5e-3, 0.0, 2)
        device.close()  # the unit went away under the driver
        with pytest.raises(InstrumentError):
            spec.arm(1)
        assert isinstance(spec, Reconnect)
        spec.reconnect()
        assert (spec.integration_time_s, spec.averages) == (5e-3, 2)
        assert spec.wavelength_nm().size == device.get_wavelengths().size
    finally:
        spec.close()
