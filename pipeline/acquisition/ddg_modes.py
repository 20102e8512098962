"""The delay generator's trigger source and burst as the engine last set them."""

from __future__ import annotations

from typing import Any

from plumelink.drivers.protocols import DelayGenerator

_UNSET: Any = object()


class DdgModes:
    """Sets the DDG's trigger source and burst (count, period; None = burst mode off),
    sending only what differs from what was last set here: fly lines repeat the same set-up,
    and every command is a round trip with an error check.

    The source needs the `ExternalTrigger` capability, burst None the `BurstMode` one; the
    procedure that asks for them has checked that the DDG has them.
    """

    def __init__(self, ddg: DelayGenerator) -> None:
        self._ddg: Any = ddg
        self._source: str | None = None
        self._burst: tuple[int, float] | None = _UNSET

    def set(self, source: str, burst: tuple[int, float] | None) -> None:
        self.burst(burst)
        self.source(source)

    def source(self, source: str) -> None:
        if self._source != source:
            self._ddg.set_trigger_source(source)
            self._source = source

    def burst(self, burst: tuple[int, float] | None) -> None:
        if self._burst is _UNSET or self._burst != burst:
            if burst is None:
                self._ddg.set_burst_mode(False)
            else:
                self._ddg.configure_burst(*burst)
            self._burst = burst


__all__ = ["DdgModes"]
