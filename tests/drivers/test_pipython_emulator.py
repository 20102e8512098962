"""PI's own library, pipython, drives the GCS 2.0 emulator unchanged through its DLL-free stack
(``PISocket``/``PISerial`` + ``GCSMessages`` + ``GCSCommands``), as a lab's existing script would:
connect (``CSV?``), identify, axes, servo, referencing, moves, motion status, ``pitools``, the
command list, the GCSError codes and ``ERR?``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pipython import GCSError, pitools
from pipython.pidevice.gcscommands import GCSCommands
from pipython.pidevice.gcsmessages import GCSMessages
from pipython.pidevice.interfaces.piserial import PISerial
from pipython.pidevice.interfaces.pisocket import PISocket

from plumelink.drivers.sim.pi_gcs_emulator import (
    ManualClock,
    PIAxisConfig,
    PIEmulator,
    PIPtyServer,
    PITcpServer,
)

TIMEOUT_MS = 1000  # a query the emulator left unanswered fails in 1 s, not pipython's 7 s


def fast_axes(**overrides: object) -> dict[str, PIAxisConfig]:
    def config() -> PIAxisConfig:
        return PIAxisConfig(**{"velocity": 200.0, "max_velocity": 500.0,  # type: ignore[arg-type]
                               **overrides})

    return {"1": config(), "2": config()}


@contextmanager
def connect(gateway: PISocket | PISerial) -> Iterator[GCSCommands]:
    """GCSCommands on ``gateway``, as a context: pipython keeps every connection's status
    callback in one class-wide list (pigateway.py), so a GCSCommands left registered would
    answer the next connection's callback through its own closed socket."""
    messages = GCSMessages(gateway)
    messages.timeout = TIMEOUT_MS
    try:
        with GCSCommands(messages) as pidevice:
            yield pidevice
    finally:
        gateway.close()


@contextmanager
def over_tcp(emulator: PIEmulator) -> Iterator[GCSCommands]:
    """pipython on the controller's TCP port (``PISocket``)."""
    with PITcpServer(emulator) as server, connect(PISocket(host=server.host,
                                                           port=server.port)) as pidevice:
        yield pidevice


@pytest.fixture
def emulator() -> PIEmulator:
    return PIEmulator(fast_axes())


@pytest.fixture
def pidevice(emulator: PIEmulator, no_leaks: None) -> Iterator[GCSCommands]:
    with over_tcp(emulator) as pidevice:
        yield pidevice


def sent(emulator: PIEmulator) -> list[bytes]:
    return [line for line, _ in emulator.transcript]


def test_connect_asks_the_syntax_version_and_leaves_no_error(
        pidevice: GCSCommands, emulator: PIEmulator) -> None:
    replies = dict(emulator.transcript)
    assert replies[b"CSV?"] == (b"2.0\n",)  # answered: no stall, no error 2 left behind
    assert pidevice.qCSV() == 2.0
    assert "C-884" in pidevice.qIDN()
    assert pidevice.qERR() == 0
    assert type(pidevice.gcscommands).__name__ == "GCS2Commands"


def test_axes_and_command_list(pidevice: GCSCommands) -> None:
    assert pidevice.qSAI() == ["1", "2"]
    assert pidevice.qSAI_ALL() == ["1", "2"]
    assert pidevice.axes == ["1", "2"]
    assert pidevice.numaxes == 2
    # pipython learns what the controller can do from HLP?
    assert pidevice.HasMOV() and pidevice.HasqPOS() and pidevice.HasIsMoving()
    assert pidevice.HasStopAll() and pidevice.HasqCST()
    assert not pidevice.HasINI() and not pidevice.HasFPH()
    assert pidevice.qCST() == {"1": "L-511.20SD00", "2": "L-511.20SD00"}
    assert pidevice.qTRS() == {"1": True, "2": True}


