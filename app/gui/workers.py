"""Worker threads behind the GUI: every call here returns at once; results are polled.

- `Job`: one function on a daemon thread (training, evaluation, reading a map, a spot).
- `BenchSession`: owns the open bench on a thread of its own (``open_bench`` is a context
  manager kept open until disconnect); device commands are posted to it through a queue.
- `ScanController`: a scan (`start_acquisition`) plus the subscriber thread that feeds its
  events to the `LiveModel` (the scan-started event: the wavelength axes; each line event: a
  line) and the live transfer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plumelink.drivers.bench import BenchProfile, open_bench
from plumelink.pipeline.engine import RunningScan, ScanHandle, start_acquisition
from plumelink.pipeline.line_events import ScanEvent, ScanStarted
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.scan import ScanConfig

from .live_model import LiveModel
from .live_transfer import LiveTransfer

if TYPE_CHECKING:
    from plumelink.models.evaluate import PackageTransfer

log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """A readable one-line message that keeps the device's own error text."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Job:
    """Run ``fn(*args)`` on a daemon thread; poll ``done``, ``result`` and ``error``."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "plumelink-job",
                 **kwargs: Any) -> None:
        self.result: Any = None
        self.error: str = ""
        self.exception: BaseException | None = None
        self._done = threading.Event()

        def work() -> None:
            try:
                self.result = fn(*args, **kwargs)
            except BaseException as exc:
                log.exception("%s failed", name)
                self.exception = exc
                self.error = describe(exc)
            finally:
                self._done.set()

        self.thread = threading.Thread(target=work, name=name, daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


# ---------------------------------------------------------------------------- bench
class BenchSession:
    """The open bench, on its own thread. Commands are callables ``fn(bench)`` run in order.

    ``status()`` is a copy of what the GUI shows: connection state, per-device text, the stage
    position, the DDG delays and the last error, refreshed after each command and every
    ``poll_s`` while idle. While a scan owns the bench (``scan_active``) commands are refused.
    """

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self.bench: Any = None
        self.scan_active = False
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"state": "disconnected", "devices": {}, "error": "",
                                        "position": None, "delays": {}, "profile": ""}
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()

    # -- called from the GUI thread (never block)
    def connect(self, profile: str) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._set(error="already connected; disconnect first")
            return
        self._set(state="connecting", profile=profile, error="")
        self._connected.clear()
        self._thread = threading.Thread(target=self._run, args=(profile,),
                                        name="plumelink-bench", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._queue.put(None)

    def close(self, timeout: float = 10.0) -> None:
        """Disconnect and wait for the bench to be closed (window closing only)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def submit(self, fn: Callable[[Any], Any], what: str = "command") -> bool:
        """Queue ``fn(bench)``; False (and a message) when no bench or a scan owns it."""
        if self.bench is None:
            self._set(error=f"{what}: the bench is not connected")
            return False
        if self.scan_active:
            self._set(error=f"{what}: a scan is running; stop it first")
            return False
        self._queue.put((fn, what))
        return True

    def emergency_stop(self) -> None:
        """Disable the DDG outputs now (thread-safe in the driver), on a short thread."""
        bench = self.bench
        if bench is not None:
            threading.Thread(target=bench.delay_generator.disable_outputs,
                             name="plumelink-stop", daemon=True).start()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    @property
    def connected(self) -> bool:
        return self.bench is not None

    # -- the bench thread
    def _set(self, **values: Any) -> None:
        with self._lock:
            self._status.update(values)

    def _run(self, profile_name: str) -> None:
        try:
            profile = BenchProfile.load(profile_name)
            with open_bench(profile) as bench:
                if bench.simulation is not None:
                    _ = bench.simulation.physics  # build the simulated optics now, not at 1st shot
                self.bench = bench
                self._set(state="connected", devices=self._devices(bench), error="")
                self._connected.set()
                self._refresh(bench)
                self._serve(bench)
        except Exception as exc:
            self._set(state="error", error=f"connect {profile_name}: {describe(exc)}")
        finally:
            self.bench = None
            self._connected.set()
            with self._lock:
                if self._status["state"] != "error":
                    self._status["state"] = "disconnected"

    def _serve(self, bench: Any) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                if not self.scan_active:
                    self._refresh(bench)
                continue
            if item is None:
                return
            fn, what = item
            try:
                fn(bench)
                self._set(error="")
            except Exception as exc:
                self._set(error=f"{what}: {describe(exc)}")
            self._refresh(bench)

    @staticmethod
    def _devices(bench: Any) -> dict[str, str]:
        devices = {"delay generator": type(bench.delay_generator).__name__,
                   "stage": type(bench.stage).__name__}
        for name, spec in bench.spectrometers.items():
            wl = spec.wavelength_nm()
            devices[f"spectrometer {name}"] = (f"{type(spec).__name__}, {wl[0]:.1f}-{wl[-1]:.1f}"
                                               f" nm, {wl.size} px")
        return devices

    def _refresh(self, bench: Any) -> None:
        try:
            position = bench.stage.position()
            delays = {ch: bench.delay_generator.get_delay(ch) for ch in "ABCD"}
            self._set(position=position, delays=delays)
        except Exception as exc:
            self._set(error=f"status: {describe(exc)}")


