"""The DG645 emulator against the manual's command list (display, links, step sizes, stored
settings, interface commands, the real burst period range), and the driver's settings that
use them, over the emulator's TCP socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plumelink.drivers.dg645 import DG645
from plumelink.drivers.errors import SettingOutOfRange
from plumelink.drivers.sim.dg645_emulator import DG645Emulator, DG645TcpServer

TIMEOUT_S = 0.5


def drain(emu: DG645Emulator) -> list[int]:
    codes = []
    while (reply := emu.handle(b"LERR?")) != b"0\r\n":
        codes.append(int(reply))
    return codes


@pytest.fixture
def emu() -> DG645Emulator:
    return DG645Emulator()


@pytest.mark.parametrize(
    ("line", "reply", "codes"),
    [
        # burst period: 100 ns .. 2000 s - 10 ns in 10 ns steps
        (b"BURP 100;BURP?", b"+100.000000000000\r\n", []),
        (b"BURP 1999.99999999;BURP?", b"+1999.999999990000\r\n", []),
        (b"BURP 100e-9;BURP?", b"+0.000000100000\r\n", []),
        (b"BURP 1.234567894;BURP?", b"+1.234567890000\r\n", []),
        (b"BURP 2000", None, [10]),
        (b"BURP 99e-9", None, [10]),
        # display: mode 0..14 for channel 0..9
        (b"DISP 10,0;DISP?", b"10,0\r\n", []),
        (b"DISP 11,5;DISP?", b"11,5\r\n", []),
        (b"DISP 15,0", None, [10]),
        (b"DISP 1,10", None, [10]),
        (b"DISP 1", None, [116]),
        # links keep the channel's own delay
        (b"DLAY 3,0,2e-6;LINK 3,2;LINK?3;DLAY?3", b"2;2,+0.000002000000\r\n", []),
        (b"LINK 2,2", None, [13]),
        # delay, amplitude and offset steps
        (b"SSDL 2,1e-6;SPDL 2,1;SPDL 2,1;DLAY?2", b"0,+0.000002000000\r\n", []),
        (b"SSDL 2,1e-6;SPDL 2,0", None, [12]),  # below T0
        (b"SSLA 1,0.5;SPLA 1,1;LAMP?1", b"+3.00\r\n", []),
        (b"SSLO 1,0.25;SPLO 1,0;LOFF?1", b"-0.25\r\n", []),
        (b"SSLA 1,4;SPLA 1,1", None, [10]),  # above 5 V
        (b"SSDL?2;SSLA?1;SSLO?1", b"+0.000000000000;+0.10;+0.10\r\n", []),
        # prescaler and phase, the instrument's self checks, time base, interface
        (b"PRES 1,4;PHAS 1,3;PRES?1;PHAS?1", b"4;3\r\n", []),
        (b"*CAL?;*TST?;TIMB?", b"0;0;0\r\n", []),
        (b"*PSC 0;*PSC?", b"0\r\n", []),
        (b"IFCF 3,1;IFCF?3", b"1\r\n", []),
        (b"EMAC?", b"00:19:b3:06:00:01\r\n", []),
        (b"LOCK?;UNLK?", b"1;1\r\n", []),
        (b"IFRS 0;LCAL;REMT;XTRM 10,0,0", None, []),
        (b"EMAC 1", None, [113]),
        (b"SPDL?2", None, [112]),
        (b"*RCL 7", None, [14]),
        (b"*SAV 0", None, [10]),
    ],
)
def test_command_list(emu: DG645Emulator, line: bytes, reply: bytes | None,
                      codes: list[int]) -> None:
    assert emu.handle(line) == reply
    assert drain(emu) == codes


def test_save_and_recall_settings(emu: DG645Emulator) -> None:
    emu.handle(b"DLAY 2,0,5e-6;TRAT 50;DISP 7,0;*SAV 3")
    emu.handle(b"*RST")
    assert emu.handle(b"DLAY?2;TRAT?") == b"0,+0.000000000000;+10000.000000\r\n"
    emu.handle(b"*RCL 3")
    assert emu.handle(b"DLAY?2;TRAT?;DISP?") == b"0,+0.000005000000;+50.000000;7,0\r\n"
    emu.handle(b"*RCL 0")  # the factory defaults
    assert emu.handle(b"TRAT?") == b"+10000.000000\r\n"
    assert drain(emu) == []


@pytest.fixture
def ddg(no_leaks: None) -> Iterator[DG645]:
    with DG645TcpServer() as server, DG645(server.resource_name,
                                           timeout_s=TIMEOUT_S) as driver:
        yield driver


def test_driver_sets_and_reads_a_long_burst_period(ddg: DG645) -> None:
    ddg.configure_burst(3, 100.0)
    assert ddg.get_burst().period_s == 100.0
    ddg.configure_burst(3, 2000.0 - 10e-9)
    assert ddg.get_burst().period_s == pytest.approx(2000.0 - 10e-9, abs=1e-12)
    with pytest.raises(SettingOutOfRange, match="burst period"):
        ddg.configure_burst(3, 2000.0)


def test_driver_display_level_holdoff_and_error_queue(ddg: DG645) -> None:
    ddg.set_display(11, "B")
    assert ddg.get_display() == (11, "B")
    with pytest.raises(SettingOutOfRange, match="display mode"):
        ddg.set_display(15)
    ddg.set_trigger_level(-1.25)
    assert ddg.get_trigger_level() == -1.25
    ddg.set_holdoff(0.015)
    assert ddg.get_holdoff() == 0.015
    assert ddg.pending_errors() == []
    assert not ddg.outputs_disabled()
    ddg.disable_outputs()
    assert ddg.outputs_disabled()
