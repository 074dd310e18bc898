"""The Predict dock widget: apply a model to an image layer, streaming the result region by
region into a ``<image> prediction`` Labels layer (and optionally class probabilities and an
uncertainty map into Image layers) while the sliding window advances in a background thread."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..engine import ModelFileError, load_model, resolve_device
from . import _layers, _predict_outputs
from ._session import SESSION

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel
    from ._predict_outputs import PredictedRegion

log = logging.getLogger(__name__)

FROM_FILE = "From file..."
LABELS_REFRESH_S = 0.1  # the prediction layer shows new regions at most 10 times a second


class _PredictJob:
    """One prediction run; ``run`` is the worker's generator."""

    def __init__(self, model: SegmentationModel, image, options: dict, shown: dict) -> None:
        self.model, self.image, self.options = model, image, options
        self.shown = shown  # with_outputs' flags: probabilities, uncertainty
        self.inner = None
        self.cancelled = False
        self.windows_done = self.windows_total = 0

    @property
    def complete(self) -> bool:
        return self.windows_total > 0 and self.windows_done == self.windows_total

    def run(self):
        """Yields ``_predict_outputs.PredictedRegion``; returns "done", "cancelled" or a
        ``_layers.WorkerFailed``."""
        try:
            self.inner = self.model.iter_predict(self.image, **self.options)
            for region in self.inner:
                yield _predict_outputs.with_outputs(region, **self.shown)
                if self.cancelled:
                    return "cancelled"
            return "done"
        except Exception as e:  # noqa: BLE001 - shown to the user by the GUI thread
            log.exception("Prediction failed")
            return _layers.WorkerFailed(e)
        finally:
            self.close()

    def close(self) -> None:
        """End the sliding window (idempotent; call only while the worker is not running it)."""
        if self.inner is not None:
            self.inner.close()


