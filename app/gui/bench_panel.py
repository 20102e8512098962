"""Bench panel: profile, connect, device status, DDG delays, stage and spectrometers.

Every button posts one command to the `BenchSession` thread; the panel shows its status.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from plumelink.drivers.bench import available_profiles

from .workers import BenchSession

US_PER_S = 1e6
MS_PER_S = 1e3


def delay_text(seconds: float) -> str:
    """A delay as the lab says it: ns below 1 µs, else µs (ns resolution)."""
    return f"{seconds * 1e9:.0f} ns" if abs(seconds) < 1e-6 else f"{seconds * US_PER_S:.3f} µs"


def _spin(lo: float, hi: float, value: float, decimals: int = 3,
          suffix: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(decimals)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


class BenchPanel(QWidget):
    def __init__(self, session: BenchSession, settings, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.settings = settings
        layout = QVBoxLayout(self)

        row = QHBoxLayout()
        self.profile = QComboBox()
        self.profile.setEditable(True)
        self.profile.addItems(available_profiles())
        self.profile.setCurrentText(str(settings.value("bench/profile", "simulated")))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_bench)
        self.disconnect_button = QPushButton("Disconnect")
        self.disconnect_button.clicked.connect(session.disconnect)
        for w in (QLabel("Bench profile"), self.profile, browse, self.connect_button,
                  self.disconnect_button):
            row.addWidget(w)
        layout.addLayout(row)
        self.state = QLabel("disconnected")
        self.state.setWordWrap(True)
        layout.addWidget(self.state)

        grid = QGridLayout()
        layout.addLayout(grid)
        # DDG
        ddg = QGroupBox("Delay generator (after the reference channel)")
        form = QFormLayout(ddg)
        self.delays = {}
        # entered and shown in µs with ns resolution, the lab's units; sent in seconds
        for ch, ref, default in (("A", "T0", 180e-6), ("C", "A", 1e-6), ("D", "C", 10e-6)):
            box = _spin(0.0, 1e6, default * US_PER_S, 3, " µs")
            box.setToolTip("µs after the reference channel; 0.001 µs = 1 ns (the DDG's step is "
                           "5 ps)")
            self.delays[ch] = (box, ref)
            form.addRow(f"{ch} (from {ref})" + {"A": " laser", "C": " spectrometer trigger",
                                                 "D": " gate end"}[ch], box)
        set_delays = QPushButton("Set delays")
        set_delays.clicked.connect(self.set_delays)
        form.addRow(set_delays)
        self.laser = QLabel("laser rate: –")
        form.addRow(self.laser)
        self.delays_now = QLabel("delays set: –")
        form.addRow(self.delays_now)
        grid.addWidget(ddg, 0, 0)
        # stage
        stage = QGroupBox("Stage (µm)")
        sform = QFormLayout(stage)
        self.position = QLabel("–")
        sform.addRow("position", self.position)
        self.jog_step = _spin(0.1, 10000.0, 100.0, 1, " µm")
        sform.addRow("jog step", self.jog_step)
        jog = QHBoxLayout()
        for label, dx, dy in (("−X", -1, 0), ("+X", 1, 0), ("−Y", 0, -1), ("+Y", 0, 1)):
            b = QPushButton(label)
            b.clicked.connect(lambda _=False, dx=dx, dy=dy: self.jog(dx, dy))
            jog.addWidget(b)
        sform.addRow(jog)
        self.goto_x, self.goto_y = _spin(-1e6, 1e6, 0.0, 1), _spin(-1e6, 1e6, 0.0, 1)
        goto = QHBoxLayout()
        goto.addWidget(self.goto_x)
        goto.addWidget(self.goto_y)
        go = QPushButton("Go to")
        go.clicked.connect(self.go_to)
        goto.addWidget(go)
        sform.addRow("go to x, y", goto)
        home = QPushButton("Home")
        home.clicked.connect(lambda: session.submit(lambda b: b.stage.home(), "home"))
        sform.addRow(home)
        grid.addWidget(stage, 0, 1)
        # spectrometers
        spec = QGroupBox("Spectrometers")
        pform = QFormLayout(spec)
        self.spectrometers = {}
        for name in ("primary", "secondary"):
            it = _spin(0.01, 10_000.0, 1.05, 3, " ms")  # the lab's unit; sent in seconds
            av = QSpinBox()
            av.setRange(1, 10000)
            row = QHBoxLayout()
            row.addWidget(it)
            row.addWidget(QLabel("averages"))
            row.addWidget(av)
            self.spectrometers[name] = (it, av)
            pform.addRow(f"{name} integration", row)
        apply = QPushButton("Apply spectrometer settings")
        apply.clicked.connect(self.apply_spectrometers)
        pform.addRow(apply)
        grid.addWidget(spec, 1, 0, 1, 2)
        layout.addStretch(1)

    # -- actions: one call into the session each
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Bench profile", "", "TOML (*.toml)")
        if path:
            self.profile.setCurrentText(path)

    def connect_bench(self) -> None:
        name = self.profile.currentText().strip()
        self.settings.setValue("bench/profile", name)
        self.session.connect(name)

    def set_delays(self) -> None:
        values = [(ch, ref, box.value() / US_PER_S) for ch, (box, ref) in self.delays.items()]

        def apply(bench) -> None:
            for ch, ref, value in values:
                bench.delay_generator.set_delay(ch, ref, value)
        self.session.submit(apply, "set delays")

    def jog(self, dx: int, dy: int) -> None:
        step = self.jog_step.value()
        self.session.submit(lambda b: b.stage.move_relative(dx * step, dy * step), "jog")

    def go_to(self) -> None:
        x, y = self.goto_x.value(), self.goto_y.value()
        self.session.submit(lambda b: b.stage.move_absolute(x, y), "go to")

    def apply_spectrometers(self) -> None:
        values = {n: (it.value() / MS_PER_S, av.value())
                  for n, (it, av) in self.spectrometers.items()}

        def apply(bench) -> None:
            for name, (it, av) in values.items():
                if name in bench.spectrometers:
                    bench.spectrometers[name].configure(it, 0.0, av)
        self.session.submit(apply, "spectrometer settings")

    # -- repaint from the session's status
    def refresh(self) -> None:
        st = self.session.status()
        lines = [f"<b>{st['state']}</b> {st.get('profile', '')}"]
        lines += [f"{k}: {v}" for k, v in st.get("devices", {}).items()]
        if st.get("error"):
            lines.append(f"<span style='color:#c00'>{st['error']}</span>")
        text = "<br>".join(lines)
        if text != self.state.text():
            self.state.setText(text)
        pos = st.get("position")
        self.position.setText("–" if pos is None else f"x {pos[0]:.1f}, y {pos[1]:.1f}")
        bench = self.session.bench
        if bench is not None:
            self.laser.setText(f"laser rate: {bench.profile.laser.rate_hz:g} Hz")
        text = "delays set: " + (", ".join(
            f"{ch} = {ref} + {delay_text(seconds)}"
            for ch, (ref, seconds) in (st.get("delays") or {}).items()) or "–")
        if text != self.delays_now.text():
            self.delays_now.setText(text)
