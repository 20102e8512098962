"""Ocean Insight (Ocean Optics) spectrometers through python-seabreeze, an optional extra.

``pip install plumelink[ocean]`` installs ``seabreeze`` (python-seabreeze 2.x); it is imported
only when an ``OceanSpectrometer`` is opened, and its absence is a clear InstrumentError, not
an ImportError at import time. Tests inject ``plumelink.drivers.sim.seabreeze_fake`` (same
names, signatures and ``SeaBreezeError`` as ``seabreeze.spectrometers``) through ``library``.

Acquisition model: seabreeze has no frame buffer, no frame counter and no per-frame hardware
timestamp. ``arm`` sets the integration time and the trigger mode, then a background reader
thread calls ``Spectrometer.intensities()`` back to back; in external trigger mode each call
blocks until the device has acquired a triggered spectrum. Each frame is stamped with the host
monotonic clock (``time.monotonic()``) when it arrives, so ``Frames.timestamps_s`` is host
arrival time (USB latency and jitter included, typically ~ms), not a device clock: pairing
frames with laser shots relies on the driver's ``counters`` plus these arrival times. A
trigger that comes while the previous spectrum is still being read out may be missed by the
device; that shows only as an arrival-time gap.

Trigger modes are model dependent numbers (``Spectrometer.trigger_mode(mode)``): 0 is normal
(free running) on every model; the external hardware edge trigger is 3 on OOI-protocol models
(USB2000+, Flame-S, HR4000, USB4000, QE Pro EDGE ...) and 1 (OBP_EDGE) on OBP models (STS,
Spark). ``hardware_trigger_mode`` / ``software_trigger_mode`` override the table.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

import numpy as np

from .errors import (
    InstrumentError,
    InstrumentTimeout,
    ProtocolError,
    SettingOutOfRange,
)
from .protocols import Frames

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install plumelink[ocean]"
BACKENDS = ("cseabreeze", "pyseabreeze")
SOFTWARE_TRIGGER_MODE = 0  # "NORMAL": free running, every model
DEFAULT_HARDWARE_TRIGGER_MODE = 3  # "HARDWARE" / "EDGE" on OOI-protocol models
HARDWARE_TRIGGER_MODES: dict[str, int] = {  # models whose external edge mode is not 3
    "STS": 1,  # OBP_EDGE
    "SPARK": 1,
}
COUNTS_MAX = 65535


def load_seabreeze(backend: str | None = None) -> Any:
    """Import ``seabreeze.spectrometers`` (after ``seabreeze.use(backend)`` if given); raise a
    clear InstrumentError when python-seabreeze is not installed."""
    if backend is not None and backend not in BACKENDS:
        raise SettingOutOfRange("backend", backend, str(list(BACKENDS)), device="Ocean")
    try:
        seabreeze = importlib.import_module("seabreeze")
    except ImportError as exc:
        raise InstrumentError(
            f"python-seabreeze is not installed; {INSTALL_HINT} (or pip install seabreeze)",
            device="Ocean",
            meaning=str(exc),
        ) from exc
    if backend is not None:
        try:
            seabreeze.use(backend)
        except (ValueError, ImportError, RuntimeError) as exc:
            raise InstrumentError(
                f"seabreeze backend {backend!r} cannot be used: {exc}",
                device="Ocean",
                command="seabreeze.use",
            ) from exc
    try:
        return importlib.import_module("seabreeze.spectrometers")
    except ImportError as exc:
        raise InstrumentError(
            f"seabreeze.spectrometers could not be imported: {exc}; {INSTALL_HINT}",
            device="Ocean",
        ) from exc


def _is_timeout(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "timeout" in text or "timed out" in text


def _short(data: Any, limit: int = 80) -> str:
    text = np.array2string(np.asarray(data), threshold=8) if data is not None else "None"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_counts(raw: Any, n_pixels: int, *, device: str = "Ocean") -> np.ndarray:
    """Check one seabreeze spectrum (float a.u.) and return it as float64; ProtocolError on a
    wrong length or shape, non-numeric data, NaN or infinity."""
    try:
        data = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(
            f"spectrum is not numeric: {exc}", reply=_short(raw) if raw is not None else "None",
            device=device, command="intensities",
        ) from exc
    if data.shape != (n_pixels,):
        raise ProtocolError(
            f"spectrum has shape {data.shape}, expected ({n_pixels},)",
            reply=_short(data), device=device, command="intensities",
        )
    bad = ~np.isfinite(data)
    if bad.any():
        raise ProtocolError(
            f"spectrum has {int(bad.sum())} NaN/infinite pixels (first at {int(bad.argmax())})",
            reply=_short(data), device=device, command="intensities",
        )
    return data


def clip_counts(values: np.ndarray) -> np.ndarray:
    """Round to uint16 counts, clipping below 0 and above 65535 (e.g. 18-bit QE Pro)."""
    return np.clip(np.rint(values), 0, COUNTS_MAX).astype(np.uint16)


class OceanSpectrometer:
    """One Ocean Insight spectrometer. Implements ``plumelink.drivers.protocols.Spectrometer``.

    ``serial`` picks a unit by serial number (None: the first unopened one). ``backend``
    ("cseabreeze" or "pyseabreeze") is passed to ``seabreeze.use`` before the first import of
    ``seabreeze.spectrometers``. ``library`` injects a module-like object with the interface of
    ``seabreeze.spectrometers`` (``list_devices``, ``Spectrometer``, ``SeaBreezeError``).
    ``averages`` (see ``configure``) is done here in software: one frame is the mean of that
    many consecutive spectra, i.e. that many triggers in hardware mode. ``timeout_s`` is the
    default of ``wait_frames``.
    """

    MAX_AVERAGES = 65535
    MAX_FRAMES = 10_000_000
    JOIN_MARGIN_S = 1.0  # wait for the reader thread beyond one integration time at disarm

    def __init__(
        self,
        serial: str | None = None,
        *,
        backend: str | None = None,
        hardware_trigger_mode: int | None = None,
        software_trigger_mode: int = SOFTWARE_TRIGGER_MODE,
        timeout_s: float = 2.0,
        library: Any = None,
    ) -> None:
        self.device = "Ocean"
        self._lib = library if library is not None else load_seabreeze(backend)
        self._error_type: type[BaseException] = getattr(self._lib, "SeaBreezeError", Exception)
        self.timeout_s = timeout_s
        self.integration_time_s = 0.01
        self.delay_s = 0.0
        self.averages = 1
        self.trigger = "hardware"
        self._spec: Any = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._buffer: list[tuple[np.ndarray, float, int]] = []
        self._armed = 0
        self._received = 0
        self._error: InstrumentError | None = None
        self._connect(serial)
        self.trigger_modes = {
            "hardware": (
                HARDWARE_TRIGGER_MODES.get(self.model.upper(), DEFAULT_HARDWARE_TRIGGER_MODE)
                if hardware_trigger_mode is None
                else int(hardware_trigger_mode)
            ),
            "software": int(software_trigger_mode),
        }

    # --- library calls ---------------------------------------------------------------------

    def _call(self, command: str, function: Any, *args: Any) -> Any:
        """Call into seabreeze; its errors become typed InstrumentErrors naming the command."""
        try:
            return function(*args)
        except InstrumentError:
            raise
        except Exception as exc:  # SeaBreezeError, or a backend's USB / OS error
            cls = InstrumentTimeout if _is_timeout(exc) else InstrumentError
            raise cls(
                f"{command} failed: {exc}",
                device=self.device,
                command=command,
                code=getattr(exc, "error_code", None),
                meaning=type(exc).__name__,
            ) from exc

    def _connect(self, serial: str | None) -> None:
        devices = self._call("list_devices", self._lib.list_devices)
        serials = [str(getattr(d, "serial_number", "?")) for d in devices]
        if not devices:
            raise InstrumentError(
                "no Ocean spectrometer found (seabreeze list_devices() is empty)",
                device=self.device, command="list_devices",
            )
        if serial is not None and str(serial) not in serials:
            raise InstrumentError(
                f"Ocean spectrometer {serial!r} not found; connected: {serials}",
                device=self.device, command="list_devices",
            )
        spec = self._call(
            "Spectrometer.from_serial_number", self._lib.Spectrometer.from_serial_number, serial
        )
        self._spec = spec
        try:
            self.serial = str(spec.serial_number)
            self.model = str(spec.model)
            self.device = f"Ocean {self.model} {self.serial}"
            axis = np.asarray(self._call("wavelengths", spec.wavelengths), dtype=np.float64)
            if axis.ndim != 1 or axis.size < 2 or not np.all(np.isfinite(axis)):
                raise ProtocolError(
                    f"wavelength axis has shape {axis.shape} or non-finite values",
                    reply=_short(axis), device=self.device, command="wavelengths",
                )
            self._lambda = axis.copy()
            lo, hi = self._call(
                "integration_time_micros_limits", lambda: spec.integration_time_micros_limits
            )
            self.integration_limits_us = (int(lo), int(hi))
            self.integration_time_s = max(self.integration_time_s, lo * 1e-6)
        except BaseException:
            self.close()
            raise

    def _delay_feature(self) -> Any:
        features = self._call("features", lambda: self._spec.features) or {}
        found = features.get("acquisition_delay") if hasattr(features, "get") else None
        return found[0] if found else None

    # --- Spectrometer protocol -------------------------------------------------------------

    def identify(self) -> str:
        return f"Ocean Insight {self.model} S/N {self.serial}"

    @property
    def num_pixels(self) -> int:
        return int(self._lambda.size)

    def wavelength_nm(self) -> np.ndarray:
        return self._lambda.copy()

    def configure(self, integration_time_s: float, delay_s: float = 0.0, averages: int = 1) -> None:
        """Check and store the settings; they reach the device at ``arm``. The integration
        time range is the model's (``integration_time_micros_limits``, max exclusive);
        ``delay_s`` > 0 needs the model's acquisition delay feature."""
        lo, hi = self.integration_limits_us
        micros = round(integration_time_s * 1e6) if np.isfinite(integration_time_s) else -1
        if not lo <= micros < hi:
            raise SettingOutOfRange(
                "integration_time_s", integration_time_s,
                f"[{lo * 1e-6:g}, {hi * 1e-6:g}) s for the {self.model}", device=self.device,
            )
        if not np.isfinite(delay_s) or delay_s < 0:
            raise SettingOutOfRange("delay_s", delay_s, ">= 0 s", device=self.device)
        if delay_s > 0:
            feature = self._delay_feature()
            if feature is None:
                raise SettingOutOfRange(
                    "delay_s", delay_s,
                    f"0 s only (the {self.model} has no acquisition delay feature)",
                    device=self.device,
                )
            dmin = self._call("get_minimum_delay_microseconds",
                              feature.get_minimum_delay_microseconds)
            dmax = self._call("get_maximum_delay_microseconds",
                              feature.get_maximum_delay_microseconds)
            if not dmin <= round(delay_s * 1e6) <= dmax:
                raise SettingOutOfRange(
                    "delay_s", delay_s, f"[{dmin * 1e-6:g}, {dmax * 1e-6:g}] s",
                    device=self.device,
                )
        if (
            isinstance(averages, bool)
            or not isinstance(averages, int)
            or not 1 <= averages <= self.MAX_AVERAGES
        ):
            raise SettingOutOfRange(
                "averages", averages, f"integer 1..{self.MAX_AVERAGES}", device=self.device
            )
        self.integration_time_s = float(integration_time_s)
        self.delay_s = float(delay_s)
        self.averages = averages

    def arm(self, n_frames: int, trigger: str = "hardware") -> None:
        """Send integration time, delay and trigger mode, then start the reader thread."""
        if trigger not in self.trigger_modes:
            raise SettingOutOfRange(
                "trigger", trigger, str(sorted(self.trigger_modes)), device=self.device
            )
        if (
            isinstance(n_frames, bool)
            or not isinstance(n_frames, int)
            or not 1 <= n_frames <= self.MAX_FRAMES
        ):
            raise SettingOutOfRange(
                "n_frames", n_frames, f"1..{self.MAX_FRAMES}", device=self.device
            )
        if self._spec is None:
            raise InstrumentError("device is closed", device=self.device, command="arm")
        self.disarm()
        spec = self._spec
        self._call("integration_time_micros", spec.integration_time_micros,
                   round(self.integration_time_s * 1e6))
        feature = self._delay_feature()
        if feature is not None:
            self._call("set_delay_microseconds", feature.set_delay_microseconds,
                       round(self.delay_s * 1e6))
        self._call("trigger_mode", spec.trigger_mode, self.trigger_modes[trigger])
        self.trigger = trigger
        with self._cond:
            self._buffer = []
            self._received = 0
            self._armed = n_frames
            self._error = None
            self._stop = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(spec, self._stop, n_frames, self.averages),
            name=f"{self.device} reader",
            daemon=True,
        )
        self._reader.start()

    def _read_loop(self, spec: Any, stop: threading.Event, n_frames: int, averages: int) -> None:
        """Reader thread: one ``intensities()`` per spectrum (blocks until triggered), stamp
        each frame with the host monotonic clock on arrival, stop on ``stop`` or an error."""
        for counter in range(n_frames):
            total: np.ndarray | None = None
            got = 0
            while got < averages:
                try:
                    raw = spec.intensities()
                except Exception as exc:
                    if stop.is_set():
                        return
                    if _is_timeout(exc):  # backend read timeout: no trigger yet, keep waiting
                        continue
                    self._fail(InstrumentError(
                        f"intensities failed after {counter} frames: {exc}",
                        device=self.device, command="intensities",
                        code=getattr(exc, "error_code", None), meaning=type(exc).__name__,
                    ))
                    return
                arrived = time.monotonic()
                if stop.is_set():
                    return  # spectrum released by disarm, not a triggered frame
                try:
                    data = to_counts(raw, self.num_pixels, device=self.device)
                except ProtocolError as exc:
                    self._fail(exc)
                    return
                total = data if total is None else total + data
                got += 1
            assert total is not None
            counts = clip_counts(total / averages)
            with self._cond:
                if stop.is_set():
                    return
                self._buffer.append((counts, arrived, counter))
                self._received += 1
                self._cond.notify_all()

    def _fail(self, error: InstrumentError) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def wait_frames(self, timeout_s: float | None = None) -> int:
        """Block (on a condition variable, no polling) until all armed frames arrived; return
        how many are buffered. Raises InstrumentTimeout (frames so far stay readable), the
        reader's error (ProtocolError for garbage data), or InstrumentError when ``disarm``
        interrupted the wait."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        stop = self._stop
        with self._cond:
            self._cond.wait_for(
                lambda: self._received >= self._armed or self._error is not None
                or stop.is_set(),
                timeout,
            )
            if self._received >= self._armed:
                return len(self._buffer)
            if self._error is not None:
                raise self._error
            if stop.is_set():
                raise InstrumentError(
                    f"disarmed after {self._received} of {self._armed} frames",
                    device=self.device, command="wait_frames",
                )
            raise InstrumentTimeout(
                f"{self._received} of {self._armed} frames after {timeout} s",
                device=self.device, command="intensities",
            )

    def read_frames(self) -> Frames:
        """Return and clear the buffered frames. ``timestamps_s`` are host monotonic arrival
        times (see the module docstring), ``counters`` count frames since ``arm``."""
        with self._cond:
            frames, self._buffer = self._buffer, []
        if not frames:
            return Frames(
                np.zeros((0, self.num_pixels), np.uint16),
                np.zeros(0, np.float64),
                np.zeros(0, np.int64),
            )
        return Frames(
            np.stack([f[0] for f in frames]),
            np.array([f[1] for f in frames], dtype=np.float64),
            np.array([f[2] for f in frames], dtype=np.int64),
        )

    def disarm(self) -> None:
        """Stop an acquisition; safe from another thread. Waiters are woken at once. seabreeze
        has no abort call, so a read blocked waiting for a trigger is released by switching to
        the software (free running) mode: it then completes within one integration time and
        that spectrum is discarded."""
        stop = self._stop
        stop.set()
        with self._cond:
            self._cond.notify_all()
        reader = self._reader
        if reader is None or reader is threading.current_thread():
            return
        if reader.is_alive() and self._spec is not None:
            try:
                self._spec.trigger_mode(self.trigger_modes["software"])
            except Exception:
                log.warning("%s: could not switch to free running at disarm", self.device,
                            exc_info=True)
        reader.join(self.integration_time_s * max(self.averages, 1) + self.JOIN_MARGIN_S)
        if reader.is_alive():
            log.warning("%s: reader thread still blocked after disarm", self.device)
        elif self._reader is reader:
            self._reader = None

    def reconnect(self) -> None:
        """Open the unit again after it stopped answering or dropped off the bus: close the
        old seabreeze handle (errors ignored: the unit may be gone), then find the same serial
        and open it as at construction. Settings stay (they reach the unit at the next
        ``arm``); the arm in progress and its frames are lost. Raises InstrumentError while
        the unit is not back."""
        try:
            self.close()
        except InstrumentError as exc:
            log.info("%s: closing before a reconnect: %s", self.device, exc)
        self._spec = None
        with self._cond:
            self._buffer.clear()
            self._armed = self._received = 0
            self._error = None
        settings = (self.integration_time_s, self.delay_s, self.averages)
        self._connect(self.serial)
        self.integration_time_s, self.delay_s, self.averages = settings
        log.info("%s: reconnected", self.device)

    def close(self) -> None:
        spec = self._spec
        if spec is None:
            return
        try:
            self.disarm()
        finally:
            self._spec = None
            self._call("close", spec.close)

    def __enter__(self) -> OceanSpectrometer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
