"""The bench GUI (PySide6 + pyqtgraph): thin widgets over pipeline and models."""