def test_pitools_startup_references_with_frf(pidevice: GCSCommands,
                                             emulator: PIEmulator) -> None:
    assert pidevice.qFRF() == {"1": False, "2": False}
    pitools.startup(pidevice, refmodes="FRF")
    assert pidevice.qFRF() == {"1": True, "2": True}
    assert pidevice.qSVO() == {"1": True, "2": True}
    assert pidevice.qPOS() == {"1": 0.0, "2": 0.0}  # the reference position
    assert pidevice.qERR() == 0
    assert any(line.startswith(b"FRF ") for line in sent(emulator))


def test_move_position_on_target_and_is_moving(no_leaks: None) -> None:
    clock = ManualClock()
    emulator = PIEmulator(fast_axes(servo=True, referenced=True, velocity=2.0), clock=clock)
    with over_tcp(emulator) as pidevice:
        pidevice.MOV({"1": 14.5, "2": 10.5})  # 2 mm at 2 mm/s: one second
        assert pidevice.IsMoving() == {"1": True, "2": True}
        assert pidevice.qONT() == {"1": False, "2": False}
        clock.advance(0.5)
        assert pidevice.qPOS()["1"] == pytest.approx(13.5)
        assert pidevice.qPOS()["2"] == pytest.approx(11.5)
        clock.advance(0.6)
        assert pidevice.IsMoving() == {"1": False, "2": False}
        assert pidevice.qONT() == {"1": True, "2": True}
        assert pidevice.qPOS() == {"1": 14.5, "2": 10.5}
        pidevice.MVR("2", -0.5)
        clock.advance(1.0)
        pitools.waitontarget(pidevice, timeout=2)
        assert pidevice.qPOS("2") == {"2": 10.0}
        assert pidevice.IsControllerReady()


def test_gcs_error_codes(pidevice: GCSCommands) -> None:
    with pytest.raises(GCSError) as unreferenced:
        pidevice.MOV("1", 5.0)
    assert unreferenced.value.val == 5
    pitools.startup(pidevice, refmodes="FRF")
    with pytest.raises(GCSError) as out_of_range:
        pidevice.MOV("1", 99.0)
    assert out_of_range.value.val == 7
    with pytest.raises(GCSError) as bad_axis:
        pidevice.SVO("9", True)
    assert bad_axis.value.val == 15
    with pytest.raises(GCSError) as unknown:
        pidevice.send("XYZ 1")
    assert unknown.value.val == 2
    with pytest.raises(GCSError) as too_fast:
        pidevice.VEL("1", 1000.0)
    assert too_fast.value.val == 8
    assert pidevice.qERR() == 0  # each error was read, and cleared, by pipython's ERR? check


def test_err_reports_the_last_error_and_clears_it(pidevice: GCSCommands) -> None:
    pidevice.errcheck = False
    pidevice.MOV("1", 5.0)  # error 5: not referenced
    pidevice.SVO("9", True)  # error 15: no such axis
    assert pidevice.qERR() == 15
    assert pidevice.qERR() == 0


def test_stop_all_reports_error_10_while_moving(pidevice: GCSCommands) -> None:
    emulator_speed = {"1": 0.01, "2": 0.01}
    pitools.startup(pidevice, refmodes="FRF")
    pidevice.VEL(emulator_speed)
    pidevice.MOV({"1": 20.0, "2": 20.0})
    with pytest.raises(GCSError) as stopped:
        pidevice.StopAll()
    assert stopped.value.val == 10
    assert pidevice.IsMoving() == {"1": False, "2": False}
    pidevice.StopAll(noraise=True)  # nothing moves: no error
    assert pidevice.qERR() == 0


def test_serial_gateway_over_a_pseudo_terminal(no_leaks: None) -> None:
    emulator = PIEmulator(fast_axes(servo=True, referenced=True))
    with PIPtyServer(emulator) as server, connect(PISerial(port=server.url,
                                                          baudrate=115200)) as pidevice:
        assert pidevice.qCSV() == 2.0
        pidevice.MOV("1", 12.0)
        pitools.waitontarget(pidevice, axes="1", timeout=2)
        assert pidevice.qPOS("1") == {"1": 12.0}
