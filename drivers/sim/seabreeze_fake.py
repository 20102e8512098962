"""A fake of ``seabreeze.spectrometers`` (python-seabreeze 2.x) for tests and ``resource = "sim"``.

Ocean Insight spectrometers are USB devices, so nothing of the real package can run without
one; this module has the same public names and signatures (``list_devices``, ``Spectrometer``
with ``from_serial_number`` / ``from_first_available`` / ``wavelengths`` / ``intensities`` /
``integration_time_micros`` / ``trigger_mode`` / ``features`` / ``f`` ...) and raises the same
exception type, ``SeaBreezeError``, with pyseabreeze's messages.

Behaviour modelled on the real devices (pyseabreeze ``devices.py``):

* integration time limits per model (µs, ``min <= t < max``), refused with SeaBreezeError;
* trigger modes per model: 0 normal (free running), 1 software/level, 2 synchronisation,
  3 external hardware edge (OOI protocol models, e.g. USB2000+, HR4000); an unsupported mode is
  refused ("Only supports: ...");
* in normal mode ``intensities()`` returns a fresh spectrum after one integration time
  (capped by ``max_sleep_s`` so tests stay fast); in any other mode it blocks until
  ``FakeSeaBreezeDevice.trigger`` delivers a spectrum, the mode is set back to normal, the
  device is closed (SeaBreezeError) or the USB read times out (SeaBreezeError "timed out");
* calls on a closed device raise SeaBreezeError; opening an open device from a second
  Spectrometer is refused ("Device already opened.").

``SeaBreezeFake(devices)`` is a module-like object (``list_devices``, ``Spectrometer``,
``SeaBreezeError``) over its own device list, so tests do not share state; the module-level
``list_devices`` / ``Spectrometer`` use one default device.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

__all__ = ["SeaBreezeError", "Spectrometer", "list_devices"]


class SeaBreezeError(Exception):
    """Same role as ``seabreeze._exc.SeaBreezeError`` (base of every backend's error)."""


NORMAL, SOFTWARE, SYNCHRONIZATION, HARDWARE = 0, 1, 2, 3

# model: (pixels, integration min µs, integration max µs, trigger modes, max intensity)
MODELS: dict[str, tuple[int, int, int, frozenset[int], float]] = {
    "USB2000PLUS": (2048, 1000, 655350000, frozenset({0, 1, 2, 3, 4}), 65535.0),
    "HR4000": (3840, 10, 655350000, frozenset({0, 1, 2, 3}), 16383.0),
    "FLAMES": (2048, 1000, 655350000, frozenset({0, 1, 2, 3, 4}), 65535.0),
    "QEPRO": (1044, 8000, 1600000000, frozenset({0, 1, 2, 3}), 200000.0),
    "STS": (1024, 10, 85000000, frozenset({0, 1, 2}), 16383.0),
}


class FakeAcquisitionDelayFeature:
    """``spec.f.acquisition_delay`` of models that have it (µs, with an increment)."""

    identifier = "acquisition_delay"

    def __init__(self, device: FakeSeaBreezeDevice, maximum_us: int = 1_000_000) -> None:
        self._device = device
        self._delay_us = 0
        self._maximum_us = maximum_us

    def set_delay_microseconds(self, delay_usec: int) -> None:
        self._device._check_open()
        if not 0 <= delay_usec <= self._maximum_us:
            raise SeaBreezeError(f"Delay not in [0, {self._maximum_us:d}]")
        self._delay_us = int(delay_usec)

    def get_delay_microseconds(self) -> int:
        self._device._check_open()
        return self._delay_us

    delay_microseconds = property(get_delay_microseconds, set_delay_microseconds)

    def get_delay_increment_microseconds(self) -> int:
        return 1

    def get_maximum_delay_microseconds(self) -> int:
        return self._maximum_us

    def get_minimum_delay_microseconds(self) -> int:
        return 0


class _FeatureAccessor:
    """``device.f``: one feature object per name, None when the model lacks it."""

    def __init__(self, features: dict[str, list[Any]]) -> None:
        self._features = features

    def __getattr__(self, name: str) -> Any:
        found = self.__dict__["_features"].get(name)
        return found[0] if found else None


class FakeSeaBreezeDevice:
    """Stands for a ``SeaBreezeDevice`` as returned by ``list_devices()`` (one USB unit) and
    holds the simulated instrument state. ``trigger`` is the test's external trigger input."""

    def __init__(
        self,
        serial_number: str = "FLMS00001",
        model: str = "USB2000PLUS",
        *,
        wavelength_nm: tuple[float, float] = (200.0, 1025.0),
        acquisition_delay: bool = False,
        read_timeout_s: float = 10.0,
        max_sleep_s: float = 0.01,
        seed: int = 0,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {sorted(MODELS)}")
        pixels, t_min, t_max, modes, max_intensity = MODELS[model]
        self.serial_number = serial_number
        self.model = model
        self.pixels = pixels
        self.integration_time_limits_us = (t_min, t_max)
        self.trigger_modes = modes
        self.max_intensity = max_intensity
        self.read_timeout_s = read_timeout_s
        self.max_sleep_s = max_sleep_s
        self.wavelengths = np.linspace(*wavelength_nm, pixels)
        self.is_open = False
        self.integration_time_us = max(t_min, 10_000)
        self.mode = NORMAL
        self.pending = 0  # intensities() calls currently blocked
        self.calls: list[tuple[str, Any]] = []
        self._rng = np.random.default_rng(seed)
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._cond = threading.Condition()
        self.features: dict[str, list[Any]] = {"spectrometer": [self]}
        if acquisition_delay:
            self.features["acquisition_delay"] = [FakeAcquisitionDelayFeature(self)]
        self.f = _FeatureAccessor(self.features)

    def __repr__(self) -> str:
        return f"<SeaBreezeDevice {self.model}:{self.serial_number}>"

    # --- device / spectrometer feature -------------------------------------------------------

    def open(self) -> None:
        with self._cond:
            self.is_open = True

    def close(self) -> None:
        with self._cond:
            self.is_open = False
            self._queue.clear()
            self._cond.notify_all()

    def _check_open(self) -> None:
        if not self.is_open:
            raise SeaBreezeError("Device not open.")

    def trigger(self, spectrum: Any = None) -> bool:
        """An external trigger edge. In a triggered mode the device acquires ``spectrum`` (a
        synthetic one if None; any array, even garbage, is delivered as is) and returns True;
        in normal mode or while closed the edge is ignored (False)."""
        with self._cond:
            if not self.is_open or self.mode == NORMAL:
                return False
            self._queue.append(self._synthetic() if spectrum is None else np.asarray(spectrum))
            self._cond.notify_all()
            return True

    def _synthetic(self) -> np.ndarray:
        scale = self.integration_time_us / 10_000
        base = 1000.0 + 50.0 * scale * np.exp(-(((self.wavelengths - 656.3) / 0.5) ** 2))
        noisy = base + self._rng.normal(0.0, 5.0, self.pixels)
        return np.clip(noisy, 0.0, self.max_intensity)

    def get_wavelengths(self) -> np.ndarray:
        self._check_open()
        return self.wavelengths.copy()

    def get_intensities(self) -> np.ndarray:
        with self._cond:
            self._check_open()
            self.calls.append(("get_intensities", self.mode))
            if self.mode == NORMAL:
                delay = min(self.integration_time_us * 1e-6, self.max_sleep_s)
                self._cond.wait(delay)
                self._check_open()
                return self._synthetic()
            deadline = time.monotonic() + self.read_timeout_s
            self.pending += 1
            try:
                while not self._queue:
                    self._check_open()
                    if self.mode == NORMAL:  # free running again: the pending read completes
                        return self._synthetic()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SeaBreezeError("[Errno 110] Operation timed out")
                    self._cond.wait(remaining)
                return np.array(self._queue.popleft(), copy=True)  # garbage delivered as is
            finally:
                self.pending -= 1
                self._cond.notify_all()

    def set_integration_time_micros(self, integration_time_micros: int) -> None:
        self._check_open()
        t_min, t_max = self.integration_time_limits_us
        if not t_min <= integration_time_micros < t_max:
            raise SeaBreezeError(f"Integration not in [{t_min:d}, {t_max:d}]")
        self.calls.append(("set_integration_time_micros", integration_time_micros))
        self.integration_time_us = int(integration_time_micros)

    def get_integration_time_micros_limits(self) -> tuple[int, int]:
        return self.integration_time_limits_us

    def set_trigger_mode(self, mode: int) -> None:
        with self._cond:
            self._check_open()
            if mode not in self.trigger_modes:
                raise SeaBreezeError(f"Only supports: {set(sorted(self.trigger_modes))}")
            self.calls.append(("set_trigger_mode", mode))
            self.mode = mode
            self._queue.clear()
            self._cond.notify_all()

    def get_maximum_intensity(self) -> float:
        return self.max_intensity

    def wait_pending(self, timeout_s: float = 2.0) -> bool:
        """Test helper: block until an ``intensities()`` call is waiting for a trigger."""
        with self._cond:
            return self._cond.wait_for(lambda: self.pending > 0, timeout_s)


class Spectrometer:
    """Same interface as ``seabreeze.spectrometers.Spectrometer`` over a FakeSeaBreezeDevice."""

    _fake: SeaBreezeFake

    def __init__(self, device: Any) -> None:
        if not isinstance(device, FakeSeaBreezeDevice):
            raise TypeError(f"`device` has to be a `SeaBreezeDevice` instance, got {device!r}")
        self._dev = device
        self.open()
        self._wavelengths = self._dev.get_wavelengths()

    @classmethod
    def from_first_available(cls) -> Spectrometer:
        for dev in cls._fake.list_devices():
            if not dev.is_open:
                return cls(dev)
        raise SeaBreezeError("No unopened device found.")

    @classmethod
    def from_serial_number(cls, serial: str | None = None) -> Spectrometer:
        if serial is None:
            return cls.from_first_available()
        for dev in cls._fake.list_devices():
            if dev.serial_number == str(serial):
                if dev.is_open:
                    raise SeaBreezeError("Device already opened.")
                return cls(dev)
        raise SeaBreezeError(f"No device attached with serial number '{serial}'.")

    def wavelengths(self) -> np.ndarray:
        return self._wavelengths

    def intensities(
        self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False
    ) -> np.ndarray:
        if correct_dark_counts or correct_nonlinearity:
            raise SeaBreezeError("This device does not support dark count correction.")
        return self._dev.get_intensities()

    @property
    def max_intensity(self) -> float:
        return self._dev.get_maximum_intensity()

    def spectrum(
        self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False
    ) -> np.ndarray:
        return np.vstack(
            (self._wavelengths, self.intensities(correct_dark_counts, correct_nonlinearity))
        )

    def integration_time_micros(self, integration_time_micros: int) -> None:
        try:
            self._dev.set_integration_time_micros(integration_time_micros)
        except OverflowError as exc:
            raise SeaBreezeError(
                "[OverFlow] Specified integration time is out of range."
            ) from exc

    @property
    def integration_time_micros_limits(self) -> tuple[int, int]:
        return self._dev.get_integration_time_micros_limits()

    def trigger_mode(self, mode: int) -> None:
        self._dev.set_trigger_mode(mode)

    @property
    def serial_number(self) -> str:
        return self._dev.serial_number

    @property
    def model(self) -> str:
        return self._dev.model

    @property
    def pixels(self) -> int:
        return self._dev.pixels

    @property
    def features(self) -> dict[str, list[Any]]:
        return self._dev.features

    @property
    def f(self) -> Any:
        return self._dev.f

    def open(self) -> None:
        self._dev.open()

    def close(self) -> None:
        self._dev.close()

    def __repr__(self) -> str:
        return f"<Spectrometer {self.model}:{self.serial_number}>"


class SeaBreezeFake:
    """A module-like stand-in for ``seabreeze.spectrometers`` over its own devices."""

    SeaBreezeError = SeaBreezeError

    def __init__(self, devices: list[FakeSeaBreezeDevice] | None = None) -> None:
        self.devices = [FakeSeaBreezeDevice()] if devices is None else list(devices)
        self.Spectrometer = type("Spectrometer", (Spectrometer,), {"_fake": self})

    def list_devices(self) -> list[FakeSeaBreezeDevice]:
        return list(self.devices)


_default = SeaBreezeFake()
Spectrometer._fake = _default


def list_devices() -> list[FakeSeaBreezeDevice]:
    """Devices of the module-level default fake (one USB2000PLUS)."""
    return _default.list_devices()
