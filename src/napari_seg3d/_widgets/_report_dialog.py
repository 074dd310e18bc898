"""The training report in the Train widget: built in a worker thread, shown in a window with a
*Save PNG...* button."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
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

from ..engine import Seg3DError
from .._report import training_report
from . import _layers


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


class ReportActions:
    """The Train widget's *Report* button: the report of its model on the chosen layers, built
    in a worker thread and shown in a window (:attr:`report_dialog`)."""

    def show_report(self) -> bool:
        """Build the training report of the model on the chosen layers in a worker thread, then
        show it in a window (:attr:`report_dialog`); False (after a notification) if none."""
        try:
            source = self.image_input()  # the Image and the channels ticked with it
        except Seg3DError as e:
            show_error(str(e))
            return False
        image, annotations = getattr(source, "layer", None), self.annotation_layer()
        if self.model is None or image is None or annotations is None:
            show_error("The report needs a model (train or load one) and the image and "
                       "annotation layers chosen above.")
            return False
        labels = np.array(_layers.layer_array(annotations), copy=True)
        if labels.shape != _layers.spatial_shape(image):
            show_error("The annotation layer does not have the image's size.")
            return False
        name = f"{image.name} model"
        self.status.setText("Making the training report...")
        self._report_worker = start_report(
            self.model, source.data, labels, name,
            lambda png: self._on_report(png, name), self._on_report_error)
        self._update_buttons()
        return True

    def _on_report(self, png: bytes, name: str) -> None:
        self._report_worker = None
        self.report_dialog = ReportDialog(png, name, self)
        self.report_dialog.show()
        self.status.setText(f"Training report of '{name}' shown in its own window.")
        self._update_buttons()

    def _on_report_error(self, error: BaseException) -> None:
        self._report_worker = None
        show_error(_layers.error_message(error, "The training report"))
        self._update_buttons()
