"""The *Export...* button and dialog: the current model as a BioImage Model Zoo (bioimage.io)
package, its test input cropped from the chosen image layer. The export (a TorchScript trace,
test tensors, the zip) runs in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..engine.errors import Seg3DError
from . import _layers

TOOLTIP = ("Write the model as a BioImage Model Zoo package (.zip) for deepImageJ, ilastik and "
           "bioimageio.core; its test input is a crop of the chosen image.")


def add_export_button(owner: QWidget, model_of: Callable, image_of: Callable,
                      beside: QPushButton, follow: bool = True) -> QPushButton:
    """Put an *Export...* button right after ``beside`` in its row of ``owner``.

    Args:
        owner: the dock widget (it keeps the dialog and worker).
        model_of: returns the current model, or None.
        image_of: returns the chosen image layer, or None.
        beside: the button the new one follows.
        follow: enable the new button exactly when ``beside`` is enabled.
    """
    button = QPushButton("Export...")
    button.setToolTip(TOOLTIP)
    row = _row_of(owner.layout(), beside)
    row.insertWidget(row.indexOf(beside) + 1, button)
    button.clicked.connect(lambda: open_export_dialog(owner, model_of(), image_of()))
    if follow:
        button.setEnabled(beside.isEnabled())
        beside.installEventFilter(_EnabledFollower(beside, button))
    return button


class _EnabledFollower(QObject):
    """Mirrors the enabled state of ``source`` onto ``target``."""

    def __init__(self, source: QWidget, target: QWidget) -> None:
        super().__init__(source)
        self._target = target

    def eventFilter(self, obj, event) -> bool:  # Qt's name
        if event.type() == QEvent.Type.EnabledChange:
            self._target.setEnabled(obj.isEnabled())
        return False


def _row_of(layout: QLayout, widget: QWidget) -> QHBoxLayout:
    """The (nested) horizontal layout holding ``widget``."""
    for i in range(layout.count()):
        child = layout.itemAt(i).layout()
        if child is None:
            continue
        if isinstance(child, QHBoxLayout) and child.indexOf(widget) >= 0:
            return child
        try:
            return _row_of(child, widget)
        except LookupError:
            pass
    raise LookupError("The button to put Export... beside is in no row of the widget.")


def open_export_dialog(owner: QWidget, model, image_layer) -> ExportDialog | None:
    """Show the export dialog (not modal) for ``model``; None (after a notification) if there
    is no model or it cannot be exported."""
    from ..engine.zoo.export import check_exportable

    if model is None:
        show_error("There is no model to export: train or load one first.")
        return None
    try:
        check_exportable(model)
    except Seg3DError as e:
        show_error(str(e))
        return None
    dialog = ExportDialog(owner, model, image_layer)
    owner.export_dialog = dialog
    dialog.show()
    return dialog


class ExportDialog(QDialog):
    """Name, description, authors and the file of the package; *Export* writes it.

    Public for tests: the line edits ``name_edit``, ``description_edit``, ``authors_edit``,
    ``path_edit``; :meth:`export` (returns whether it started); ``worker``; ``written``.
    """

    def __init__(self, owner: QWidget, model, image_layer) -> None:
        super().__init__(owner)
        self.setWindowTitle("Export to the BioImage Model Zoo")
        self.model, self.image_layer = model, image_layer
        self.worker, self.written = None, None
        from ..engine.zoo.export import default_description

        image = image_layer.name if image_layer is not None else "model"
        self.name_edit = QLineEdit(f"{image} {' '.join(model.class_names)}")
        self.description_edit = QLineEdit(default_description(model))
        self.authors_edit = QLineEdit()
        self.authors_edit.setPlaceholderText("comma-separated (default: your login name)")
        self.path_edit = QLineEdit(str(Path.home() / f"{image} model.zip"))
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        form = QFormLayout(self)
        for label, w in (("Name", self.name_edit), ("Description", self.description_edit),
                         ("Authors", self.authors_edit)):
            form.addRow(label, w)
        form.addRow("Package", row)
        source = (f"Test input: a crop of '{image_layer.name}'." if image_layer is not None
                  else "Test input: synthetic (no image layer chosen).")
        form.addRow(QLabel(source))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.export_button = buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.export)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Package", self.path_edit.text(),
                                              "bioimage.io package (*.zip)")
        if path:
            self.path_edit.setText(path)

    def export(self) -> bool:
        """Start writing the package in a worker; the dialog closes when it is written."""
        from ..engine.zoo.export import ExportDetails, export_package

        path = self.path_edit.text().strip()
        if not path:
            show_error("Choose the file of the package.")
            return False
        image = self._image()
        details = ExportDetails(
            name=self.name_edit.text(), description=self.description_edit.text(),
            authors=tuple(a.strip() for a in self.authors_edit.text().split(",") if a.strip()),
            image_name=self.image_layer.name if image is not None else "")
        self.export_button.setEnabled(False)
        self.worker = thread_worker(export_package, start_thread=False)(
            self.model, path, image=image, details=details)
        self.worker.returned.connect(self._on_written)
        self.worker.errored.connect(self._on_error)
        self.worker.start()
        return True

    def _image(self):
        """The chosen layer's data if it fits the model, else None (a synthetic test input)."""
        layer = self.image_layer
        if layer is None or _layers.channels_of(layer) != self.model.in_channels:
            return None
        return _layers.layer_array(layer)  # only the crop of the test input is read

    def _on_written(self, path) -> None:
        self.written, self.worker = path, None
        show_info(f"Exported the model to {path} (a bioimage.io package).")
        self.accept()

    def _on_error(self, error: BaseException) -> None:
        self.worker = None
        self.export_button.setEnabled(True)
        show_error(_layers.error_message(error, "The export"))
