"""Pause, resume and abort a running scan from any thread (the GUI, a signal handler)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ScanAborted(Exception):
    """The scan was stopped on request (`ScanHandle.abort`)."""


class ScanHandle:
    """Pause, resume and abort a running scan from any thread (the GUI, a signal handler).

    Pausing takes effect between raster lines (a line in flight is finished, so its pairs stay
    complete); aborting disables the DDG outputs at once and ends the scan as interrupted.
    """

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._aborted = threading.Event()
        self.reason = ""
        self._on_abort: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def abort(self, reason: str = "aborted by the operator") -> None:
        with self._lock:
            if not self._aborted.is_set():
                self.reason = reason
                self._aborted.set()
            callbacks = tuple(self._on_abort)
        self._running.set()  # wake a paused engine so it can clean up
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("abort: safety callback failed")

    # ---- for the engine
    def on_abort(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the aborting thread) when the scan is aborted; in order."""
        with self._lock:
            self._on_abort.append(callback)

    def wait_if_paused(self) -> None:
        """Block while paused; raise `ScanAborted` once aborted."""
        while not self._running.wait(0.5):
            pass
        self.check()

    def check(self) -> None:
        """Raise `ScanAborted` if the scan was aborted."""
        if self.aborted:
            raise ScanAborted(self.reason)

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` (real) unless aborted meanwhile; True when aborted."""
        return self._aborted.wait(seconds)


__all__ = ["ScanAborted", "ScanHandle"]
