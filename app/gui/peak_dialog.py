"""The peak table of a spot or of the map's mean spectrum (`pipeline.peaks`), shown as a
table that can be saved as CSV."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from plumelink.pipeline.peaks import PeakTable, write_peak_csv

COLUMNS = ("wavelength (nm)", "height (counts)", "area (counts·nm)", "candidates")


class PeakDialog(QDialog):
    def __init__(self, table: PeakTable, parent=None) -> None:
        super().__init__(parent)
        self.table = table
        self.setWindowTitle(f"Peaks: {table.source.name}, {table.system}, {table.what}")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"{len(table.peaks)} peaks of the {table.system} spectrum, "
                                f"{table.what}; candidates within the resolution, strongest "
                                "first (LTE, equal mass fractions)"))
        self.grid = QTableWidget(len(table.peaks), len(COLUMNS))
        self.grid.setHorizontalHeaderLabels(list(COLUMNS))
        for r, p in enumerate(table.peaks):
            for c, text in enumerate((f"{p.wavelength_nm:.3f}", f"{p.height:.4g}",
                                      f"{p.area:.4g}", p.best)):
                self.grid.setItem(r, c, QTableWidgetItem(text))
        self.grid.resizeColumnsToContents()
        layout.addWidget(self.grid, 1)
        row = QHBoxLayout()
        self.status = QLabel("")
        row.addWidget(self.status, 1)
        save = QPushButton("Export CSV…")
        save.clicked.connect(self._save)
        row.addWidget(save)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        row.addWidget(close)
        layout.addLayout(row)
        self.resize(760, 520)

    def _save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Peak table", "peaks.csv", "CSV (*.csv)")
        if path:
            self.save(path)

    def save(self, path: str) -> None:
        try:
            write_peak_csv(self.table, path, overwrite=True)
        except OSError as exc:
            self.status.setText(f"<span style='color:#c00'>{exc}</span>")
        else:
            self.status.setText(f"saved {path}")
