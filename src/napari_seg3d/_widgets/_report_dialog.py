"""The training report in the Train widget: built in a worker thread, shown in a window with a
*Save PNG...* button."""

from __future__ import annotations

import io
from pathlib import Path

from napari.qt.threading import thread_worker
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from .._report import training_report


def _png(model, image, labels, title: str) -> bytes:
    fig = training_report(model, image, labels, title=title, device=model.train_config.device)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def start_report(model, image, labels, title: str, on_done, on_error):
    """Build the report PNG in a worker thread; ``on_done(png_bytes)`` in the GUI thread."""
    worker = thread_worker(_png, start_thread=False)(model, image, labels, title)
    worker.returned.connect(on_done)
    worker.errored.connect(on_error)
    worker.start()
    return worker


class ReportDialog(QDialog):
    """The report image, scrollable, with *Save PNG...*."""

    def __init__(self, png: bytes, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Training report: {name}")
        self.png, self.name = png, name
        self.pixmap = QPixmap()
        self.pixmap.loadFromData(png, "PNG")
        label = QLabel()
        label.setPixmap(self.pixmap)
        scroll = QScrollArea()
        scroll.setWidget(label)
        self.save_button = QPushButton("Save PNG...")
        self.save_button.clicked.connect(self._save_dialog)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addStretch()
        buttons.addWidget(self.save_button)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll)
        layout.addLayout(buttons)
        self.resize(min(self.pixmap.width() + 40, 1000), 800)

    def save_to(self, path) -> Path:
        path = Path(path)
        path.write_bytes(self.png)
        return path

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the training report",
                                              f"{self.name}.report.png", "PNG image (*.png)")
        if path:
            self.save_to(path)
