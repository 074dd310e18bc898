"""The Train dock widget: pick an image, paint classes in an annotation layer, train a 3D U-Net
in a background thread with a live plot and preview, stop, continue, save and load the model.

The training generator (:meth:`Trainer.run`) runs in a napari ``thread_worker``; its progress
records come back as the worker's ``yielded`` signal and new strokes go in through
``worker.send``. Nothing here ever writes into the annotation layer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from ..engine import Seg3DError, Trainer
from ..engine.autosave import PaintedVoxels
from ..engine.plan import window_for
from ..engine.threads import set_default_threads
from . import _layers
from ._autosave import Autosaver
from ._autosave_offer import SessionOffer
from ._export import add_export_button
from ._forest_job import forest_job_for, warm_up_forest
from ._labels_warning import labels_confirmed
from ._report_dialog import ReportActions, ReportDialog
from ._session import SESSION
from ._train_display import TrainingDisplay
from ._train_form import TrainForm
from ._train_job import TrainJob, check_layers, check_strokes, new_job
from ._train_models import ModelFiles

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel, TrainProgress, TrainResult

log = logging.getLogger(__name__)

GUI_INIT_VOXELS = 2**25  # larger volumes build the Trainer (np.unique, statistics) in the worker
SEND_INTERVAL_S = 1.0  # new strokes go to the trainer at most this often
RENDER_INTERVAL_MS = 200  # status, plot and progress bar redraw at most 5 times a second
PREVIEW_YX = 256  # a live preview covers at most this many voxels in y and x
# new strokes get their own live preview this long after they went to the trainer (the next
# step already learns from them), instead of waiting for the next periodic one
STROKE_PREVIEW_MS = 1000
FOREST_POLL_MS = 30  # how often the instant random-forest preview's new records are looked for


class TrainWidget(ReportActions, ModelFiles, TrainForm):
    """Train a segmentation network on sparse annotations of the selected image.

    Public for scripts, tests and the demo: :meth:`new_annotation_layer`,
    :meth:`start_training`, :meth:`stop_training`, :meth:`continue_training`,
    :meth:`save_model_to`, :meth:`load_model_from`; ``worker`` (the running worker or None),
    ``trainer``, ``model`` (the best model), ``last_model`` (with its optimizer state).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(_layers.unwrap(napari_viewer), parent)
        self.worker = None
        self.model: SegmentationModel | None = None
        self.last_model: SegmentationModel | None = None
        self.result: TrainResult | None = None
        self.preview_interval_s = 2.5
        self._job: TrainJob | None = None
        self._display = TrainingDisplay(self.viewer, self.status, self.plot,
                                        self.class_table.classes)
        self._image_name = ""
        self._report_worker = None
        self.report_dialog: ReportDialog | None = None
        self.autosave = Autosaver(self)  # strokes and kept models survive a crash
        self.session_offer = SessionOffer(self)  # and come back on the next start
        self.layout().insertWidget(0, self.session_offer)
        self._connect_ui()
        self.export_button = add_export_button(self, lambda: self.model, self.image_layer,
                                               self.save_button)
        self._update_buttons()
        self._timers()
        warm_up_forest()
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            event.connect(self._refresh_layers)
        for layer in layers:
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()
        self.session_offer.look()  # a session a crash left behind

    # --- wiring -----------------------------------------------------------------------------------

    def _connect_ui(self) -> None:
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.annotation_combo.currentTextChanged.connect(self._on_annotation_layer_changed)
        self.new_layer_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.continue_button.clicked.connect(self.continue_training)
        self.save_button.clicked.connect(self._save_dialog)
        self.report_button.clicked.connect(self.show_report)
        self.load_button.clicked.connect(self._load_dialog)

    def _timers(self) -> None:
        self._render_timer = QTimer(self, interval=RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render)
        self._preview_timer = QTimer(self)
        self._preview_timer.timeout.connect(self.request_preview)
        self._send_timer = QTimer(self, singleShot=True)
        self._send_timer.timeout.connect(self._send_labels)
        self._stroke_preview_timer = QTimer(self, singleShot=True, interval=STROKE_PREVIEW_MS)
        self._stroke_preview_timer.timeout.connect(self.request_preview)
        self._table_timer = QTimer(self, singleShot=True, interval=300)
        self._table_timer.timeout.connect(self._refresh_class_table)
        self._forest_timer = QTimer(self, interval=FOREST_POLL_MS)
        self._forest_timer.timeout.connect(self._show_forest)

    # --- layers -----------------------------------------------------------------------------------

    def new_annotation_layer(self):
        """Add ``<image> annotations`` over the selected image, ready to paint label 1."""
        image = self.image_layer()
        if image is None:
            show_error("There is no 3D image layer: open a volume (Z, Y, X) or (C, Z, Y, X) first.")
            return None
        layer = _layers.make_annotation_layer(self.viewer, image)
        self.annotation_combo.setCurrentText(layer.name)
        return layer

    def _refresh_class_table(self) -> None:
        """Rows for the painted values: counted for layers up to GUI_INIT_VOXELS, for larger
        ones counted once and then followed through the labels painted."""
        self.class_table.refresh(self.annotation_layer(), GUI_INIT_VOXELS)

    # --- training ---------------------------------------------------------------------------------

    def start_training(self) -> bool:
        """Train a new network (or fine-tune the current model when that box is checked)."""
        return self._start(resume=False)

    def continue_training(self) -> bool:
        """Resume exactly from the last state for as many more iterations as the box says."""
        return self._start(resume=True)

    def stop_training(self) -> None:
        """Stop now (an unfinished step is dropped); the best model so far is kept."""
        if self._job is not None:
            self._job.request_stop()
            self.status.setText("Stopping...")
            self.stop_button.setEnabled(False)

    @property
    def trainer(self) -> Trainer | None:
        return None if self._job is None else self._job.trainer

    @property
    def _history(self) -> tuple[list, list, list, list]:
        return self._display.history

    def _start(self, resume: bool) -> bool:
        if self.worker is not None:
            show_info("Training is already running.")
            return False
        try:
            job = self._make_job(resume)
            labels = _layers.layer_array(job.annotation_layer)
            if job.new_model and not labels_confirmed(self, labels):
                return False
            # one read of the layer for the checks and the autosave (0.2 s at 5x10^8 voxels)
            painted = PaintedVoxels.of(labels) if isinstance(labels, np.ndarray) and (
                job.forest is not None or self.autosave.enabled) else None
            if job.forest is not None:  # the Trainer's errors, before the forest starts
                values = check_strokes(labels, painted)
            elif labels.size <= GUI_INIT_VOXELS:
                job.build()  # errors a user can fix show at once
        except Exception as e:  # noqa: BLE001 - a GUI action: tell the user, keep the widget ready
            if not isinstance(e, (Seg3DError, ValueError, OSError)):
                log.exception("Could not start training")
            message = _layers.error_message(e, "Training")
            show_error(message)
            self.status.setText(message)  # stays until the next run
            return False
        if job.forest is not None:  # the slice on screen first: before anything else is slow
            job.forest.start()
            self._display.prepare_preview(self.image_layer(), max(values))  # meanwhile
            self._forest_timer.start()
        self._launch(job, painted)
        return True

    def _make_job(self, resume: bool) -> TrainJob:
        source, ann = self.image_input(), self.annotation_layer()  # the Image + More channels
        image_layer = None if source is None else source.layer
        check_layers(image_layer, ann)
        set_default_threads(self.threads_spin.value() or None)
        settings, init = self._run_settings(resume, self.model, self.last_model)
        job = new_job(source, ann, settings, init, resume=resume, names=self.class_table,
                      tensorboard=self.tensorboard_edit.text().strip() or None)
        if self.quick_check.isChecked() and not resume:
            depth = window_for(settings.get("patch_size") or init.patch_size,
                               init.dims if init is not None else settings["dims"],
                               _layers.spatial_shape(image_layer))[0]
            job.forest = forest_job_for(self.viewer, image_layer, ann, depth, PREVIEW_YX,
                                        data=source.data,
                                        seed=settings["seed"], device=settings["device"],
                                        threads=self.threads_spin.value() or None)
        return job

    def _launch(self, job: TrainJob, painted: PaintedVoxels | None = None) -> None:
        self._job, self._image_name = job, job.image_name
        job.on_kept, job.autosave_session = self.autosave.start_run(painted)
        self._display.start(job, self.last_model)
        worker = thread_worker(job.run, start_thread=False)()
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText("Starting training...")
        self._update_buttons()
        self._render_timer.start()
        self._preview_timer.start(int(self.preview_interval_s * 1000))
        worker.start()

    def _on_progress(self, p: TrainProgress) -> None:
        job = self._job
        if job is None:
            return
        if job.latest is None and job.forest is not None:
            job.forest.go_on()  # the network has started: the rest of the preview may follow
        job.latest = p
        self._display.record(p)
        if p.preview is not None:
            self._show_preview(p.preview)

    def _render(self) -> None:
        """Status line, plot and progress bar from the newest progress record."""
        if self._job is not None:
            self._display.render(self._job, self._class_names())

    def _class_names(self) -> tuple[str, ...]:
        job = self._job
        return job.trainer.model.class_names if job is not None and job.trainer is not None else ()

    def _on_result(self, result) -> None:
        if self._job is not None:
            self._job.result_seen = True
        if isinstance(result, _layers.WorkerFailed):
            message = _layers.error_message(result.error, "Training")
            show_error(message)
            self.status.setText(message)
            return
        self.result = result
        self.model, self.last_model = result.best, result.last
        if self._job is not None:
            self.autosave.save_model(self._job.autosave_session, result.best, result.last)
        name = f"{self._image_name} model"
        SESSION.put(name, result.best)
        self.fine_tune_check.setEnabled(True)
        self._display.show_result(result, name)

    def _on_error(self, error: BaseException) -> None:
        show_error(_layers.error_message(error, "Training"))

    def _on_finished(self) -> None:
        # napari's progress bar runs processEvents: change state first, touch the bar last.
        job = self._job
        names = self._class_names()
        if job is not None and not job.result_seen:  # the worker was quit: keep what it learnt
            result = job.finish()
            if result is not None:
                self._on_result(result)
        self.worker, self._job = None, None
        if job is not None and job.forest is not None:  # the network's result is there now
            job.forest.stop()
            self._show_forest(job)
        for timer in (self._render_timer, self._preview_timer, self._send_timer,
                      self._stroke_preview_timer, self._forest_timer):
            timer.stop()
        self._update_buttons()
        self._display.finish(job, names)

    # --- strokes painted while training -----------------------------------------------------------

    def _on_annotations_edited(self, event=None) -> None:
        kind = getattr(event, "type", "")
        if kind != "set_data":  # set_data also comes with every re-slice
            if kind == "paint":
                self.class_table.add_painted(int(event.source.selected_label))
            self._table_timer.start()
            self.autosave.strokes_changed()
        job = self._job
        if job is None or self.worker is None or getattr(event, "source", None) is not \
                job.annotation_layer:
            return
        wait = job.note_edit(certain=kind != "set_data", interval=SEND_INTERVAL_S)
        if wait <= 0:
            self._send_labels()
        elif not self._send_timer.isActive():
            self._send_timer.start(int(wait * 1000) + 1)

    def _send_labels(self) -> None:
        """Send a copy of the annotation layer to the trainer if it changed."""
        job = self._job
        labels = None if job is None else job.labels_to_send()
        if labels is not None:
            self._send(labels=self._known_classes_only(job, labels))
            if self.preview_check.isChecked():  # show soon what the strokes changed
                self._stroke_preview_timer.start()
                self._preview_timer.start()  # the periodic one then follows from there

    def _known_classes_only(self, job: TrainJob, labels: np.ndarray) -> np.ndarray:
        """``labels`` with values the running model has no class for set to 0 (shown once)."""
        labels, new = job.without_unknown_classes(labels)
        if new:
            show_warning(f"Label {', '.join(map(str, new))} is not a class of the model being "
                         "trained; it is ignored until you train a new model.")
        return labels

    def _send(self, labels=None, preview=None) -> None:
        """Hand labels and/or a preview region to the trainer, merged with any not yet taken."""
        job = self._job
        if job is None or self.worker is None:
            return
        self.worker.send(job.next_update(labels, preview))

    # --- live preview -----------------------------------------------------------------------------

    def request_preview(self) -> None:
        """Ask the trainer to predict the region around the displayed slice."""
        if self._job is None or not self.preview_check.isChecked():
            return
        image = _layers.find_layer(self.viewer, self._job.image_name)
        if image is not None:
            trainer = self._job.trainer
            depth = trainer.model.window(trainer.sampler.shape)[0] if trainer else 32
            self._send(preview=_layers.view_region(image, self.viewer, depth, PREVIEW_YX))

    def _show_forest(self, job: TrainJob | None = None) -> None:
        """Show the random-forest records computed since the last look."""
        job = job or self._job
        if job is not None and job.forest is not None:
            self._display.show_forest(_layers.find_layer(self.viewer, job.image_name),
                                      job.forest.take())

    def _show_preview(self, preview) -> None:
        image = _layers.find_layer(self.viewer, self._job.image_name) if self._job else None
        if image is not None:
            self._display.show_preview(image, preview)

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.train_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.continue_button.setEnabled(not busy and self.last_model is not None
                                        and self.last_model.optimizer_state is not None)
        self.save_button.setEnabled(not busy and self.model is not None)
        self.report_button.setEnabled(not busy and self.model is not None
                                      and getattr(self, "_report_worker", None) is None)
        self.load_button.setEnabled(not busy)
        self.new_layer_button.setEnabled(self.image_combo.count() > 0)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name; a normal end: no session left
        self.autosave.close()
        super().closeEvent(event)