class PredictWidget(QWidget):
    """Segment an image layer with a model trained in this session or loaded from a file.

    Public for scripts and tests: :meth:`start_prediction`, :meth:`cancel`, :meth:`set_model`,
    :meth:`load_model_from`; ``worker`` (the running worker or None), ``layer`` (the last
    prediction layer), ``probabilities_layer`` and ``uncertainty_layer`` (those of the last run).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = _layers.unwrap(napari_viewer)
        self.worker = None
        self.layer = None
        self._own_models: dict[str, SegmentationModel] = {}
        self._job: _PredictJob | None = None
        self._writer = None
        self._outputs: _predict_outputs.OutputLayers | None = None
        self._progress_bar = None
        self._image_name = ""
        self._model_name = ""
        self._build_ui()
        SESSION.changed.connect(self._on_session_changed)
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            event.connect(self._refresh_images)
        for layer in layers:
            layer.events.name.connect(self._refresh_images)
        self._refresh_models()
        self._refresh_images()

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.model_combo, self.image_combo = QComboBox(), QComboBox()
        self.overlap_spin = QDoubleSpinBox(minimum=0.0, maximum=0.9, singleStep=0.05, decimals=2,
                                           value=0.5)
        self.tta_check = QCheckBox("Test-time augmentation (mirroring, 4x slower)")
        self.probabilities_check = QCheckBox("Class probabilities layer")
        self.uncertainty_check = QCheckBox("Uncertainty layer")
        self.uncertainty_check.setToolTip("Where the model is least sure: paint your next strokes "
                                          "there.")
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=4)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        for label, w in (("Model", self.model_combo), ("Image", self.image_combo),
                         ("Overlap", self.overlap_spin), ("", self.tta_check),
                         ("", self.probabilities_check), ("", self.uncertainty_check),
                         ("Batch size", self.batch_spin),
                         ("Device", self.device_combo)):
            form.addRow(label, w)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.predict_button, self.cancel_button = QPushButton("Predict"), QPushButton("Cancel")
        row.addWidget(self.predict_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.status = QLabel("Train a model in the Train widget, or load one from a file.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch()
        self.model_combo.activated.connect(self._on_model_activated)
        self.predict_button.clicked.connect(self.start_prediction)
        self.cancel_button.clicked.connect(self.cancel)
        self._update_buttons()

    @property
    def probabilities_layer(self):
        return self._outputs.layers.get("probabilities") if self._outputs else None

    @property
    def uncertainty_layer(self):
        return self._outputs.layers.get("uncertainty") if self._outputs else None

    # --- models and images ------------------------------------------------------------------------

    def _on_session_changed(self, name: str) -> None:
        try:
            self._refresh_models(select=name)
        except RuntimeError:  # this widget's window was closed: stop listening
            SESSION.changed.disconnect(self._on_session_changed)

    def _refresh_models(self, select: str | None = None) -> None:
        names = list(dict.fromkeys(SESSION.names() + list(self._own_models)))
        _layers.fill_combo(self.model_combo, names + [FROM_FILE])
        if select in names:
            self.model_combo.setCurrentText(select)
        elif self.model_combo.currentText() == FROM_FILE and names:
            self.model_combo.setCurrentText(names[-1])
        self._model_name = self.model_combo.currentText()
        self._update_buttons()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) != FROM_FILE:
            self._model_name = self.model_combo.itemText(index)
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "",
                                              "napari-seg3d model (*.pt);;All files (*)")
        if not path or self.load_model_from(path) is None:
            self.model_combo.setCurrentText(self._model_name)

    def load_model_from(self, path) -> SegmentationModel | None:
        """Load a model file into the session (under its file name) and select it."""
        try:
            model = load_model(path)
        except ModelFileError as e:
            show_error(str(e))
            return None
        SESSION.put(Path(path).name, model)
        self._refresh_models(select=Path(path).name)
        return model

    def set_model(self, model: SegmentationModel, name: str = "model (script)") -> None:
        """Use ``model`` (kept by this widget only, not added to the session)."""
        self._own_models[name] = model
        self._refresh_models(select=name)

    def current_model(self) -> SegmentationModel | None:
        """The model chosen in the combo box, or None."""
        name = self.model_combo.currentText()
        return self._own_models[name] if name in self._own_models else SESSION.get(name)

    def _refresh_images(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_images)
        names = [layer.name for layer in _layers.image_layers(self.viewer)]
        _layers.fill_combo(self.image_combo, names)
        self._update_buttons()

    def image_layer(self):
        layer = _layers.find_layer(self.viewer, self.image_combo.currentText())
        return layer if _layers.is_volume_image(layer) else None

    # --- prediction -------------------------------------------------------------------------------

    def start_prediction(self) -> bool:
        """Predict the selected image with the selected model; returns whether it started."""
        if self.worker is not None:
            show_info("A prediction is already running.")
            return False
        model, image = self.current_model(), self.image_layer()
        problem = _problem(model, image)
        if problem is None:
            try:
                device = str(resolve_device(self.device_combo.currentText()))
            except ValueError as e:
                problem = str(e)
        if problem is not None:
            show_error(problem)
            return False
        _warn_voxel_size(model, image)
        self._image_name = image.name
        self.layer = _layers.output_labels_layer(
            self.viewer, f"{image.name} prediction", image, model.label_lut().dtype, "prediction",
            reuse_names=(f"{image.name} prediction (partial)",))
        self.layer.metadata["model"] = self.model_combo.currentText()
        self._writer = _layers.RegionWriter(self.layer, interval=LABELS_REFRESH_S)
        self._outputs = _predict_outputs.OutputLayers(self.viewer, image.name)
        shown = {"probabilities": self.probabilities_check.isChecked(),
                 "uncertainty": self.uncertainty_check.isChecked()}
        options = {"overlap": self.overlap_spin.value(), "tta": self.tta_check.isChecked(),
                   "batch_size": self.batch_spin.value(), "device": device,
                   "probabilities": any(shown.values())}
        self._job = _PredictJob(model, _layers.layer_array(image), options, shown)
        self._progress_bar = progress(total=0, desc="Predicting")
        worker = thread_worker(self._job.run, start_thread=False)()
        worker.yielded.connect(self._on_region)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText(f"Predicting '{image.name}'...")
        self._update_buttons()
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop at the next region; what is done stays in the layer, marked partial."""
        if self.worker is not None and self._job is not None:
            self._job.cancelled = True
            self.worker.quit()
            self.status.setText("Cancelling...")

    def _on_region(self, region: PredictedRegion) -> None:
        job = self._job
        if job is None or self._writer is None or self._outputs is None:
            return
        job.windows_done, job.windows_total = region.windows_done, region.windows_total
        self._writer.write(region.slices, region.labels)
        self._outputs.write(region)
        self.status.setText(f"Predicting '{self._image_name}': "
                            f"{region.windows_done}/{region.windows_total} windows")
        bar = self._progress_bar
        if bar is not None:  # napari's progress bar runs processEvents: touch it last
            if bar.total != region.windows_total:
                bar.total = region.windows_total
            bar.update(region.windows_done - bar.n)

    def _on_result(self, result) -> None:
        if isinstance(result, _layers.WorkerFailed):
            message = _layers.error_message(result.error, "Prediction")
            show_error(message)
            self.status.setText(message)

    def _on_error(self, error: BaseException) -> None:
        show_error(_layers.error_message(error, "Prediction"))

    def _on_finished(self) -> None:
        # napari's progress bar runs processEvents: change state first, touch the bar last.
        job, bar = self._job, self._progress_bar
        self.worker, self._job, self._progress_bar = None, None, None
        self._update_buttons()
        if self._writer is not None:
            self._writer.close()
        if job is not None:
            job.close()  # after quit() the worker leaves the generator open
            if self._outputs is not None:
                self._outputs.close(job.complete)
            self._report(job)
        if bar is not None:
            bar.close()

    def _report(self, job: _PredictJob) -> None:
        layer = self.layer
        if layer is None:
            return
        if job.complete:
            layer.metadata["partial"] = False
            self.status.setText(f"Done: '{layer.name}' ({job.windows_total} windows).")
            return
        layer.metadata["partial"] = True
        if not layer.name.endswith(" (partial)"):
            layer.name = f"{layer.name} (partial)"
        if job.cancelled:
            show_info(f"Prediction cancelled: '{layer.name}' holds only the part done so far.")
        self.status.setText(f"'{layer.name}': {job.windows_done}/{job.windows_total} windows done.")

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.predict_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)


def _problem(model, image) -> str | None:
    """Why a prediction cannot start, in a sentence, or None."""
    if model is None:
        return ("There is no model: train one in the Train widget, or choose 'From file...' to "
                "load a model file.")
    if image is None:
        return "There is no 3D image layer: open a volume (Z, Y, X) or (C, Z, Y, X) first."
    channels = _layers.channels_of(image)
    if channels != model.in_channels:
        return (f"The model was trained on {model.in_channels}-channel images but '{image.name}' "
                f"has {channels} channel(s); choose another image or model.")
    return None


def _warn_voxel_size(model, image) -> None:
    if model.voxel_size is None:
        return
    ratio = np.asarray(_layers.voxel_size(image)) / np.asarray(model.voxel_size)
    if np.any(np.abs(np.log(ratio)) > np.log(1.25)):
        show_warning(f"The model was trained on voxels of {tuple(model.voxel_size)} but "
                     f"'{image.name}' has {_layers.voxel_size(image)}: results may be worse.")
