"""The *Instances* option of Batch predict: beside each ``<stem>_labels.<fmt>`` it writes
``<stem>_instances.<fmt>``, the objects of one class each with its own id (see
:mod:`napari_seg3d.engine.prediction.instance_files`). Batch writes no probabilities, so it
offers the methods that need none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLineEdit, QSpinBox, QWidget

from ..engine.prediction.instance_files import InstancesChoice, refuse_over_inputs

#: what the method combo shows -> :data:`.instance_files.METHODS`
METHODS = {"watershed (auto)": "auto", "watershed (distance)": "distance",
           "connected components": "components"}


class BatchInstances:
    """The controls of the option, in one row: checkbox, class, method, smallest object.

    Attributes:
        row: the widget holding them. check, class_edit, method_combo, min_size_spin: the
            controls.
    """

    def __init__(self) -> None:
        self.check = QCheckBox("Instances of class")
        self.check.setToolTip("Also write <name>_instances.<format>: each object of the class "
                              "with its own id (0 = background).")
        self.class_edit = QLineEdit()
        self.class_edit.setPlaceholderText("value or name")
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("watershed: splits touching objects; connected components: "
                                     "for objects that never touch")
        self.min_size_spin = QSpinBox(minimum=0, maximum=10**7, value=0, suffix=" vox")
        self.min_size_spin.setToolTip("Objects of fewer voxels are removed.")
        self.row = QWidget()
        layout = QHBoxLayout(self.row)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.check, self.class_edit, self.method_combo, self.min_size_spin):
            layout.addWidget(w)

    def choice(self, inputs: Sequence[str], outs: Sequence[Path] | None,
               model_file: Path | None) -> InstancesChoice | None:
        """The option as set, or None when it is off; ``outs`` (the labels outputs, when known)
        are checked so that no instances land on an input or the model file.

        Raises:
            ValueError: the option is on but names no class.
            OutputError: an instances output would be written over an input or the model.
        """
        if not self.check.isChecked():
            return None
        text = self.class_edit.text().strip()
        if not text:
            raise ValueError("Instances: name the class whose objects to separate (its label "
                             "value or name), or untick Instances.")
        if outs is not None:
            refuse_over_inputs(inputs, outs, model_file)
        return InstancesChoice(text, METHODS[self.method_combo.currentText()],
                               self.min_size_spin.value())
