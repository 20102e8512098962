"""Typed errors shared by all instrument drivers.

Callers (the acquisition engine, the GUI) decide what to do from the error *type*: a timeout may
be retried, a protocol error means the link is unreliable, a refused setting is a user mistake
that never reached the instrument. Every error says which device, which command and, where the
instrument gave one, the numeric code and what that code means.
"""

from __future__ import annotations


class InstrumentError(Exception):
    """The instrument refused or failed a command, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        device: str = "",
        command: str = "",
        code: int | None = None,
        meaning: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.device = device
        self.command = command
        self.code = code
        self.meaning = meaning

    def __str__(self) -> str:
        text = f"{self.device}: {self.message}" if self.device else self.message
        details = []
        if self.command:
            details.append(f"command {self.command!r}")
        if self.code is not None:
            details.append(f"code {self.code}" + (f" ({self.meaning})" if self.meaning else ""))
        elif self.meaning:
            details.append(self.meaning)
        return f"{text} [{'; '.join(details)}]" if details else text


class InstrumentTimeout(InstrumentError):
    """No (complete) reply arrived within the transport timeout."""


class ProtocolError(InstrumentError):
    """A reply arrived but is malformed, truncated, garbage or outside the documented range."""

    def __init__(self, message: str, *, reply: str = "", **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.reply = reply

    def __str__(self) -> str:
        return f"{super().__str__()} reply {self.reply!r}"


class SettingOutOfRange(InstrumentError, ValueError):
    """A requested value was refused by the driver before anything was sent."""

    def __init__(self, setting: str, value: object, allowed: str, **kwargs: object) -> None:
        super().__init__(
            f"{setting} = {value!r} is outside the allowed range {allowed}",
            **kwargs,  # type: ignore[arg-type]
        )
        self.setting = setting
        self.value = value
        self.allowed = allowed
