"""Ask before a new model trains on an annotation layer that looks like an image or an instance
segmentation (:func:`napari_seg3d.engine.training.labels_check.labels_look_wrong`): a dialog that says
why, with *Train anyway* to go on; *Cancel* leaves a napari warning and starts nothing."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QMessageBox, QWidget

from ..engine.training.labels_check import labels_look_wrong

TITLE = "Train on these labels?"
GO_ON = "Train anyway"


def labels_confirmed(parent: QWidget | None, labels: np.ndarray) -> bool:
    """True if ``labels`` look like annotations, or the user chose *Train anyway*.

    Args:
        parent: The widget the dialog belongs to.
        labels: ``(Z, Y, X)`` copy of the annotation layer.

    Returns:
        Whether to train.
    """
    problem = labels_look_wrong(labels)
    if problem is None:
        return True
    box = QMessageBox(QMessageBox.Icon.Warning, TITLE,
                      f"{problem}\n\nChoose the layer you painted your strokes in as the "
                      "annotation layer, or train on these labels anyway.", parent=parent)
    go_on = box.addButton(GO_ON, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(box.addButton(QMessageBox.StandardButton.Cancel))
    box.exec()
    if box.clickedButton() is go_on:
        return True
    show_warning(f"{problem} Training not started: choose the annotation layer you painted, or "
                 f"press Train and choose '{GO_ON}'.")
    return False
