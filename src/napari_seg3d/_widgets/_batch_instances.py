"""The *Instances* option of Batch predict: beside each ``<stem>_labels.<fmt>`` it writes
``<stem>_instances.<fmt>``, the objects of one class each with its own id (see
:mod:`napari_seg3d.engine.prediction.instance_files`). Batch writes no probabilities, so it
offers the methods that need none."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLineEdit, QSpinBox, QWidget

from ..engine.prediction.instance_files import (
    InstanceConfig,
    class_value_of,
    refuse_over_inputs,
    with_instances,
)

#: what the method combo shows -> :data:`.instance_files.METHODS`
METHODS = {"watershed (distance)": "distance", "connected components": "components"}


@dataclass(frozen=True)
class InstancesChoice:
    """The option as the form set it, read once when *Run* is pressed.

    Attributes:
        class_text: the class, by label value or name (resolved against the model).
        method: ``"distance"`` or ``"components"``.
        min_size: objects of fewer voxels are removed.
    """

    class_text: str
    method: str = "distance"
    min_size: int = 0

    def stage(self, model, out_dir: Path, inputs: Sequence[str],
              ) -> Callable[[Generator], Generator]:
        """What wraps the file predictions of ``model`` to also write their instances.

        Raises:
            ValueError: the model has no such class (the sentence lists its classes).
        """
        value, index = class_value_of(model.class_values, model.class_names, self.class_text)
        config = InstanceConfig(value, index, method=self.method, min_size=self.min_size)
        return lambda gen: with_instances(gen, config, out_dir, inputs, model.voxel_size)


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
