"""The *Instances* option of the Predict widget: once a prediction is complete, the objects of
one class each get their own id in an ``<image> instances`` Labels layer, computed in a worker
thread (see :mod:`napari_seg3d.engine.prediction.instances`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QSpinBox

from ..engine.prediction.instance_files import InstanceConfig, class_probability
from ..engine.prediction.instances import MAX_VOXELS, check_size
from . import _layers

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

ROLE = "instances"
#: what the method combo shows -> :data:`.instance_files.METHODS`
METHODS = {"Watershed (auto)": "auto", "Watershed (distance)": "distance",
           "Watershed (probability)": "probability", "Connected components": "components"}


class InstancesOption:
    """The *Instances* checkbox, class and method combos and minimum size of a form, and the
    run that adds the instances layer. GUI thread only.

    Args:
        form: the form the rows are added to.
        probabilities_check: the widget's *Class probabilities layer* checkbox, ticked (and held)
            while the probability method is chosen: that method reads the layer.

    Attributes:
        check, class_combo, method_combo, min_size_spin: the controls.
        worker: the running worker, or None. layer: the last instances layer, or None.
        max_voxels: larger predictions get no instances, but a sentence.
    """

    def __init__(self, form: QFormLayout, probabilities_check: QCheckBox) -> None:
        self.check = QCheckBox("Instances: separate the objects of a class")
        self.check.setToolTip("After the prediction, give each object of the class its own id "
                              "in an '<image> instances' Labels layer.")
        self.class_combo, self.method_combo = QComboBox(), QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("Watershed: splits touching objects (distance: on the "
                                     "distance to the background; probability: on the class "
                                     "probability; auto: the distance, or the smoothed class map "
                                     "where objects are elongated). Connected components: for "
                                     "objects that never touch.")
        self.min_size_spin = QSpinBox(minimum=0, maximum=10**7, value=0, suffix=" voxels")
        self.min_size_spin.setToolTip("Objects of fewer voxels are removed.")
        for label, w in (("", self.check), ("Instances of", self.class_combo),
                         ("Instance method", self.method_combo),
                         ("Smallest object", self.min_size_spin)):
            form.addRow(label, w)
        self._probabilities_check = probabilities_check
        self.worker = None
        self.layer = None
        self.max_voxels = MAX_VOXELS
        self._model = None
        self._run = 0
        self.check.toggled.connect(self._update)
        self.method_combo.currentTextChanged.connect(self._update)
        self._update()

    def set_model(self, model) -> None:
        """Offer the classes of ``model`` (the last one chosen at first: objects are painted
        after the background, as in the sample)."""
        if model is self._model:
            return
        self._model = model
        self.class_combo.clear()
        if model is not None:
            for value, name in zip(model.class_values, model.class_names):
                self.class_combo.addItem(f"{name} ({value})", value)
            self.class_combo.setCurrentIndex(self.class_combo.count() - 1)

    def config(self) -> InstanceConfig | None:
        """The chosen settings, or None when the option is off or there is no class."""
        if not self.check.isChecked() or self.class_combo.currentIndex() < 0:
            return None
        return InstanceConfig(int(self.class_combo.currentData()),
                              self.class_combo.currentIndex(),
                              method=METHODS[self.method_combo.currentText()],
                              min_size=self.min_size_spin.value(), max_voxels=self.max_voxels)

    def after(self, viewer: napari.viewer.Viewer, complete: bool, image_name: str, labels_layer,
              probabilities_layer) -> bool:
        """Start the instances of a prediction that ended; returns whether they started.

        Args:
            viewer: the viewer.
            complete: whether the prediction finished (a partial one gets no instances).
            image_name: the predicted image layer.
            labels_layer: its prediction layer.
            probabilities_layer: its probabilities layer, or None.
        """
        config = self.config()
        if config is None or labels_layer is None:
            return False
        if not complete:
            show_info("No instances: the prediction did not finish.")
            return False
        try:
            labels, probability = _inputs(config, labels_layer, probabilities_layer)
        except ValueError as e:
            show_error(str(e))
            return False
        self._run += 1
        run, voxel = self._run, tuple(labels_layer.scale)[-labels.ndim:]
        worker = thread_worker(_compute, start_thread=False)(config, labels, probability, voxel)
        worker.returned.connect(lambda ids: self._show(viewer, ids, run, image_name, labels_layer))
        worker.finished.connect(lambda: self._finished(run))
        self.worker = worker
        worker.start()
        return True

    def _show(self, viewer, ids, run: int, image_name: str, like) -> None:
        if run != self._run:  # a newer prediction's instances are on the way
            return
        if isinstance(ids, _layers.WorkerFailed):
            show_error(_layers.error_message(ids.error, "Instances"))
            return
        self.layer = _instances_layer(viewer, f"{image_name} instances", ids, like, image_name)
        show_info(f"'{self.layer.name}': {int(ids.max(initial=0))} objects.")

    def _finished(self, run: int) -> None:
        if run == self._run:
            self.worker = None

    def _update(self, *_: object) -> None:
        on = self.check.isChecked()
        for w in (self.class_combo, self.method_combo, self.min_size_spin):
            w.setEnabled(on)
        needs = on and METHODS[self.method_combo.currentText()] == "probability"
        if needs:
            self._probabilities_check.setChecked(True)
        self._probabilities_check.setEnabled(not needs)


def _inputs(config: InstanceConfig, labels_layer, probabilities_layer):
    """Copies of the class labels and, for the probability method, of the class probability,
    read from the layers (a store on disk included) once the size is known to fit."""
    check_size(labels_layer.data.shape, config.max_voxels)
    labels = np.array(labels_layer.data)
    probability = None
    if config.needs_probability:
        if probabilities_layer is None or probabilities_layer.data is None:
            raise ValueError("Instances by the probability need the class probabilities layer; "
                             "predict again with it, or choose another instance method.")
        probability = class_probability(probabilities_layer.data, config.class_index)
    return labels, probability


def _compute(config: InstanceConfig, labels, probability, voxel):
    """The worker body: the instance ids, or :class:`_layers.WorkerFailed`."""
    try:
        return config.apply(labels, probability, voxel)
    except Exception as e:  # any failure: shown to the user by the GUI thread
        log.exception("Instances failed")
        return _layers.WorkerFailed(e)


def _instances_layer(viewer, name: str, ids: np.ndarray, like, image_name: str):
    """The Labels layer ``name`` showing ``ids`` on the grid of ``like`` (an earlier instances
    layer of that name takes the new ids). The active layer stays active."""
    restore = _layers._keep_active(viewer)
    old = _layers.find_layer(viewer, name)
    if old is not None and old.metadata.get(_layers.ROLE) == ROLE:
        old.data = ids
        layer = old
    else:
        layer = viewer.add_labels(ids, name=name, scale=like.scale, translate=like.translate)
    layer.metadata.update({_layers.ROLE: ROLE, "image": image_name})
    restore()
    return layer
