"""Shared skeleton of a text-protocol instrument on a pyserial port (`zaber`, `pi_gcs`).

`SerialDevice` opens the port (any pyserial URL, 8N1 without flow control, or an already open
port), serialises exchanges with one re-entrant lock, closes idempotently, works as a context
manager, writes commands and reads replies before a deadline with the drivers' common timeout
and `ProtocolError` rules; it also holds the shared checks (axis names, finite numbers, travel
limits, relative offsets) so the drivers raise the same errors with the same messages.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar

import serial
from serial import SerialException

from .errors import InstrumentError, InstrumentTimeout, ProtocolError, SettingOutOfRange

AXES: tuple[str, str] = ("x", "y")
READ_SLICE_S = 0.05

_T = TypeVar("_T")


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite real number (bool excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_axis_names(mapping: Mapping[str, object]) -> None:
    """Raise ValueError unless ``mapping`` names exactly the axes x and y."""
    if set(mapping) != set(AXES):
        raise ValueError(f"axes must map exactly {AXES}, got {sorted(mapping)}")


class SerialDevice:
    """Base for a driver talking a text protocol over a pyserial port."""

    name: str
    _port: serial.SerialBase

    def _open(self, url: str | serial.SerialBase, *, name: str, baudrate: int,
              timeout_s: float, poll_interval_s: float) -> None:
        """Set the shared state and open ``url`` (or adopt an open port)."""
        self.name = name
        self._timeout_s = float(timeout_s)
        self._poll_interval_s = float(poll_interval_s)
        self._lock = threading.RLock()
        if isinstance(url, str):
            try:
                self._port = serial.serial_for_url(
                    url, baudrate=baudrate, bytesize=8, parity="N", stopbits=1,
                    timeout=min(READ_SLICE_S, self._timeout_s), write_timeout=self._timeout_s,
                    xonxoff=False, rtscts=False,
                )
            except (SerialException, OSError, ValueError) as exc:
                raise InstrumentError(f"cannot open {url!r}: {exc}", device=name) from exc
        else:
            self._port = url
            self._port.timeout = min(READ_SLICE_S, self._timeout_s)

    def _start_up(self, steps: Callable[[], object]) -> None:
        """Run the start-up exchanges; on any failure close the port and re-raise."""
        try:
            steps()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the port (idempotent). Motion in progress is not stopped."""
        with self._lock:
            port = getattr(self, "_port", None)
            if port is not None and port.is_open:
                port.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ shared checks
    @staticmethod
    def _lookup_axis(axes: Mapping[str, _T], name: str) -> _T:
        try:
            return axes[name]
        except KeyError:
            raise ValueError(f"unknown axis {name!r}; use one of {AXES}") from None

    def _target_out_of_range(self, name: str, um: object, allowed: str,
                             command: str) -> SettingOutOfRange:
        return SettingOutOfRange(f"{name} axis target (µm)", um, allowed, device=self.name,
                                 command=command)

    def _offsets(self, values: Sequence[float], command: str) -> dict[str, float]:
        """The non-zero relative offsets per axis; a non-finite one raises
        `SettingOutOfRange`."""
        offsets = {}
        for name, value in zip(AXES, values, strict=True):
            number = finite(value)
            if number is None:
                raise SettingOutOfRange(f"{name} axis offset (µm)", value, "finite numbers",
                                        device=self.name, command=command)
            if number:
                offsets[name] = number
        return offsets

    def _sleep_until(self, deadline: float, what: str, timeout_s: float, command: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InstrumentTimeout(f"{what} after {timeout_s:g} s", device=self.name,
                                    command=command)
        time.sleep(min(self._poll_interval_s, remaining))

    # ------------------------------------------------------------------ port I/O
    def _link_lost(self, exc: BaseException, command: str) -> InstrumentError:
        return InstrumentError(f"link lost: {exc}", device=self.name, command=command)

    def _write(self, data: bytes, command: str) -> None:
        try:
            if not self._port.is_open:
                raise InstrumentError("port is closed", device=self.name, command=command)
            self._port.write(data)
        except (SerialException, OSError) as exc:
            raise self._link_lost(exc, command) from exc

    def _read_until(self, rx: bytearray, deadline: float, command: str, *,
                    take: Callable[[bytearray], bytes | None], max_len: int,
                    terminator: str) -> bytes:
        """Read into ``rx`` until ``take(rx)`` returns a reply. Over ``max_len`` bytes raises
        ``ProtocolError("reply too long")``; at the deadline, a partial reply raises
        ``ProtocolError("truncated reply (no <terminator> before the timeout)")`` and nothing
        at all `InstrumentTimeout`. ``rx`` is cleared on either error."""
        while True:
            reply = take(rx)
            if reply is not None:
                return reply
            if len(rx) > max_len:
                raw = bytes(rx).decode("ascii", errors="backslashreplace")
                rx.clear()
                raise ProtocolError("reply too long", reply=raw, device=self.name,
                                    command=command)
            if time.monotonic() >= deadline:
                partial = bytes(rx).decode("ascii", errors="backslashreplace")
                rx.clear()
                if partial:
                    raise ProtocolError(f"truncated reply (no {terminator} before the timeout)",
                                        reply=partial, device=self.name, command=command)
                raise InstrumentTimeout(f"no reply within {self._timeout_s:g} s",
                                        device=self.name, command=command)
            try:
                rx += self._port.read(max(1, self._port.in_waiting))
            except (SerialException, OSError) as exc:
                raise self._link_lost(exc, command) from exc


__all__ = ["AXES", "SerialDevice", "check_axis_names", "finite"]
