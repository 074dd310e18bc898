"""The Predict dock widget: apply a model to an image layer, streaming the result region by
region into a ``<image> prediction`` Labels layer (and optionally class probabilities and an
uncertainty map into Image layers) while the sliding window advances in a background thread.

A prediction too large for memory (an image read from disk, or layers larger than a share of the
memory) is computed block by block and written into zarr stores on disk by the worker; its layers
show those stores while they are written (see
:mod:`napari_seg3d.engine.prediction.disk_stores`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QWidget

from ..engine import ModelFileError, Seg3DError, load_model
from ..engine.prediction import disk_stores
from ..engine.prediction.jobs import Finishing, PredictJob
from . import _layer_files, _layers, _predict_outputs
from ._predict_form import FROM_FILE, PredictForm, classes, problem
from ._session import SESSION

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel
    from ..engine.prediction.jobs import PredictedRegion

__all__ = ["FROM_FILE", "PredictWidget"]

log = logging.getLogger(__name__)

LABELS_REFRESH_S = 0.1  # the prediction layer shows new regions at most 10 times a second
FIRST_YX = 256  # the blocks nearest to this many voxels around the view's centre come first


def _worker_body(job: PredictJob):
    """The worker's generator: the job's regions; returns "done", "cancelled" or a
    ``_layers.WorkerFailed`` (superqt drops some errors of a generator, see there)."""
    try:
        return (yield from job.run())
    except Exception as e:  # any failure: shown to the user by the GUI thread
        log.exception("Prediction failed")
        return _layers.WorkerFailed(e)


class PredictWidget(PredictForm):
    """Segment an image layer with a model trained in this session or loaded from a file.

    Public for scripts and tests: :meth:`start_prediction`, :meth:`cancel`, :meth:`set_model`,
    :meth:`load_model_from`; ``worker`` (the running worker or None), ``layer`` (the last
    prediction layer), ``probabilities_layer`` and ``uncertainty_layer`` (those of the last run),
    ``large_folder_edit`` (the folder of predictions on disk; empty: the default), ``cleaner``
    (the worker deleting the older stores a prediction on disk replaced, or None).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        self.layer = None
        self._job: PredictJob | None = None
        self._finishing = False  # a complete run's store is being finished (no cancel)
        self._writer = None
        self._outputs: _predict_outputs.OutputLayers | None = None
        self._stores: disk_stores.DiskStores | None = None
        self._progress_bar = None
        self._image_name = ""
        self.cleaner = None  # the worker deleting older stores a run replaced, or None
        super().__init__(napari_viewer, parent)

    @property
    def probabilities_layer(self):
        return self._outputs.layers.get("probabilities") if self._outputs else None

    @property
    def uncertainty_layer(self):
        return self._outputs.layers.get("uncertainty") if self._outputs else None

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

    # --- prediction -------------------------------------------------------------------------------

    def start_prediction(self) -> bool:
        """Predict the selected image with the selected model; returns whether it started."""
        if self.worker is not None:
            show_info("A prediction is already running.")
            return False
        model, why, source = self.current_model(), None, None
        try:
            source = self.image_input()  # the Image and the channels ticked with it
        except Seg3DError as e:
            why = str(e)
        why = why or problem(model, source, self.channel_picker.count())
        config = None
        if why is None:
            try:
                config = self.prediction_config(model)
            except ValueError as e:
                why = str(e)
        if why is not None:
            show_error(why)
            self.status.setText(why)  # stays until the next run
            return False
        image = source.layer  # its grid and name are the prediction's
        _warn_voxel_size(model, image)
        data = source.data
        nbytes = disk_stores.output_bytes(_layers.spatial_shape(image), model.label_lut().dtype,
                                          classes(model), probabilities=config.probabilities,
                                          uncertainty=config.uncertainty)
        reason = disk_stores.disk_reason(source.probe, nbytes)
        stores = None
        if reason is not None:
            stores = self._open_stores(model, image, data)
            if stores is None:
                return False
            config = replace(config, block_shape=disk_stores.BLOCK_SHAPE)
        self._image_name, self._stores = image.name, stores
        self._show_layer(model, image, stores, reason)
        self._outputs = _predict_outputs.OutputLayers(self.viewer, image.name)
        first = _layers.view_region(image, self.viewer, 1, FIRST_YX)  # the slice on screen first
        self._start(PredictJob(model, data, config, stores, first_region=first), image.name)
        return True

    def _show_layer(self, model: SegmentationModel, image, stores, reason: str | None) -> None:
        """The prediction layer: in memory, or showing the labels store on disk."""
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
            self._writer = _layers.RegionWriter(self.layer,
                                                interval=_predict_outputs.DISK_REFRESH_S)
            show_info(f"Predicting '{image.name}' block by block on disk because {reason}: the "
                      f"result is written to {stores.path('labels')} and shown while it is "
                      "written.")
        self.layer.metadata["model"] = self.model_combo.currentText()
        _layers.show_classes(self.layer, model.class_values, model.class_names)

    def _start(self, job: PredictJob, image_name: str) -> None:
        self._job, self._finishing = job, False
        self._progress_bar = progress(total=0, desc="Predicting")
        worker = thread_worker(_worker_body, start_thread=False)(job)
        worker.yielded.connect(self._on_region)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        stores = job.stores
        self.status.setText(f"Predicting '{image_name}'" + (" on disk..." if stores else "..."))
        self.status.setToolTip("" if stores is None else str(stores.path("labels")))
        self._update_buttons()
        worker.start()

    def _open_stores(self, model: SegmentationModel, image,
                     data) -> disk_stores.DiskStores | None:
        """The stores on disk of a prediction of ``image`` (its pixels, with the channels ticked
        beside it: ``data``), or None (the user was told why)."""
        source = _predict_outputs.source_path(image)
        folder = disk_stores.choose_folder(self.large_folder_edit.text(), source)
        try:
            opened = _layer_files.opened_files(self.viewer, ours=False).values()
            base = disk_stores.store_base(folder, image.name, source, opened)
            return disk_stores.DiskStores(
                folder, base, _layers.spatial_shape(image), model.label_lut().dtype,
                _layers.voxel_size(image), fmt=self.disk_format_combo.currentText(),
                image=data,
                classes=dict(zip(model.class_values, model.class_names)))
        except (OSError, Seg3DError) as e:
            reason = getattr(e, "strerror", None) or e
            message = (f"Cannot write the prediction of '{image.name}' into {folder} ({reason}). "
                       "Choose another Large predictions folder.")
            show_error(message)
            self.status.setText(message)
            return None

    def cancel(self) -> None:
        """Stop at the next region; what is done stays in the layer, marked partial. The worker
        finishes the stores on disk before it stops (not ``quit()``, which would leave that to
        the GUI thread)."""
        if self.worker is None or self._job is None or self._job.cancelled:
            return
        if self._finishing:  # every window is predicted: the store is being completed
            show_info("The prediction is complete; its image and pyramids are being written "
                      "and cannot be cancelled.")
            return
        self._job.cancelled = True
        self.status.setText("Cancelling...")

    def _on_region(self, region: PredictedRegion | Finishing) -> None:
        job = self._job
        if job is None or self._writer is None or self._outputs is None:
            return
        if isinstance(region, Finishing):
            self._on_finishing(region)
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

    def _on_finishing(self, finishing: Finishing) -> None:
        """The worker writes the image and pyramids of the OME-Zarr store: say so."""
        self._finishing = not finishing.partial
        text = ("Saving the partial prediction..." if finishing.partial
                else "Writing the image and its pyramids...")
        self.status.setText(f"'{self._image_name}': {text[0].lower()}{text[1:]}")
        self.status.setToolTip(str(finishing.path))
        bar = self._progress_bar
        if bar is not None:  # processEvents: last
            bar.set_description(text)

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

    def _publish(self, job: PredictJob) -> None:
        """Move the stores of a prediction on disk onto their final names (complete) or their
        partial names, and show them there. The worker has stopped."""
        stores, self._stores = self._stores, None
        for sentence in stores.publish(job.complete):
            show_warning(sentence)
        if stores.stale:
            self._delete_later(stores.stale)
        views = stores.views()
        if self.layer is not None:  # it shows the store that moved: show it where it is now
            self.layer.data = views["labels"]
            self.layer.metadata["path"] = str(stores.where["labels"])
        if self._outputs is not None:
            self._outputs.repoint(views, stores.where)

    def _delete_later(self, paths) -> None:
        """Delete the older stores ``paths`` (under hidden names) in a worker thread."""
        worker = thread_worker(disk_stores.delete_stores, start_thread=False)(list(paths))
        worker.finished.connect(
            lambda: setattr(self, "cleaner", None) if self.cleaner is worker else None)
        self.cleaner = worker
        worker.start()

    def _report(self, job: PredictJob) -> None:
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
        kept = "" if stores is None or not Path(stores.where["labels"]).exists() else (
            f", kept in {stores.where['labels']}; nothing was written to "
            f"{stores.path('labels')}")  # (a writer that failed removed its store)
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
        if not busy:
            self.follow_model_channels(model)  # the layers a multichannel model was trained on


def _warn_voxel_size(model, image) -> None:
    """A notification when the image's voxels differ from the model's by more than 25%."""
    if model.voxel_size is None:
        return
    ratio = np.asarray(_layers.voxel_size(image)) / np.asarray(model.voxel_size)
    if np.any(np.abs(np.log(ratio)) > np.log(1.25)):
        show_warning(f"The model was trained on voxels of {tuple(model.voxel_size)} but "
                     f"'{image.name}' has {_layers.voxel_size(image)}: results may be worse.")
