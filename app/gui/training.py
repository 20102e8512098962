"""A training run for the Train panel: `models.train.train_transfer` in a process of its own.

Spawned (never forked from a process that runs Qt), at a lower scheduling priority, so that
training never competes with the GUI thread for the interpreter lock and, on a small machine,
leaves the GUI and the acquisition their CPU share. Its loss history comes back through a
queue read by a thread; nothing here blocks the GUI thread.

Stopping: `stop` asks the training to end at its next progress report (the end of an epoch);
a run that has not ended ``STOP_GRACE_S`` later (a long epoch, a baseline fit) is terminated.
The package's manifest is written last (temp file + rename) by `models.package`, so a stopped
run never leaves a package that looks complete; `TrainRun.package_written` checks it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAIN_NICE = 10
STOP_GRACE_S = 10.0
MANIFEST = "manifest.json"

Epoch = tuple[str, int, int, float | None, float | None]


class TrainingStopped(Exception):
    """Raised from the progress callback to stop `train_transfer` at the next epoch."""


def _train_child(train_path: str, val_path: str, out_dir: str, options: dict[str, Any],
                 messages: Any, stop: Any) -> None:
    """The training process: `train_transfer` with its progress sent to the GUI."""
    if hasattr(os, "nice"):
        os.nice(TRAIN_NICE)
    try:
        from plumelink.models.train import TrainConfig, train_transfer

        def progress(stage: str, epoch: int, n_epochs: int, train_loss: Any,
                     val_loss: Any) -> None:
            messages.put(("epoch", (stage, int(epoch), int(n_epochs),
                                    None if train_loss is None else float(train_loss),
                                    None if val_loss is None else float(val_loss))))
            if stop.is_set():
                raise TrainingStopped("training stopped by the operator")

        if stop.is_set():
            raise TrainingStopped("training stopped by the operator")
        path = train_transfer(train_path, val_path, out_dir, TrainConfig(**options),
                              progress=progress)
        messages.put(("done", str(path)))
    except TrainingStopped:
        messages.put(("stopped", ""))
    except BaseException as exc:
        text = str(exc)
        messages.put(("error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__))


class TrainRun:
    """One training process, its loss history (``snapshot``), stop and kill.

    ``options`` are `models.train.TrainConfig` options by flat name, as a dict: the config is
    built (and validated) in the training process, so the GUI process never imports torch
    for it.
    """

    def __init__(self, train_path: str | Path, val_path: str | Path, out_dir: str | Path,
                 options: dict[str, Any], stop_grace_s: float = STOP_GRACE_S) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.out_dir = Path(out_dir)
        self.stop_grace_s = stop_grace_s
        self.history: list[Epoch] = []
        self.result: str = ""
        self.error: str = ""
        self.stopped = False
        self.terminated = False
        self._stop_requested_at: float | None = None
        self._started = time.time()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._messages = ctx.Queue()
        self._stop = ctx.Event()
        self.process = ctx.Process(
            target=_train_child, name="plumelink-train", daemon=True,
            args=(str(train_path), str(val_path), str(out_dir), dict(options), self._messages,
                  self._stop))
        self.process.start()
        self._reader = threading.Thread(target=self._read, name="plumelink-train-messages",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            self._follow()
        finally:
            if self.process.is_alive():
                self.process.join(self.stop_grace_s)
            if self.process.is_alive():  # finished its work but does not exit
                self.process.terminate()
                self.process.join(5.0)
            self._done.set()

    def _follow(self) -> None:
        while True:
            try:
                kind, value = self._messages.get(timeout=0.2)
            except queue.Empty:
                asked = self._stop_requested_at
                if asked is not None and time.monotonic() - asked > self.stop_grace_s:
                    log.warning("training did not stop within %.0f s; terminating it",
                                self.stop_grace_s)
                    self.process.terminate()
                    self.process.join(5.0)
                    self.stopped = self.terminated = True
                    return
                if not self.process.is_alive():
                    if self._stop.is_set():
                        self.stopped = True
                    else:
                        self.error = self.error or (f"training process ended "
                                                    f"(exit code {self.process.exitcode})")
                    return
                continue
            if kind == "epoch":
                with self._lock:
                    self.history.append(value)
                continue
            if kind == "done":
                self.result = value
            elif kind == "stopped":
                self.stopped = True
            else:
                self.error = value
            return

    def stop(self) -> None:
        """Ask the training to end at its next epoch (terminated after ``stop_grace_s``)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stop.set()

    def kill(self) -> None:
        """End the process now (the window is closing)."""
        self._stop.set()
        if self.process.is_alive():
            self.process.terminate()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() and not self.done

    @property
    def package_written(self) -> bool:
        """Whether this run wrote a complete package (its manifest, written last)."""
        manifest = self.out_dir / MANIFEST
        return manifest.is_file() and manifest.stat().st_mtime >= self._started - 1.0

    def snapshot(self) -> list[Epoch]:
        with self._lock:
            return list(self.history)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)
