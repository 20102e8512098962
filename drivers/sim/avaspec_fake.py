"""A fake AvaSpec library: the AVS_* functions of ``libavs.so`` with the same names, ctypes
argument conventions (byref / pointers / arrays / Structures) and negative error codes, so the
real ``plumelink.drivers.avantes.AvaSpec`` ctypes code runs against it unchanged.

Each export checks its arguments through the argtypes the driver declared, exactly as ctypes
would (``argtype.from_param``); with ``strict`` (default) calling an export whose argtypes were
never declared is an error, so a driver that forgets a declaration fails its tests.

The simulated bench calls ``trigger()`` once per DDG shot; in hardware-trigger mode each
trigger makes one frame (the spectrum cropped to the prepared pixels) with a u32 time label in
10 µs ticks. Fault injection: ``miss_triggers``, ``duplicate_next_frame``, ``delay_next_frame``,
``fail_next_call``, ``stop_frames`` (no more frames until the next AVS_Measure),
``disconnect`` (every call fails with a communication error until ``reconnect``),
``stop_answering`` (calls time out, for a number of calls or for good; the measurement in
progress is lost) and ``unplug`` (the unit drops off the bus, for a number of calls or for
good, and comes back without its session: the library must be initialised and the unit
activated again).

``wavelengths`` gives the sensor's per-pixel calibration explicitly (the simulated bench uses the
physics profile's polynomial); ``on_call(name)``, when set, runs before each export outside the
fake's lock (the simulated bench resolves pending shots there).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

INVALID_HANDLE = 1000
TICK_S = 10e-6

ERR_INVALID_PARAMETER = -1
ERR_DEVICE_NOT_FOUND = -3
ERR_INVALID_DEVICE_ID = -4
ERR_TIMEOUT = -6
ERR_INVALID_MEAS_DATA = -8
ERR_INVALID_SIZE = -9
ERR_INVALID_PIXEL_RANGE = -10
ERR_INVALID_INT_TIME = -11
ERR_COMMUNICATION = -16
ERR_INVALID_STATE = -21


def _target(arg: Any) -> Any:
    """The ctypes object behind a byref(), a pointer() or an array passed by the caller."""
    if hasattr(arg, "_obj"):  # ctypes.byref(...) -> CArgObject
        return arg._obj
    if isinstance(arg, ctypes._Pointer):
        return arg.contents
    return arg


def _as_array(arg: Any, dtype: Any) -> np.ndarray:
    obj = _target(arg)
    if not isinstance(obj, ctypes.Array):
        raise TypeError(f"expected a ctypes array, got {type(obj).__name__}")
    return np.ctypeslib.as_array(obj).view(dtype)


class _Export:
    """One library function: carries argtypes/restype like a ctypes function pointer."""

    def __init__(self, name: str, impl: Callable[..., Any], fake: AvaSpecFake) -> None:
        self.__name__ = name
        self.argtypes: list[Any] | None = None
        self.restype: Any = ctypes.c_int
        self._impl = impl
        self._fake = fake

    def __call__(self, *args: Any) -> Any:
        # a frame loop makes two calls per frame: kept lean (no per-argument try blocks)
        fake = self._fake
        if fake.on_call is not None:
            fake.on_call(self.__name__)
        argtypes = self.argtypes
        if argtypes is None:
            if fake.strict:
                raise AttributeError(f"{self.__name__} called without declared argtypes")
        else:
            if len(args) != len(argtypes):
                raise TypeError(
                    f"{self.__name__} takes {len(argtypes)} arguments ({len(args)} given)"
                )
            i = 0
            try:
                for i, (argtype, arg) in enumerate(zip(argtypes, args, strict=True)):  # noqa: B007
                    argtype.from_param(arg)
            except TypeError as exc:  # i: the argument that failed
                raise ctypes.ArgumentError(f"argument {i + 1}: {exc}") from exc
        with fake._lock:
            fake.calls.append(self.__name__)
            if fake.disconnected:
                result = ERR_COMMUNICATION
            elif fake._silent is not None:
                result = fake._silent_call()
            elif fake._failures and (code := fake._take_failure(self.__name__)) is not None:
                result = code
            else:
                result = self._impl(*args)
        if self.restype is ctypes.c_bool:
            return bool(result)
        return int(result)


@dataclass
class _Frame:
    ticks: int
    data: np.ndarray
    ready_at: float = 0.0
    invalid: bool = False  # AVS_GetScopeData returns ERR_INVALID_MEAS_DATA for it


class AvaSpecFake:
    """Library-level fake of one or more AvaSpec units (state: init, activated handle,
    prepared MeasConfigType, measuring with a frame budget, queued frames)."""

    MIN_INTEGRATION_MS = 0.002
    MAX_INTEGRATION_MS = 600_000.0

    def __init__(
        self,
        serials: tuple[str, ...] = ("2103123U1",),
        num_pixels: int = 4096,
        wavelength_nm: tuple[float, float] = (180.0, 900.0),
        *,
        strict: bool = True,
        start_ticks: int = 0,
        default_period_s: float = 0.02,
        wavelengths: np.ndarray | None = None,
    ) -> None:
        self.serials = serials
        self.num_pixels = num_pixels
        if wavelengths is None:
            self.wavelengths = np.linspace(*wavelength_nm, num_pixels)
        else:
            self.wavelengths = np.asarray(wavelengths, dtype=np.float64).copy()
            if self.wavelengths.shape != (num_pixels,):
                raise ValueError(f"wavelengths must have {num_pixels} values, "
                                 f"got shape {self.wavelengths.shape}")
        self.on_call: Callable[[str], None] | None = None
        self.disconnected = False
        self._stalled = False
        self.strict = strict
        self.start_ticks = start_ticks
        self.default_period_s = default_period_s
        self.calls: list[str] = []
        self.initialised = False
        self.handle: int | None = None
        self.high_res_adc = False
        self.config: dict[str, Any] | None = None
        self.measuring = False
        self.remaining = 0
        self.ignored_triggers = 0
        self._queue: deque[_Frame] = deque()
        self._time_s = 0.0
        self._lock = threading.RLock()
        self._miss = 0
        self._duplicate = False
        self._garble = False
        self._delay_s = 0.0
        self._failures: list[tuple[str | None, int]] = []
        self._silent: tuple[int, int | None] | None = None  # (code, calls left or None)
        self.unanswered_calls = 0  # calls failed by stop_answering / unplug so far
        for name in (
            "AVS_Init", "AVS_UpdateUSBDevices", "AVS_GetList", "AVS_Activate",
            "AVS_GetNumPixels", "AVS_GetLambda", "AVS_UseHighResAdc", "AVS_PrepareMeasure",
            "AVS_Measure", "AVS_PollScan", "AVS_GetScopeData", "AVS_StopMeasure",
            "AVS_Deactivate", "AVS_Done",
        ):  # fmt: skip
            setattr(self, name, _Export(name, getattr(self, "_" + name[4:]), self))

    # --- fault injection ---------------------------------------------------------------------

    def miss_triggers(self, n: int = 1) -> None:
        """The next ``n`` triggers produce no frame (time still advances)."""
        self._miss += n

    def duplicate_next_frame(self) -> None:
        self._duplicate = True

    def garble_next_frame(self) -> None:
        """The next frame is corrupt: AVS_GetScopeData returns ERR_INVALID_MEAS_DATA for it
        and the frame is gone (the unit itself goes on measuring)."""
        self._garble = True

    def delay_next_frame(self, seconds: float) -> None:
        """The next frame becomes visible to AVS_PollScan only ``seconds`` of wall time late."""
        self._delay_s = seconds

    def fail_next_call(self, code: int = ERR_TIMEOUT, function: str | None = None) -> None:
        """The next call (of ``function``, or of any export) returns ``code`` and does nothing."""
        self._failures.append((function, code))

    def stop_frames(self) -> None:
        """Triggers make no frames until the next AVS_Measure (a stalled acquisition: the
        driver's ``wait_frames`` times out)."""
        with self._lock:
            self._stalled = True

    def disconnect(self) -> None:
        """The unit drops off the bus: every call returns ERR_COMMUNICATION until `reconnect`."""
        with self._lock:
            self.disconnected = True
            self.measuring = False
            self._queue.clear()

    def reconnect(self) -> None:
        """The unit answers again: ends `disconnect`, `stop_answering` and `unplug` (after
        `unplug` the session stays lost)."""
        with self._lock:
            self.disconnected = False
            self._silent = None

    def stop_answering(self, calls: int | None = None, code: int = ERR_TIMEOUT) -> None:
        """The unit stops answering: the next ``calls`` calls (None: every call from now on)
        return ``code`` (a timeout by default) and do nothing. The measurement in progress is
        lost; the unit keeps its session (handle), so it answers again once the calls ran
        out."""
        if calls is not None and calls < 1:
            raise ValueError(f"calls must be >= 1 or None, got {calls!r}")
        with self._lock:
            self._silent = (code, calls)
            self.measuring = False
            self.remaining = 0
            self._queue.clear()

    def unplug(self, calls: int | None = None) -> None:
        """The unit drops off the bus (a USB cable pulled, a hub reset): the next ``calls``
        calls (None: every call from now on) fail with ERR_COMMUNICATION. Back on the bus it
        has lost its session: calls with the old handle fail (invalid device id) until the
        library is initialised and the unit activated again."""
        self.stop_answering(calls, ERR_COMMUNICATION)
        with self._lock:
            self.handle = None
            self.initialised = False
            self.config = None

    def _silent_call(self) -> int:
        assert self._silent is not None
        code, left = self._silent
        self.unanswered_calls += 1
        if left is not None:
            self._silent = (code, left - 1) if left > 1 else None
        return code

    def _take_failure(self, name: str) -> int | None:
        for i, (function, code) in enumerate(self._failures):
            if function is None or function == name:
                del self._failures[i]
                return code
        return None

    # --- the bench side ------------------------------------------------------------------------

    def trigger(self, spectrum: np.ndarray | None = None, time_s: float | None = None) -> bool:
        """One external trigger edge (a DDG shot). Returns True when a frame was produced.

        ``spectrum`` is full-sensor counts (num_pixels,), cropped to the prepared pixels (a
        read-only array is kept without a copy, so it must not change afterwards); None
        gives a flat dark frame. ``time_s`` is the device clock at the shot (default: the
        previous shot plus ``default_period_s``)."""
        with self._lock:
            self._time_s = self._time_s + self.default_period_s if time_s is None else time_s
            cfg = self.config
            if (self.disconnected or self._silent is not None or not self.measuring
                    or cfg is None or cfg["mode"] == 0 or self.remaining <= 0):
                self.ignored_triggers += 1
                return False
            if self._miss:
                self._miss -= 1
                return False
            if self._stalled:
                return False
            self._emit(spectrum)
            return True

    def _emit(self, spectrum: np.ndarray | None) -> None:
        cfg = self.config
        assert cfg is not None
        if spectrum is None:
            spectrum = np.full(self.num_pixels, 1000.0)
        data = np.asarray(spectrum)[cfg["start"] : cfg["stop"] + 1]
        if data.flags.writeable:  # a read-only block (the simulated bench's) is kept as is
            data = data.copy()
        ticks = (self.start_ticks + round(self._time_s / TICK_S)) & 0xFFFFFFFF
        ready = time.monotonic() + self._delay_s
        self._delay_s = 0.0
        copies = 2 if self._duplicate else 1
        invalid, self._duplicate, self._garble = self._garble, False, False
        for _ in range(copies):
            self._queue.append(_Frame(ticks, data, ready, invalid))
        self.remaining -= 1

    # --- exports ---------------------------------------------------------------------------

    def _check_handle(self, handle: int) -> int | None:
        if handle != self.handle or self.handle is None:
            return ERR_INVALID_DEVICE_ID
        return None

    def _Init(self, port: int) -> int:
        if port not in (0, -1, 256):
            return ERR_INVALID_PARAMETER
        self.initialised = True
        return len(self.serials)

    def _UpdateUSBDevices(self) -> int:
        return len(self.serials) if self.initialised else ERR_INVALID_STATE

    def _GetList(self, size: int, required: Any, ids: Any) -> int:
        array = _target(ids)
        need = len(self.serials) * ctypes.sizeof(array._type_)
        _target(required).value = need
        if size < need:
            return ERR_INVALID_SIZE
        for i, serial in enumerate(self.serials):
            array[i].SerialNumber = serial.encode()
            array[i].UserFriendlyName = b"AvaSpec-ULS4096CL-EVO"
            array[i].Status = 1 if self.handle is None else 2
        return len(self.serials)

    def _Activate(self, ident: Any) -> int:
        serial = _target(ident).SerialNumber.decode()
        if not self.initialised or serial not in self.serials:
            return INVALID_HANDLE
        self.handle = 1 + self.serials.index(serial)
        return self.handle

    def _GetNumPixels(self, handle: int, count: Any) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        _target(count).value = self.num_pixels
        return 0

    def _GetLambda(self, handle: int, buffer: Any) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        out = _as_array(buffer, np.float64)
        if out.shape[0] < self.num_pixels:
            return ERR_INVALID_SIZE
        out[: self.num_pixels] = self.wavelengths
        return 0

    def _UseHighResAdc(self, handle: int, enable: bool) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        self.high_res_adc = bool(enable)
        return 0

    def _PrepareMeasure(self, handle: int, config: Any) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        if self.measuring:
            return ERR_INVALID_STATE
        c = _target(config)
        if not c.StartPixel <= c.StopPixel < self.num_pixels:
            return ERR_INVALID_PIXEL_RANGE
        if not self.MIN_INTEGRATION_MS <= c.IntegrationTime <= self.MAX_INTEGRATION_MS:
            return ERR_INVALID_INT_TIME
        if c.NrAverages < 1 or c.Trigger.Mode > 2 or c.Trigger.Source > 1:
            return ERR_INVALID_PARAMETER
        self.config = {
            "start": c.StartPixel,
            "stop": c.StopPixel,
            "integration_ms": c.IntegrationTime,
            "delay_ticks": c.IntegrationDelay,
            "averages": c.NrAverages,
            "mode": c.Trigger.Mode,
            "source": c.Trigger.Source,
            "source_type": c.Trigger.SourceType,
        }
        return 0

    def _Measure(self, handle: int, window: Any, count: int) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        if self.config is None or self.measuring:
            return ERR_INVALID_STATE
        if count == 0 or count < -1:
            return ERR_INVALID_PARAMETER
        self._queue.clear()
        self._stalled = False
        self.measuring = True
        self.remaining = count if count > 0 else 1 << 62
        if self.config["mode"] == 0:  # software trigger: free running, frames come at once
            for _ in range(min(self.remaining, 10_000)):
                self._time_s += self.config["integration_ms"] * 1e-3
                self._emit(None)
        return 0

    def _PollScan(self, handle: int) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        if not self.measuring and not self._queue:
            return ERR_INVALID_STATE
        return int(bool(self._queue) and self._queue[0].ready_at <= time.monotonic())

    def _GetScopeData(self, handle: int, stamp: Any, buffer: Any) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        if not self._queue or self._queue[0].ready_at > time.monotonic():
            return ERR_INVALID_MEAS_DATA
        out = _as_array(buffer, np.float64)
        frame = self._queue.popleft()
        if frame.invalid:
            if not self._queue and self.remaining <= 0:
                self.measuring = False
            return ERR_INVALID_MEAS_DATA
        out[: frame.data.shape[0]] = frame.data
        _target(stamp).value = frame.ticks
        if not self._queue and self.remaining <= 0:
            self.measuring = False
        return 0

    def _StopMeasure(self, handle: int) -> int:
        if (err := self._check_handle(handle)) is not None:
            return err
        self.measuring = False
        self.remaining = 0
        self._queue.clear()
        return 0

    def _Deactivate(self, handle: int) -> bool:
        if self._check_handle(handle) is not None:
            return False
        self.handle = None
        self.measuring = False
        return True

    def _Done(self) -> int:
        self.initialised = False
        self.handle = None
        return 0
