"""Shared plumbing of the clocked emulators (`zaber_emulator`, `dg645_emulator`,
`pi_gcs_emulator`): ordered hand-off of events to subscribers outside the state lock, the
``now``/``update``/``wait_hint_s`` helpers, the record of what came over the wire, and the
``.emulator`` accessor of their transports."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

E = TypeVar("E")
P = TypeVar("P")


class Subscribers(Generic[E]):
    """Callbacks subscribed to an emulator's events, called in order outside its state lock.

    ``lock`` is the emulator's state lock; `post` is called with it held, `dispatch` without.
    A failing callback is logged on ``logger`` with ``failure`` and the others still run.
    """

    def __init__(self, lock: threading.RLock, logger: logging.Logger, failure: str) -> None:
        self._lock = lock
        self._logger = logger
        self._failure = failure
        self._callbacks: list[Callable[[E], None]] = []
        self._pending: deque[E] = deque()
        self._dispatch_lock = threading.Lock()

    def subscribe(self, callback: Callable[[E], None]) -> Callable[[], None]:
        """Add ``callback``; returns an unsubscribe function."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def post(self, events: Iterable[E]) -> None:
        """Queue events for the next `dispatch` (state lock held)."""
        self._pending.extend(events)

    def dispatch(self) -> None:
        """Hand queued events to subscribers in order, outside the state lock."""
        with self._dispatch_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    event = self._pending.popleft()
                    callbacks = tuple(self._callbacks)
                for callback in callbacks:
                    try:
                        callback(event)
                    except Exception:
                        self._logger.exception(self._failure)


class Clocked:
    """``now``/``update``/``wait_hint_s`` for an emulator with ``_clock``, ``_lock``,
    ``_advance(now)``, optionally ``_dispatch()`` and ``next_event_time()``."""

    _clock: Callable[[], float]
    _lock: threading.RLock

    def _advance(self, now: float) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        """Hand out what `_advance` produced (nothing by default)."""

    def next_event_time(self) -> float | None:
        raise NotImplementedError

    def now(self) -> float:
        return self._clock()

    def update(self) -> None:
        """Advance to the clock's present and hand out what became due."""
        with self._lock:
            self._advance(self._clock())
        self._dispatch()

    def wait_hint_s(self) -> float | None:
        """Seconds until `next_event_time` (servers wake then to send what is due)."""
        t = self.next_event_time()
        return None if t is None else max(0.0, t - self.now())


class WireRecord:
    """The bytes that reached the emulator (the tail of at most ``_max_received_bytes``) and
    the ``_transcript`` of exchanges, under ``_lock``."""

    _lock: threading.RLock
    _received: bytearray
    _transcript: deque[tuple[bytes, Any]]
    _max_received_bytes = 1 << 20

    @property
    def received_bytes(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def clear_transcript(self) -> None:
        with self._lock:
            self._transcript.clear()
            self._received.clear()

    def note_received(self, data: bytes) -> None:
        with self._lock:
            self._received += data
            if len(self._received) > self._max_received_bytes:  # a long run keeps the tail
                del self._received[: len(self._received) - self._max_received_bytes]


class LineRecord(WireRecord):
    """`WireRecord` whose transcript holds (line received, lines sent) pairs."""

    _transcript: deque[tuple[bytes, tuple[bytes, ...]]]

    @property
    def transcript(self) -> list[tuple[bytes, tuple[bytes, ...]]]:
        """(line received, lines sent) pairs, the newest last."""
        with self._lock:
            return list(self._transcript)

    @property
    def commands(self) -> list[bytes]:
        """The lines received, in order."""
        with self._lock:
            return [line for line, _ in self._transcript]


class ServesEmulator(Generic[P]):
    """For a transport serving any peer: ``.emulator`` is the peer, asserted to be the
    transport's own emulator class (``_emulator_type``)."""

    peer: Any
    _emulator_type: type[P]

    @property
    def emulator(self) -> P:
        peer = self.peer
        assert isinstance(peer, self._emulator_type)
        return peer


__all__ = ["Clocked", "LineRecord", "ServesEmulator", "Subscribers", "WireRecord"]
