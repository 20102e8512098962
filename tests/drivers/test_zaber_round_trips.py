"""Round trips the Zaber driver saves and the link it reopens, against the emulator on
localhost TCP through zaber-motion: a trigger set-up is not re-sent identically (and is sent
in full again after an error, a homing or a reconnect), the idle poll carries the position,
and `reconnect` brings a stage whose server dropped the connection back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_zaber import FAST, TIMEOUT_S, sent, two_devices, url

from plumelink.drivers.errors import InstrumentError
from plumelink.drivers.protocols import IdlePosition, Reconnect
from plumelink.drivers.sim.zaber_emulator import Fault, ZaberTcpServer
from plumelink.drivers.zaber import CommandRejected, NotReferenced, ZaberStage

FULL = ["trigger 1 disable", "trigger 1 when 1 dist 1000", "trigger 1 action a io set do 1 t",
        "trigger 1 enable"]


@pytest.fixture
def server(no_leaks: None) -> Iterator[ZaberTcpServer]:
    with ZaberTcpServer(two_devices()) as srv:
        yield srv


@pytest.fixture
def stage(server: ZaberTcpServer) -> Iterator[ZaberStage]:
    with ZaberStage(url(server), device_db="offline", timeout_s=TIMEOUT_S) as driver:
        driver.home(timeout_s=2.0)
        server.emulator.clear_transcript()
        yield driver


def _pass(stage: ZaberStage, to_um: float) -> None:
    stage.move_absolute(x_um=to_um)
    stage.wait_until_idle(2.0)


def test_satisfies_the_idle_position_and_reconnect_capabilities(stage: ZaberStage) -> None:
    assert isinstance(stage, IdlePosition) and isinstance(stage, Reconnect)


def test_a_trigger_set_up_again_sends_only_what_changes_and_still_fires_right(
        server: ZaberTcpServer, stage: ZaberStage) -> None:
    em = server.emulator
    stage.set_speed(20_000.0)
    em.clear_transcript()
    stage.configure_distance_trigger("x", 100.0)
    assert sent(em) == FULL  # first time: everything
    _pass(stage, 350.0)
    stage.disable_distance_trigger("x")
    em.clear_transcript()
    stage.configure_distance_trigger("x", 100.0)
    # disabled just before and the same action: neither is sent again
    assert sent(em) == ["trigger 1 when 1 dist 1000", "trigger 1 enable"]
    em.clear_trigger_events()
    _pass(stage, 0.0)  # 350 µm back: firings at 100, 200, 300 µm of travel
    assert [e.position for e in em.trigger_events] == [2500, 1500, 500]
    assert [e.level for e in em.trigger_events] == [0, 1, 0]  # the same toggle action
    stage.disable_distance_trigger("x")
    em.clear_transcript()
    stage.configure_distance_trigger("x", 100.0, output=2)  # another action: sent
    assert sent(em) == ["trigger 1 when 1 dist 1000", "trigger 1 action a io set do 2 t",
                        "trigger 1 enable"]


def test_an_enabled_trigger_is_disabled_before_it_is_set_up_again(
        server: ZaberTcpServer, stage: ZaberStage) -> None:
    """Without `disable_distance_trigger` after it, an enabled trigger is disabled first."""
    stage.configure_distance_trigger("x", 100.0)
    server.emulator.clear_transcript()
    stage.configure_distance_trigger("x", 100.0)
    assert sent(server.emulator) == ["trigger 1 disable", "trigger 1 when 1 dist 1000",
                                     "trigger 1 enable"]


@pytest.mark.parametrize("after", ["error", "home", "clear_warnings", "reconnect"])
def test_the_trigger_set_up_is_sent_in_full_after(server: ZaberTcpServer, stage: ZaberStage,
                                                  after: str) -> None:
    stage.configure_distance_trigger("x", 100.0)
    stage.disable_distance_trigger("x")
    if after == "error":
        server.emulator.inject_fault(Fault.REJECT, "BADDATA")
        with pytest.raises(CommandRejected):
            stage.speed()
    elif after == "home":
        stage.home(timeout_s=2.0)
    else:
        getattr(stage, after)()
    server.emulator.clear_transcript()
    stage.configure_distance_trigger("x", 100.0)
    assert sent(server.emulator) == FULL


def test_wait_for_position_takes_the_position_from_the_idle_poll(
        server: ZaberTcpServer, stage: ZaberStage) -> None:
    em = server.emulator
    stage.move_absolute(x_um=1.0)
    stage.wait_until_idle(2.0)  # the reference check after homing is behind us
    em.clear_transcript()
    stage.move_absolute(x_um=1_234.5)
    at = stage.wait_for_position(2.0)
    assert at == (1_234.5, 0.0) == (em.position(1, 1) * 0.1, em.position(2, 1) * 0.1)
    commands = em.commands
    assert commands[0].startswith(b"/1 1 ") and sent(em)[0] == "move abs 12345"
    assert set(sent(em)[1:]) == {"get pos"}  # polls only, no query after them
    assert sum(c.startswith(b"/2 1 ") for c in commands) == 1  # y is idle: polled once


def test_reconnect_after_the_server_dropped_the_link(server: ZaberTcpServer,
                                                     stage: ZaberStage) -> None:
    em = server.emulator
    em.inject_fault(Fault.DISCONNECT)
    with pytest.raises(InstrumentError):
        stage.position()
    time.sleep(0.05)
    with pytest.raises(InstrumentError, match="link lost"):
        stage.position()
    stage.reconnect()
    em.clear_transcript()
    assert stage.position() == (0.0, 0.0)  # homed before the link dropped
    em.clear_transcript()
    stage.move_absolute(x_um=50.0)
    assert sent(em) == ["warnings", "move abs 500"]  # the reference is asked again first
    stage.wait_until_idle(2.0)
    stage.reconnect()  # on a live link too: a fresh connection
    assert stage.position() == (50.0, 0.0)


def test_reconnect_refuses_to_move_a_stage_that_lost_its_reference(no_leaks: None) -> None:
    """A stage that came back from a power cycle (no reference) is not moved after the
    reconnect: the reference state is read again, not remembered."""
    em = two_devices(referenced=True, maxspeed=FAST)
    with ZaberTcpServer(em) as server, ZaberStage(url(server), device_db="offline",
                                                  timeout_s=TIMEOUT_S) as driver:
        driver.move_absolute(x_um=10.0)
        driver.wait_until_idle(2.0)
        em.set_flags(1, 1, "WR")  # as after a power cycle
        em.inject_fault(Fault.DISCONNECT)
        with pytest.raises(InstrumentError):
            driver.position()
        driver.reconnect()
        with pytest.raises(NotReferenced):
            driver.move_absolute(x_um=20.0)


def test_reconnect_while_the_device_is_gone_is_an_instrument_error(no_leaks: None) -> None:
    server = ZaberTcpServer(two_devices())
    driver = ZaberStage(url(server), device_db="offline", timeout_s=TIMEOUT_S)
    try:
        server.close()
        with pytest.raises(InstrumentError):
            driver.reconnect()
        with pytest.raises(InstrumentError):
            driver.position()
    finally:
        driver.close()
