"""Zaber's own library, zaber-motion, drives the Zaber ASCII emulator unchanged over TCP
(``Connection.open_tcp``), as a lab's existing script would: detection and the identity it
reads, identification up to the device database (pointed at a missing file: no internet),
homing, native-unit moves, stop, warnings, settings, the distance trigger, and several devices
and axes on one port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from zaber_motion import DeviceDbFailedException, DeviceDbSourceType, Library
from zaber_motion.ascii import Connection, TriggerAction
from zaber_motion.exceptions import BadDataException

from plumelink.drivers.sim.zaber_emulator import (
    SERIAL_BASE,
    AxisConfig,
    ZaberEmulator,
    ZaberTcpServer,
)

FAST = 16_384_000  # maxspeed: 10 million microsteps/s, moves of a few thousand take < 1 ms


@pytest.fixture(scope="module", autouse=True)
def offline_device_database(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The library's device database is a file that does not exist: nothing is fetched."""
    missing = tmp_path_factory.mktemp("zaber") / "no-device-db.sqlite"
    Library.set_device_db_source(DeviceDbSourceType.FILE, str(missing))


@pytest.fixture
def emulator() -> ZaberEmulator:
    """Device 1: a two-axis controller; device 2: a single-axis stage; one port."""
    return ZaberEmulator({1: [AxisConfig(maxspeed=FAST), AxisConfig(maxspeed=FAST,
                                                                    resolution=128)],
                          2: [AxisConfig(maxspeed=FAST, peripheralid=43211)]})


@pytest.fixture
def connection(emulator: ZaberEmulator, no_leaks: None) -> Iterator[Connection]:
    with ZaberTcpServer(emulator) as server, Connection.open_tcp(server.host,
                                                                 server.port) as conn:
        yield conn


def rejected(emulator: ZaberEmulator) -> list[bytes]:
    return [line for line, replies in emulator.transcript
            if any(b" RJ " in reply for reply in replies)]


def test_detect_and_identify_up_to_the_offline_database(connection: Connection,
                                                         emulator: ZaberEmulator) -> None:
    devices = connection.detect_devices(identify_devices=False)
    assert [d.device_address for d in devices] == [1, 2]
    for device in devices:
        with pytest.raises(DeviceDbFailedException, match="offline source"):
            device.identify()  # reads the device, then needs the database
    asked = b" ".join(line for line, _ in emulator.transcript)
    answered = (b"system.serial", b"deviceid", b"version", b"version.build",
                b"device.hw.modified", b"system.axiscount", b"resolution", b"peripheralid")
    for setting in answered:
        assert b"get " + setting + b":" in asked
    assert not [line for line in rejected(emulator)
                if line.split(b":")[0].split()[-1] in answered]
    device = devices[0]
    assert device.settings.get("system.serial") == SERIAL_BASE + 1
    assert device.settings.get("system.axiscount") == 2
    assert device.get_axis(2).settings.get("resolution") == 128
    assert devices[1].get_axis(1).settings.get("peripheralid") == 43211


def test_home_and_native_moves(connection: Connection, emulator: ZaberEmulator) -> None:
    axis = connection.get_device(2).get_axis(1)
    assert "WR" in axis.warnings.get_flags()
    axis.home()
    assert "WR" not in axis.warnings.get_flags()
    axis.move_absolute(12_000)
    assert axis.get_position() == 12_000
    axis.move_relative(-2_500)
    assert axis.get_position() == 9_500
    assert emulator.position(2, 1) == 9_500
    with pytest.raises(BadDataException):
        axis.move_absolute(5_000_000)  # beyond limit.max
    assert axis.get_position() == 9_500


def test_stop_leaves_the_axis_part_way(connection: Connection,
                                       emulator: ZaberEmulator) -> None:
    axis = connection.get_device(1).get_axis(1)
    axis.home()
    axis.settings.set("maxspeed", 16_384)  # 10 000 microsteps/s: the move takes 50 s
    assert axis.settings.get("maxspeed") == 16_384
    axis.move_absolute(500_000, wait_until_idle=False)
    assert axis.is_busy()
    axis.stop()
    assert not axis.is_busy()
    assert 0 < axis.get_position() < 500_000


def test_warnings_report_and_clear(connection: Connection, emulator: ZaberEmulator) -> None:
    axis = connection.get_device(1).get_axis(1)
    emulator.set_flags(1, 1, "FQ", "NC")
    assert {"FQ", "NC", "WR"} <= axis.warnings.get_flags()
    cleared = axis.warnings.clear_flags()
    assert {"FQ", "NC"} <= cleared
    assert axis.warnings.get_flags() == {"WR"}  # the missing reference stays until homed


def test_settings_are_checked_by_the_device(connection: Connection) -> None:
    axis = connection.get_device(1).get_axis(1)
    axis.settings.set("limit.max", 200_000)
    assert axis.settings.get("limit.max") == 200_000
    with pytest.raises(BadDataException):
        axis.settings.set("maxspeed", 0)


def test_distance_trigger_toggles_an_output(connection: Connection,
                                            emulator: ZaberEmulator) -> None:
    device = connection.get_device(1)
    axis = device.get_axis(1)
    axis.home()
    trigger = device.triggers.get_trigger(1)
    trigger.fire_when_distance_travelled(1, 1_000)
    trigger.on_fire(TriggerAction.A, 0, "io set do 1 t")
    trigger.enable()
    axis.move_absolute(10_500)
    events = emulator.trigger_events
    assert [e.position for e in events] == [1_000 * n for n in range(1, 11)]
    assert [e.level for e in events] == [1, 0] * 5


def test_several_devices_and_axes_on_one_port(connection: Connection,
                                              emulator: ZaberEmulator) -> None:
    devices = connection.detect_devices(identify_devices=False)
    controller, stage = devices
    controller.all_axes.home()
    stage.get_axis(1).home()
    controller.get_axis(1).move_absolute(3_000)
    controller.get_axis(2).move_absolute(4_000)
    stage.get_axis(1).move_absolute(5_000)
    assert [emulator.position(1, 1), emulator.position(1, 2),
            emulator.position(2, 1)] == [3_000, 4_000, 5_000]
