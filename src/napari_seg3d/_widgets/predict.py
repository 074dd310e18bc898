"""The Predict dock widget: apply a model to an image layer, streaming the result region by
region into a ``<image> prediction`` Labels layer (and optionally class probabilities and an
uncertainty map into Image layers) while the sliding window advances in a background thread.

A prediction too large for memory (an image read from disk, or layers larger than a share of the
memory) is computed block by block and written into zarr stores on disk by the worker; its layers
show those stores while they are written (see :mod:`._large_prediction`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import ModelFileError, Seg3DError, load_model, resolve_device
from . import _instances, _layer_files, _layers, _predict_outputs
from . import _large_prediction as _large
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

    def __init__(self, model: SegmentationModel, image, options: dict, shown: dict,
                 stores: _large.DiskStores | None = None) -> None:
        self.model, self.image, self.options = model, image, options
        self.shown = shown  # with_outputs' flags: probabilities, uncertainty
        self.stores = stores  # where a prediction too large for memory is written, or None
        self.inner = None
        self.cancelled = False
        self.error: str | None = None  # the sentence shown when the run failed
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
                region = _predict_outputs.with_outputs(region, **self.shown)
                if self.stores is not None:  # written here; the GUI thread only redraws
                    self.stores.write(region)
                    region = replace(region, probabilities=None, uncertainty=None)
                yield region
                if self.cancelled:
                    return "cancelled"
            return "done"
        except Exception as e:  # any failure: shown to the user by the GUI thread
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
    prediction layer), ``probabilities_layer`` and ``uncertainty_layer`` (those of the last run),
    ``large_folder_edit`` (the folder of predictions on disk; empty: the default).
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
        self._stores: _large.DiskStores | None = None
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
        self.planes_combo = _layers.planes_combo()
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=4)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        folder_row = self._build_folder_row()
        for label, w in (("Model", self.model_combo), ("Image", self.image_combo),
                         ("Overlap", self.overlap_spin), ("", self.tta_check),
                         ("", self.probabilities_check), ("", self.uncertainty_check),
                         ("2.5D planes", self.planes_combo), ("Batch size", self.batch_spin),
                         ("Device", self.device_combo)):
            form.addRow(label, w)
        form.addRow("Large predictions folder", folder_row)
        self.instances = _instances.InstancesOption(form, self.probabilities_check)  # issue 15
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

    def _build_folder_row(self) -> QHBoxLayout:
        self.large_folder_edit = QLineEdit()
        self.large_folder_edit.setPlaceholderText("beside the image file, else the cache folder")
        self.large_folder_edit.setToolTip(
            "Where a prediction too large for memory is written (image 'nuclei': "
            "nuclei_labels.zarr) while its layer shows it: an image read from disk, or layers "
            "larger than "
            f"{_large.MEMORY_FRACTION:.0%} of the memory. Empty: the image file's folder, else "
            f"{_large.cache_folder()}.")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse_large_folder)
        row = QHBoxLayout()
        row.addWidget(self.large_folder_edit)
        row.addWidget(browse)
        return row

    def _browse_large_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Large predictions folder",
                                                  self.large_folder_edit.text())
        if folder:
            self.large_folder_edit.setText(folder)

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
            self._update_buttons()
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
            self.status.setText(problem)  # stays until the next run
            return False
        _warn_voxel_size(model, image)
        shown = {"probabilities": self.probabilities_check.isChecked(),
                 "uncertainty": self.uncertainty_check.isChecked()}
        options = {"overlap": self.overlap_spin.value(), "tta": self.tta_check.isChecked(),
                   "batch_size": self.batch_spin.value(), "device": device,
                   "probabilities": any(shown.values())}
        if model.dims == 2:
            options["planes"] = _layers.planes_choice(self.planes_combo)
        data = _layers.layer_array(image)
        nbytes = _large.output_bytes(_layers.spatial_shape(image), model.label_lut().dtype,
                                     _classes(model), **shown)
        reason = _large.disk_reason(data, nbytes)
        stores = None
        if reason is not None:
            stores = self._open_stores(model, image)
            if stores is None:
                return False
            options["block_shape"] = _large.BLOCK_SHAPE
        self._image_name, self._stores = image.name, stores
        name, partial_name = f"{image.name} prediction", f"{image.name} prediction (partial)"
        if stores is None:
            self.layer = _layers.output_labels_layer(
                self.viewer, name, image, model.label_lut().dtype, "prediction",
                reuse_names=(partial_name,))
            self.layer.metadata.pop("path", None)
            self._writer = _layers.RegionWriter(self.layer, interval=LABELS_REFRESH_S)
        else:
            self.layer = _predict_outputs.disk_labels_layer(
                self.viewer, name, image, stores.views()["labels"], reuse_names=(partial_name,))
            self.layer.metadata["path"] = str(stores.where["labels"])
            self._writer = _layers.RegionWriter(self.layer, interval=_large.REFRESH_S)
            show_info(f"Predicting '{image.name}' block by block on disk because {reason}: the "
                      f"result is written to {stores.path('labels')} and shown while it is "
                      "written.")
        self.layer.metadata["model"] = self.model_combo.currentText()
        self._outputs = _predict_outputs.OutputLayers(self.viewer, image.name)
        self._job = _PredictJob(model, data, options, shown, stores)
        self._progress_bar = progress(total=0, desc="Predicting")
        worker = thread_worker(self._job.run, start_thread=False)()
        worker.yielded.connect(self._on_region)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText(f"Predicting '{image.name}'" + (" on disk..." if stores else "..."))
        self.status.setToolTip("" if stores is None else str(stores.path("labels")))
        self._update_buttons()
        worker.start()
        return True

    def _open_stores(self, model: SegmentationModel, image) -> _large.DiskStores | None:
        """The stores on disk of a prediction of ``image``, or None (the user was told why)."""
        source = _large.source_path(image)
        folder = _large.choose_folder(self.large_folder_edit.text(), source)
        try:
            opened = _layer_files.opened_files(self.viewer, ours=False).values()
            return _large.DiskStores(folder, _large.store_base(folder, image.name, source, opened),
                                     _layers.spatial_shape(image), model.label_lut().dtype,
                                     _layers.voxel_size(image))
        except (OSError, Seg3DError) as e:
            reason = getattr(e, "strerror", None) or e
            message = (f"Cannot write the prediction of '{image.name}' into {folder} ({reason}). "
                       "Choose another Large predictions folder.")
            show_error(message)
            self.status.setText(message)
            return None

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
        if self._stores is not None:  # written by the worker: show it
            self._writer.mark(region.slices)
            self._outputs.mark(self._stores.views(), region)
        else:
            self._writer.write(region.slices, region.labels)
            self._outputs.write(region)
        where = " on disk" if self._stores is not None else ""
        self.status.setText(f"Predicting '{self._image_name}'{where}: "
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
            if self._job is not None:  # the status line keeps the reason (see _report)
                self._job.error = message

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
            if self._stores is not None:
                self._publish(job)
            self._report(job)
            self.instances.after(self.viewer, job.complete, self._image_name, self.layer,
                                 self.probabilities_layer)  # <image> instances (issue 15)
        if bar is not None:
            bar.close()

    def _publish(self, job: _PredictJob) -> None:
        """Move the stores of a prediction on disk onto their final names (complete) or their
        partial names, and show them there. The worker has stopped."""
        stores, self._stores = self._stores, None
        for problem in stores.publish(job.complete):
            show_warning(problem)
        views = stores.views()
        if self.layer is not None:  # it shows the store that moved: show it where it is now
            self.layer.data = views["labels"]
            self.layer.metadata["path"] = str(stores.where["labels"])
        if self._outputs is not None:
            self._outputs.repoint(views, stores.where)

    def _report(self, job: _PredictJob) -> None:
        layer = self.layer
        if layer is None:
            return
        stores = job.stores
        if stores is not None:
            self.status.setToolTip(str(stores.where["labels"]))
        if job.complete:
            layer.metadata["partial"] = False
            saved = "" if stores is None else f", saved in {stores.where['labels']}"
            self.status.setText(f"Done: '{layer.name}' ({job.windows_total} windows){saved}.")
            return
        layer.metadata["partial"] = True
        if not layer.name.endswith(" (partial)"):
            layer.name = f"{layer.name} (partial)"
        kept = "" if stores is None else (
            f", kept in {stores.where['labels']}; nothing was written to "
            f"{stores.path('labels')}")
        if job.cancelled:
            show_info(f"Prediction cancelled: '{layer.name}' holds only the part done so far"
                      f"{kept}.")
        elif stores is not None:
            show_info(f"'{layer.name}' holds only the part done before the error{kept}.")
        if job.error is None:
            self.status.setText(f"'{layer.name}': {job.windows_done}/{job.windows_total} "
                                "windows done.")

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.predict_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        model = self.current_model()
        self.planes_combo.setEnabled(model is not None and model.dims == 2)
        self.instances.set_model(model)  # its classes in the Instances combo (issue 15)


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


def _classes(model) -> int:
    """The number of probability channels of a model (for the size of its layers)."""
    return int(model.model_config.kwargs.get("out_channels", len(model.class_values)))


def _warn_voxel_size(model, image) -> None:
    if model.voxel_size is None:
        return
    ratio = np.asarray(_layers.voxel_size(image)) / np.asarray(model.voxel_size)
    if np.any(np.abs(np.log(ratio)) > np.log(1.25)):
        show_warning(f"The model was trained on voxels of {tuple(model.voxel_size)} but "
                     f"'{image.name}' has {_layers.voxel_size(image)}: results may be worse.")
