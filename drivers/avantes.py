"""Avantes AvaSpec spectrometers (e.g. ULS4096CL-EVO on AS7010) through the vendor library.

The USB/Ethernet wire protocol is not public, so this is a ctypes wrapper of ``libavs.so``
(Linux) or ``avaspecx64.dll`` (Windows). Tests inject a fake library object with the same
function names and ctypes calling conventions (``plumelink.drivers.sim.avaspec_fake``).

Call sequence: AVS_Init(0), AVS_UpdateUSBDevices, AVS_GetList, AVS_Activate, AVS_GetNumPixels,
AVS_GetLambda, AVS_UseHighResAdc(1); per acquisition AVS_PrepareMeasure, AVS_Measure(n),
AVS_PollScan / AVS_GetScopeData per frame, AVS_StopMeasure; at the end AVS_Deactivate,
AVS_Done. Units at this API: seconds, nm, counts; the struct holds ms and 48 MHz FPGA ticks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_double,
    c_float,
    c_int,
    c_short,
    c_ubyte,
    c_uint16,
    c_uint32,
    c_void_p,
)
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

LIBRARY_ENV = "PLUMELINK_AVASPEC_LIB"
DEFAULT_LIBRARY = "avaspecx64.dll" if sys.platform == "win32" else "libavs.so"

TIMESTAMP_TICK_S = 10e-6  # AVS_GetScopeData time label: u32 in 10 µs ticks
TIMESTAMP_WRAP = 1 << 32
FPGA_TICK_S = 1.0 / 48e6  # IntegrationDelay, LaserDelay, LaserWidth: 48 MHz ticks (20.83 ns)
INVALID_HANDLE = 1000  # INVALID_AVS_HANDLE_VALUE returned by AVS_Activate
MAX_DEVICES = 16

ERROR_MEANINGS: dict[int, str] = {
    -1: "invalid parameter",
    -2: "operation not supported",
    -3: "device not found",
    -4: "invalid device id",
    -5: "operation pending",
    -6: "timeout",
    -8: "invalid measurement data",
    -9: "invalid size",
    -10: "invalid pixel range",
    -11: "invalid integration time",
    -12: "invalid combination",
    -14: "no measurement buffer available",
    -16: "communication error",
    -21: "invalid state",
    -24: "access error",
}

TRIGGER_MODES = {"software": 0, "hardware": 1, "single": 2}


def error_meaning(code: int) -> str:
    return ERROR_MEANINGS.get(code, "unknown error")


# --- structures (avaspec.h layout, packed to 1 byte) -------------------------------------------


class AvsIdentityType(Structure):
    _pack_ = 1
    _fields_ = [
        ("SerialNumber", c_char * 10),
        ("UserFriendlyName", c_char * 64),
        ("Status", c_ubyte),
    ]


class DarkCorrectionType(Structure):
    _pack_ = 1
    _fields_ = [("Enable", c_ubyte), ("ForgetPercentage", c_ubyte)]


class SmoothingType(Structure):
    _pack_ = 1
    _fields_ = [("SmoothPix", c_uint16), ("SmoothModel", c_ubyte)]


class TriggerType(Structure):
    _pack_ = 1
    _fields_ = [("Mode", c_ubyte), ("Source", c_ubyte), ("SourceType", c_ubyte)]


class ControlSettingsType(Structure):
    _pack_ = 1
    _fields_ = [
        ("StrobeControl", c_uint16),
        ("LaserDelay", c_uint32),
        ("LaserWidth", c_uint32),
        ("LaserWaveLength", c_float),
        ("StoreToRam", c_uint16),
    ]


class MeasConfigType(Structure):
    _pack_ = 1
    _fields_ = [
        ("StartPixel", c_uint16),
        ("StopPixel", c_uint16),
        ("IntegrationTime", c_float),  # ms
        ("IntegrationDelay", c_uint32),  # FPGA ticks
        ("NrAverages", c_uint32),
        ("CorDynDark", DarkCorrectionType),
        ("Smoothing", SmoothingType),
        ("SaturationDetection", c_ubyte),
        ("Trigger", TriggerType),
        ("Control", ControlSettingsType),
    ]


# Every library function this driver calls: (argtypes, restype).
SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "AVS_Init": ([c_short], c_int),
    "AVS_UpdateUSBDevices": ([], c_int),
    "AVS_GetList": ([c_uint32, POINTER(c_uint32), POINTER(AvsIdentityType)], c_int),
    "AVS_Activate": ([POINTER(AvsIdentityType)], c_int),
    "AVS_GetNumPixels": ([c_int, POINTER(c_uint16)], c_int),
    "AVS_GetLambda": ([c_int, POINTER(c_double)], c_int),
    "AVS_UseHighResAdc": ([c_int, c_bool], c_int),
    "AVS_PrepareMeasure": ([c_int, POINTER(MeasConfigType)], c_int),
    "AVS_Measure": ([c_int, c_void_p, c_short], c_int),
    "AVS_PollScan": ([c_int], c_int),
    "AVS_GetScopeData": ([c_int, POINTER(c_uint32), POINTER(c_double)], c_int),
    "AVS_StopMeasure": ([c_int], c_int),
    "AVS_Deactivate": ([c_int], c_bool),
    "AVS_Done": ([], c_int),
}


def load_library(library_path: str | None = None) -> Any:
    """Load the AvaSpec library from ``library_path``, ``$PLUMELINK_AVASPEC_LIB`` or the
    platform default name; raise a clear InstrumentError when it is missing or unloadable."""
    path = library_path or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY
    explicit = path != DEFAULT_LIBRARY or os.sep in path
    if explicit and not os.path.exists(path):
        raise InstrumentError(
            f"AvaSpec library not found at {path}; install the Avantes SDK or pass "
            f"library_path (or set {LIBRARY_ENV})",
            device="AvaSpec",
        )
    try:
        # x64 has one calling convention, so CDLL serves the Windows DLL too.
        return ctypes.CDLL(path)
    except OSError as exc:
        what = "could not be loaded" if explicit else "not found"
        raise InstrumentError(
            f"AvaSpec library {what} at {path}: {exc}; install the Avantes SDK or pass "
            f"library_path (or set {LIBRARY_ENV})",
            device="AvaSpec",
        ) from exc


def declare_signatures(library: Any) -> None:
    """Set argtypes/restype of every function used; a missing export is an InstrumentError."""
    for name, (argtypes, restype) in SIGNATURES.items():
        try:
            function = getattr(library, name)
        except AttributeError as exc:
            raise InstrumentError(
                f"AvaSpec library does not export {name}", device="AvaSpec"
            ) from exc
        function.argtypes = argtypes
        function.restype = restype


class DeviceClock:
    """The unit's u32 10-µs time label as seconds on one continuous clock (wraps every
    ~11.9 h), kept for the whole connection: a wrap between two arms must not send the clock
    back, or the pairing's learnt clock offsets would all be wrong from then on.

    A label more than half the counter's range below the latest one means the counter
    wrapped; one more than half above it is a late frame from before the last wrap.
    """

    def __init__(self) -> None:
        self.latest_raw: int | None = None
        self.wraps = 0

    def seconds(self, raw: int) -> float:
        wraps = self.wraps
        if self.latest_raw is not None:
            step = raw - self.latest_raw
            if step < -(TIMESTAMP_WRAP // 2):
                self.wraps = wraps = wraps + 1
            elif step > TIMESTAMP_WRAP // 2 and wraps:
                return (raw + (wraps - 1) * TIMESTAMP_WRAP) * TIMESTAMP_TICK_S
            if step < -(TIMESTAMP_WRAP // 2) or step > 0:
                self.latest_raw = raw
        else:
            self.latest_raw = raw
        return (raw + wraps * TIMESTAMP_WRAP) * TIMESTAMP_TICK_S


def frame_gaps(
    timestamps_s: np.ndarray, expected_period_s: float, tolerance: float = 0.25
) -> np.ndarray:
    """Estimated missing frames before each frame, from device timestamps and the trigger
    period: 0 normal, k >= 1 when the gap is about (k + 1) periods (k missed triggers), -1 for
    a gap of at most ``tolerance`` periods (a duplicated frame). Other gaps are rounded to the
    nearest whole number of periods, so a late frame followed by an early one reads 0, 0.
    The first frame is always 0."""
    if expected_period_s <= 0:
        raise SettingOutOfRange("expected_period_s", expected_period_s, "> 0")
    t = np.asarray(timestamps_s, dtype=np.float64)
    out = np.zeros(t.shape[0], dtype=np.int64)
    if t.shape[0] < 2:
        return out
    periods = np.diff(t) / expected_period_s
    n = np.rint(periods)
    n[(n == 0) & (periods > tolerance)] = 1
    n[periods <= tolerance] = 0
    out[1:] = n.astype(np.int64) - 1
    return out


class AvaSpec:
    """One AvaSpec unit. Implements ``plumelink.drivers.protocols.Spectrometer``.

    ``serial`` picks a unit by serial number (None: the first found). ``library`` injects an
    object exposing the AVS_* functions (a fake in tests); otherwise the library is loaded
    from ``library_path`` / ``$PLUMELINK_AVASPEC_LIB`` / the platform default. Pixels
    ``start_pixel..stop_pixel`` (inclusive) are read, e.g. 4062 px of a 4096-px sensor.
    """

    MIN_INTEGRATION_S = 2e-6
    MAX_INTEGRATION_S = 600.0
    MAX_AVERAGES = 65535
    MAX_FRAMES = 32767  # AVS_Measure's count is a C short
    POLL_INTERVAL_S = 0.002

    def __init__(
        self,
        serial: str | None = None,
        *,
        library_path: str | None = None,
        library: Any = None,
        start_pixel: int = 0,
        stop_pixel: int | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self._lib = library if library is not None else load_library(library_path)
        declare_signatures(self._lib)
        self.timeout_s = timeout_s
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._handle: int | None = None
        self._initialised = False
        self.device = "AvaSpec"
        self.integration_time_s = 1e-3
        self.delay_s = 0.0
        self.averages = 1
        self._armed = 0  # frames requested by the last arm
        self._measuring = False
        self._received = 0  # frames fetched since the last arm
        self._returned = 0  # of those, handed out by read_frames
        # one block per arm, filled row by row (rounded to counts as each frame arrives)
        self._counts = np.zeros((0, 0), np.uint16)
        self._stamps = np.zeros(0, np.float64)
        self._clock = DeviceClock()
        self.bad_frames = 0  # frames of the last arm the library returned as invalid data
        self.duplicates_dropped = 0  # exact copies of a frame, dropped (since the last arm)
        self._last_label: int | None = None  # raw time label of the last frame kept
        self._corrupt_unread = 0  # bad frames not yet reported by read_frames
        try:
            self._connect(serial)
            n = self.num_pixels
            last = n - 1 if stop_pixel is None else stop_pixel
            if not 0 <= start_pixel <= last <= n - 1:
                raise SettingOutOfRange(
                    "pixel range",
                    (start_pixel, last),
                    f"0 <= start <= stop <= {n - 1}",
                    device=self.device,
                )
            self.start_pixel, self.stop_pixel = start_pixel, last
        except BaseException:
            self.close()
            raise

    # --- library calls ---------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> int:
        with self._io:
            result = getattr(self._lib, name)(*args)
        if isinstance(result, bool):
            return int(result)
        if result < 0:
            meaning = error_meaning(result)
            cls = {-6: InstrumentTimeout, -8: ProtocolError}.get(result, InstrumentError)
            raise cls(
                f"{name} failed", device=self.device, command=name, code=result, meaning=meaning
            )
        return result

    def _connect(self, serial: str | None) -> None:
        found = self._call("AVS_Init", 0)
        self._initialised = True
        found = max(found, self._call("AVS_UpdateUSBDevices"))
        if found == 0:
            raise InstrumentError("no AvaSpec found on USB", device=self.device)
        ids = (AvsIdentityType * MAX_DEVICES)()
        required = c_uint32(0)
        n = self._call("AVS_GetList", ctypes.sizeof(ids), ctypes.byref(required), ids)
        serials = [ids[i].SerialNumber.decode("ascii", "replace") for i in range(n)]
        if serial is None:
            index = 0 if n else -1
        else:
            index = serials.index(serial) if serial in serials else -1
        if index < 0:
            raise InstrumentError(
                f"AvaSpec {serial!r} not found; connected: {serials}", device=self.device
            )
        self.device = f"AvaSpec {serials[index]}"
        self.serial = serials[index]
        handle = self._call("AVS_Activate", ctypes.byref(ids[index]))
        if handle == INVALID_HANDLE:
            raise InstrumentError("AVS_Activate returned an invalid handle", device=self.device)
        self._handle = handle
        count = c_uint16(0)
        self._call("AVS_GetNumPixels", handle, ctypes.byref(count))
        self.num_pixels = int(count.value)
        lam = (c_double * self.num_pixels)()
        self._call("AVS_GetLambda", handle, lam)
        self._lambda = np.ctypeslib.as_array(lam).copy()
        self._call("AVS_UseHighResAdc", handle, True)

    # --- Spectrometer protocol -------------------------------------------------------------

    @property
    def n_active(self) -> int:
        return self.stop_pixel - self.start_pixel + 1

    def wavelength_nm(self) -> np.ndarray:
        return self._lambda[self.start_pixel : self.stop_pixel + 1].copy()

    def configure(self, integration_time_s: float, delay_s: float = 0.0, averages: int = 1) -> None:
        """Check and store the settings; they reach the device at ``arm``."""
        if not self.MIN_INTEGRATION_S <= integration_time_s <= self.MAX_INTEGRATION_S:
            raise SettingOutOfRange(
                "integration_time_s",
                integration_time_s,
                f"[{self.MIN_INTEGRATION_S}, {self.MAX_INTEGRATION_S}] s",
                device=self.device,
            )
        max_delay = (TIMESTAMP_WRAP - 1) * FPGA_TICK_S
        if not 0.0 <= delay_s <= max_delay:
            raise SettingOutOfRange(
                "delay_s", delay_s, f"[0, {max_delay:.3f}] s", device=self.device
            )
        if (
            isinstance(averages, bool)
            or not isinstance(averages, int)
            or not (1 <= averages <= self.MAX_AVERAGES)
        ):
            raise SettingOutOfRange(
                "averages", averages, f"integer 1..{self.MAX_AVERAGES}", device=self.device
            )
        self.integration_time_s = float(integration_time_s)
        self.delay_s = float(delay_s)
        self.averages = averages

    def meas_config(self, trigger: str = "hardware") -> MeasConfigType:
        """The MeasConfigType that ``arm`` sends: external edge trigger for LIBS by default."""
        cfg = MeasConfigType()
        cfg.StartPixel = self.start_pixel
        cfg.StopPixel = self.stop_pixel
        cfg.IntegrationTime = self.integration_time_s * 1e3
        cfg.IntegrationDelay = round(self.delay_s / FPGA_TICK_S)
        cfg.NrAverages = self.averages
        cfg.Trigger.Mode = TRIGGER_MODES[trigger]
        cfg.Trigger.Source = 0  # external trigger input
        cfg.Trigger.SourceType = 0  # edge
        return cfg

    def arm(self, n_frames: int, trigger: str = "hardware") -> None:
        if trigger not in TRIGGER_MODES:
            raise SettingOutOfRange("trigger", trigger, str(sorted(TRIGGER_MODES)))
        if not 1 <= n_frames <= self.MAX_FRAMES:
            raise SettingOutOfRange("n_frames", n_frames, f"1..{self.MAX_FRAMES}")
        if self._measuring:
            self.disarm()
        cfg = self.meas_config(trigger)
        self._call("AVS_PrepareMeasure", self._handle, ctypes.byref(cfg))
        self._counts = np.empty((n_frames, self.n_active), np.uint16)
        self._stamps = np.empty(n_frames, np.float64)
        self._received = self._returned = 0
        self.bad_frames = self.duplicates_dropped = self._corrupt_unread = 0
        self._last_label = None
        self._stop.clear()
        self._armed = n_frames
        self._call("AVS_Measure", self._handle, None, n_frames)
        self._measuring = True

    def _drain(self) -> None:
        """Fetch every frame the library has ready, without waiting.

        An exact copy of the frame just read (same time label, same counts) is dropped, so a
        frame sent twice never takes the place of the burst's last real frame. A frame the
        library returns as invalid data (AVS code -8) is that shot's loss, counted in
        ``bad_frames``, not the scan's: the shot then has no frame on this unit."""
        stamp = c_uint32(0)
        data = (c_double * self.num_pixels)()  # full size: safe whatever the library fills
        view = np.ctypeslib.as_array(data)[: self.n_active]
        while (
            self._measuring
            and self._received + self.bad_frames < self._armed
            and self._call("AVS_PollScan", self._handle) == 1
        ):
            try:
                self._call("AVS_GetScopeData", self._handle, ctypes.byref(stamp), data)
            except ProtocolError as exc:
                self.bad_frames += 1
                self._corrupt_unread += 1
                log.warning("%s: frame %d dropped: %s", self.device, self._received, exc)
                continue
            # rounded to counts in the library's own buffer, while it is in cache
            np.rint(view, out=view)
            if view.min() < 0 or view.max() > 65535:  # cheaper than clipping every frame
                np.clip(view, 0, 65535, out=view)
            k = self._received
            raw = int(stamp.value)
            if k > 0 and raw == self._last_label and np.array_equal(self._counts[k - 1], view):
                self.duplicates_dropped += 1
                continue
            self._counts[k] = view
            self._stamps[k] = self._clock.seconds(raw)
            self._last_label = raw
            self._received = k + 1

    def wait_frames(self, timeout_s: float | None = None) -> int:
        """Block until all armed frames arrived (polling AVS_PollScan every few ms); return
        how many are buffered. Raises InstrumentTimeout (frames so far stay readable) or
        InstrumentError if ``disarm`` interrupted the wait."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            if self._received + self.bad_frames >= self._armed:
                return self._received - self._returned
            if self._stop.is_set():
                raise InstrumentError(
                    f"disarmed after {self._received} of {self._armed} frames",
                    device=self.device,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstrumentTimeout(
                    f"{self._received} of {self._armed} frames after {timeout} s",
                    device=self.device,
                    command="AVS_PollScan",
                )
            self._stop.wait(min(self.POLL_INTERVAL_S, remaining))

    def read_frames(self) -> Frames:
        """Return and clear the buffered frames (after fetching any that are ready)."""
        self._drain()
        first, stop = self._returned, self._received
        self._returned = stop
        corrupt, self._corrupt_unread = self._corrupt_unread, 0
        # views of this arm's block: the next arm fills a new one
        return Frames(
            self._counts[first:stop],
            self._stamps[first:stop],
            np.arange(first, stop, dtype=np.int64),
            corrupt,
        )

    def disarm(self) -> None:
        self._stop.set()
        if self._measuring and self._handle is not None:
            self._measuring = False
            self._call("AVS_StopMeasure", self._handle)

    def reconnect(self) -> None:
        """Open the unit again after it stopped answering or dropped off the bus: end the
        library session (errors ignored: the unit may be gone), then initialise, find the
        same serial and activate it as at construction. Settings and the pixel range stay
        (they reach the unit at the next ``arm``); the arm in progress and its frames are
        lost. Raises InstrumentError while the unit is not back. The device clock goes on
        (`DeviceClock`), so the pairing's learnt clock offsets stay valid."""
        self._stop.set()
        self._measuring = False
        self._armed = self._received = self._returned = 0
        self._corrupt_unread = self.bad_frames = 0
        pixels = self.num_pixels
        try:
            if self._handle is not None:
                self._call("AVS_Deactivate", self._handle)
        except InstrumentError as exc:
            log.info("%s: deactivating before a reconnect: %s", self.device, exc)
        self._handle = None
        try:
            if self._initialised:
                self._call("AVS_Done")
        except InstrumentError as exc:
            log.info("%s: closing the library before a reconnect: %s", self.device, exc)
        self._initialised = False
        self._connect(self.serial)
        if self.num_pixels != pixels:
            raise InstrumentError(f"reconnected unit has {self.num_pixels} pixels, "
                                  f"not {pixels}", device=self.device)
        log.info("%s: reconnected", self.device)

    def close(self) -> None:
        try:
            if self._handle is not None:
                try:
                    self.disarm()
                finally:
                    self._call("AVS_Deactivate", self._handle)
                    self._handle = None
        finally:
            if self._initialised:
                self._initialised = False
                self._call("AVS_Done")

    def __enter__(self) -> AvaSpec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
