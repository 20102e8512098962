"""Fixtures shared by the driver tests: simulated spectrographs (built once per session), the
check that a test leaves no emulator thread running, and an AvaSpec on the fake library."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from plumelink.drivers.avantes import AvaSpec
from plumelink.drivers.sim.avaspec_fake import AvaSpecFake
from plumelink.drivers.sim.spectrograph import InstrumentProfile, Spectrograph


@pytest.fixture(scope="session")
def spectrograph() -> Callable[[str], Spectrograph]:
    """``spectrograph(name)``: the simulated spectrograph of a shipped instrument profile."""
    built: dict[str, Spectrograph] = {}

    def get(name: str) -> Spectrograph:
        if name not in built:
            built[name] = Spectrograph(InstrumentProfile.load(name))
        return built[name]

    return get


def _emulator_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "emulator" in t.name}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails a test that leaves an emulator thread behind (a bench not closed)."""
    before = _emulator_threads()
    yield
    assert _emulator_threads() - before == set()


@pytest.fixture
def fake() -> AvaSpecFake:
    """The fake AvaSpec library (libavs) with two units."""
    return AvaSpecFake(serials=("1111111U1", "2103123U1"))


@pytest.fixture
def spec(fake: AvaSpecFake):
    with AvaSpec("2103123U1", library=fake, start_pixel=17, stop_pixel=4078) as s:
        yield s
