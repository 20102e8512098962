"""Train panel: training and validation maps, model options, start and stop, live loss
curves, and the model package written (`models.train.train_transfer` on a worker)."""

from __future__ import annotations

import os

import pyqtgraph as pg
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .training import TrainRun

STAGE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _path_row(edit: QLineEdit, pick) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit)
    b = QPushButton("Browse…")
    b.clicked.connect(pick)
    row.addWidget(b)
    return row


def usable_cores() -> int:
    """The cores this process may run on (its affinity), as the CLI's default threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TrainPanel(QWidget):
    def __init__(self, settings, parent=None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.run: TrainRun | None = None
        self._shown = -1
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.train = QLineEdit(str(settings.value("train/train", "")))
        self.val = QLineEdit(str(settings.value("train/val", "")))
        self.out = QLineEdit(str(settings.value("train/out", "")))
        form.addRow("training map", _path_row(self.train, lambda: self._file(self.train)))
        form.addRow("validation map", _path_row(self.val, lambda: self._file(self.val)))
        form.addRow("model folder", _path_row(self.out, self._folder))
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100000)
        self.epochs.setValue(int(settings.value("train/epochs", 100)))
        form.addRow("epochs (cap)", self.epochs)
        self.latent = QSpinBox()
        self.latent.setRange(2, 1024)
        self.latent.setValue(64)
        form.addRow("latent size", self.latent)
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        # 0: the run's own default, the cores no other process keeps busy at its start
        self.threads.setSpecialValueText(f"auto (free cores of {usable_cores()})")
        self.threads.setValue(0)
        form.addRow("torch threads", self.threads)
        self.fine_tune = QCheckBox("fine-tune the composed model")
        self.fine_tune.setChecked(True)
        self.baselines = QCheckBox("train the baselines (PLS, kNN, PDS, …)")
        self.baselines.setChecked(True)
        self.overwrite = QCheckBox("overwrite an existing package")
        for w in (self.fine_tune, self.baselines, self.overwrite):
            form.addRow(w)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.plot = pg.PlotWidget(title="loss per epoch")
        self.plot.setLabel("bottom", "epoch")
        self.plot.setLogMode(y=True)
        self.plot.addLegend()
        self.curves: dict[str, pg.PlotDataItem] = {}
        layout.addWidget(self.plot, 1)

    def _file(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Map file", "", "plumelink maps (*.h5)")
        if path:
            edit.setText(path)

    def _folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.out.setText(path)

    def options(self) -> dict:
        """`models.train.TrainConfig` options by flat name (built and checked in the training
        process)."""
        return {"epochs": self.epochs.value(), "latent": self.latent.value(),
                "threads": self.threads.value() or None, "fine_tune": self.fine_tune.isChecked(),
                "baselines": self.baselines.isChecked(), "overwrite": self.overwrite.isChecked(),
                "hash_inputs": False}

    def start(self) -> None:
        if self.run is not None and not self.run.done:
            return
        for key, edit in (("train", self.train), ("val", self.val), ("out", self.out)):
            self.settings.setValue(f"train/{key}", edit.text())
        self.settings.setValue("train/epochs", self.epochs.value())
        options = self.options()
        for curve in self.curves.values():
            self.plot.removeItem(curve)
        self.curves.clear()
        self._shown = -1
        self.run = TrainRun(self.train.text(), self.val.text(), self.out.text(), options)

    def stop(self) -> None:
        """Stop the training at its next epoch (terminated if it does not within seconds)."""
        if self.run is not None and not self.run.done:
            self.run.stop()
            self.status.setText("stopping…")

    def refresh(self) -> None:
        run = self.run
        self.start_button.setEnabled(run is None or run.done)
        self.stop_button.setEnabled(run is not None and not run.done)
        if run is None:
            return
        history = run.snapshot()
        if len(history) != self._shown:
            self._shown = len(history)
            self._plot(history)
        if run.done:
            if run.stopped:
                text = "stopped by the operator" + (
                    " (process terminated)" if run.terminated else "") + (
                    f"; package {run.out_dir} was completed before the stop" if run.package_written
                    else "; no model package written")
            elif run.error:
                text = f"<span style='color:#c00'>{run.error}</span>"
            else:
                text = f"done: model package {run.result}"
        elif run.stopping:
            text = "stopping…"
        elif history:
            stage, epoch, n, tl, vl = history[-1]
            text = f"training: {stage} {epoch}/{n}" + (
                f", train loss {tl:.4g}" if tl is not None else "") + (
                f", validation {vl:.4g}" if vl is not None else "")
        else:
            text = "training: reading the maps…"
        if text != self.status.text():
            self.status.setText(text)

    def _plot(self, history) -> None:
        series: dict[str, tuple[list, list]] = {}
        for stage, epoch, _n, tl, vl in history:
            for kind, value in (("train", tl), ("val", vl)):
                if value is not None and value > 0:
                    xs, ys = series.setdefault(f"{stage} {kind}", ([], []))
                    xs.append(epoch)
                    ys.append(value)
        for k, (name, (xs, ys)) in enumerate(sorted(series.items())):
            if name not in self.curves:
                colour = STAGE_COLOURS[(k // 2) % len(STAGE_COLOURS)]
                style = pg.QtCore.Qt.SolidLine if name.endswith("train") else pg.QtCore.Qt.DashLine
                self.curves[name] = self.plot.plot(pen=pg.mkPen(colour, style=style), name=name)
            self.curves[name].setData(xs, ys)