# ---------------------------------------------------------------------------- scan
class ScanController:
    """One scan at a time: the engine's worker, its subscriber thread, the live transfer."""

    def __init__(self, model: LiveModel, session: BenchSession | None = None) -> None:
        self.model = model
        self.session = session
        self.running: RunningScan | None = None
        self.live_transfer: LiveTransfer | None = None
        self.transfer: PackageTransfer | None = None  # the loaded model
        self.error = ""
        self._subscriber: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.running is not None and self.running.thread.is_alive()

    @property
    def finished(self) -> bool:
        return self.running is not None and not self.active and (
            self._subscriber is None or not self._subscriber.is_alive())

    def start(self, scan: ScanConfig, out: str | Path | None = None) -> RunningScan:
        if self.active:
            raise RuntimeError("a scan is already running")
        self.error = ""
        bench = self.session.bench if self.session is not None else None
        if bench is not None:
            self.session.scan_active = True
        self._reset_model(scan, out)
        self._scan = scan
        self.live_transfer = (LiveTransfer(self.transfer, self.model)
                              if self.transfer is not None else None)
        try:
            self.running = start_acquisition(scan, out=out, bench=bench, handle=ScanHandle())
        except BaseException:
            if self.session is not None:
                self.session.scan_active = False
            raise
        self._subscriber = threading.Thread(target=self._follow, args=(self.running,),
                                            name="plumelink-live", daemon=True)
        self._subscriber.start()
        return self.running

    def _reset_model(self, scan: ScanConfig, out: str | Path | None) -> None:
        """The empty map of the scan, shown at once; its wavelength axes come with the
        scan-started event."""
        from plumelink.pipeline.plan import make_plan

        plan = make_plan(scan)
        path = str(out if out is not None else scan.output_path())
        self.model.reset((plan.y_um.size, plan.x_um.size), x_um=plan.x_um, y_um=plan.y_um,
                         map_path=path)

    @staticmethod
    def _events(running: RunningScan) -> Iterator[ScanEvent]:
        """The scan's events until its end mark, or until its engine thread has ended
        without one (then what is queued): never a wait without an end."""
        events = running.events
        while not events.closed:
            event = events.get(timeout=0.5)
            if event is not None:
                yield event
            elif not events.closed and not running.thread.is_alive():
                while (event := events.get(timeout=0.05)) is not None:
                    yield event
                return

    def _follow(self, running: RunningScan) -> None:
        try:
            for event in self._events(running):
                if isinstance(event, ScanStarted):
                    self.model.set_wavelengths(event.wavelength_nm,
                                               self._spectrometer_settings())
                    continue
                self.model.add_line(event.line, event.progress, event.line_axis)
                if self.live_transfer is not None:
                    self.live_transfer.submit(event.line)
            running.thread.join()
            if running.error is not None and not running.handle.aborted:
                self.error = f"scan: {describe(running.error)}"
        finally:
            if self.session is not None:
                self.session.scan_active = False
            if self.live_transfer is not None:
                self.live_transfer.close()

    def _spectrometer_settings(self) -> dict[str, Any]:
        """The bench profile's spectrometer tables (their resolution sets the element maps'
        windows), shaped like a map file's settings snapshot."""
        from plumelink.drivers.bench import BenchProfile

        bench = self.session.bench if self.session is not None else None
        try:
            profile = bench.profile if bench is not None else BenchProfile.load(
                self._scan.bench)
        except (AttributeError, OSError, ValueError):
            return {}
        return {"spectrometers": {role: {"options": dict(spec.options)}
                                  for role, spec in profile.spectrometers.items()}}

    def set_transfer(self, transfer: PackageTransfer | None) -> None:
        """Use ``transfer`` for live transfer: the next scan, and the running one from its
        next line on."""
        self.transfer = transfer
        if self.active and self.live_transfer is None and transfer is not None:
            self.live_transfer = LiveTransfer(transfer, self.model)

    def pause(self) -> None:
        if self.running is not None:
            self.running.handle.pause()

    def resume(self) -> None:
        if self.running is not None:
            self.running.handle.resume()

    def abort(self, reason: str = "aborted by the operator") -> None:
        """Abort on a short thread: the handle disables the DDG outputs before returning."""
        if self.running is not None and self.active:
            threading.Thread(target=self.running.handle.abort, args=(reason,),
                             name="plumelink-abort", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """For shutdown and tests only: wait for the scan and its subscriber."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self.running.thread if self.running else None, self._subscriber):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.finished


# ---------------------------------------------------------------------------- files
def load_map(path: str | Path, model: LiveModel, stop: threading.Event | None = None,
             period_s: float = 1.0) -> dict[str, Any]:
    """Fill ``model`` from a map file (finished, interrupted or still being written).

    A map whose status is "running" is followed: new lines are added every ``period_s`` until
    its writer closes it or ``stop`` is set.
    """
    with MapReader(path, follow=True) as reader:
        axes = {s: reader.wavelength_nm(s) for s in ("primary", "secondary")}
        model.reset(reader.shape, x_um=reader.x_um, y_um=reader.y_um, wavelength=axes,
                    map_path=str(path))
        model.set_wavelengths(axes, reader.settings)
        seen = np.zeros(reader.shape[0], bool)
        while True:
            new = np.flatnonzero(reader.lines_done & ~seen)
            for iy in new:
                model.add_line(reader.read_line(int(iy)))
            seen[new] = True
            if reader.status != "running" or stop is None or stop.wait(period_s):
                break
            reader.refresh()
        return {"status": reader.status, "reason": reader.status_reason,
                "lines": reader.n_lines_done, "shape": reader.shape}


def read_spot(path: str | Path, iy: int, ix: int,
              transfer: PackageTransfer | None = None) -> dict[str, Any]:
    """Primary, secondary (and transferred) spectrum of one spot, read from the map file."""
    with MapReader(path, follow=True) as reader:
        if not reader.lines_done[iy]:
            raise ValueError(f"line {iy} of {path} is not acquired yet")
        line = reader.read_line(iy)
        out = {"iy": iy, "ix": ix}
        for s in ("primary", "secondary"):
            sysline = getattr(line, s)
            out[s] = (reader.wavelength_nm(s), np.asarray(sysline.spectra[ix], np.float32),
                      bool(sysline.valid[ix]))
    if transfer is not None and out["secondary"][2]:
        p, _ = transfer(out["secondary"][1][None, :])
        out["transferred"] = (np.asarray(transfer.primary_wavelength_nm), p[0])
        # the measured spectra in the transferred one's space: baseline removed the same way
        for s in ("primary", "secondary"):
            wl, counts, valid = out[s]
            out[s] = (wl, transfer.preprocessor.correct(counts[None, :])[0], valid)
        out["baseline_corrected"] = True
    return out
