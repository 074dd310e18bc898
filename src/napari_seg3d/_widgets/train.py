"""The Train dock widget: pick an image, paint classes in an annotation layer, train a 3D U-Net
in a background thread with a live plot and preview, stop, continue, save and load the model.

The training generator (:meth:`Trainer.run`) runs in a napari ``thread_worker``; its progress
records come back as the worker's ``yielded`` signal and new strokes go in through
``worker.send``. Nothing here ever writes into the annotation layer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QHBoxLayout, QHeaderView, QLabel, QPushButton, QSpinBox,
                            QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)
from superqt import QCollapsible

from ..engine import (LOSSES, AnnotationError, ModelFileError, Seg3DError, TrainConfig, Trainer,
                      TrainerUpdate, default_model_config, load_model, propose_patch_size,
                      resolve_device, save_model)
from ..engine.losses import is_binary_loss
from ..engine.sampling import class_values_of
from . import _layers
from ._plot import TrainingPlot
from ._session import SESSION

if TYPE_CHECKING:
    import napari

    from ..engine import SegmentationModel, TrainProgress, TrainResult

log = logging.getLogger(__name__)

GUI_INIT_VOXELS = 2**25  # larger volumes build the Trainer (np.unique, statistics) in the worker
SEND_INTERVAL_S = 1.0  # new strokes go to the trainer at most this often
RENDER_INTERVAL_MS = 200  # status, plot and progress bar redraw at most 5 times a second
PREVIEW_YX = 256  # a live preview covers at most this many voxels in y and x
NOTE = "0 = not annotated; background is a class you paint like any other."


class _TrainJob:
    """One training run, shared by the GUI thread and the worker thread.

    ``sent`` is the last :class:`TrainerUpdate` handed to ``worker.send`` and ``consumed`` the
    last one the generator received; while they differ, a new update is merged into the pending
    one (``GeneratorWorker`` keeps a single pending value)."""

    def __init__(self, make_trainer, annotation_layer, image_name: str, labels: np.ndarray,
                 start_iteration: int, iterations: int) -> None:
        self._make_trainer = make_trainer
        self.trainer: Trainer | None = None
        self.annotation_layer = annotation_layer
        self.image_name = image_name
        self.sent_labels = labels
        self.start_iteration, self.iterations = start_iteration, iterations
        self.sent: TrainerUpdate | None = None
        self.consumed: TrainerUpdate | None = None
        self.labels_changed = self.labels_maybe_changed = False
        self.last_send = time.monotonic()
        self.latest: TrainProgress | None = None
        self.stop_requested = False
        self.warned_values: set[int] = set()
        self.gen = None  # the training generator, for finish()
        self.result_seen = False

    def __repr__(self) -> str:  # napari lists running workers by their function
        return f"napari-seg3d training on '{self.image_name}'"

    def build(self) -> None:
        self.trainer = self._make_trainer()

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.trainer is not None:
            self.trainer.request_stop()

    def run(self):
        """The worker's generator: yields TrainProgress, returns TrainResult or WorkerFailed."""
        gen = None
        try:
            if self.trainer is None:
                self.build()
            if self.stop_requested:
                self.trainer.request_stop()
            gen = self.gen = self.trainer.run()
            update = None
            while True:
                try:
                    progress_ = gen.send(update)
                except StopIteration as stop:
                    return stop.value
                update = yield progress_
                if update is not None:
                    self.consumed = update
        except Exception as e:  # noqa: BLE001 - shown to the user by the GUI thread
            log.exception("Training failed")
            return _layers.WorkerFailed(e)
        finally:
            self.gen = None
            if gen is not None:
                gen.close()

    def finish(self):
        """When the worker was quit (napari cancels workers when the window closes) the training
        generator is left between two iterations: end it here, keeping its best model. Call
        only after the worker finished."""
        gen, self.gen = self.gen, None
        if gen is None:
            return None
        self.request_stop()
        try:
            gen.send(None)
        except StopIteration as stop:
            return stop.value
        except Exception as e:  # noqa: BLE001 - shown to the user
            return _layers.WorkerFailed(e)
        finally:
            gen.close()
        return None


class ClassTable(QTableWidget):
    """Label value, editable class name and colour of the values painted, plus the next one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["value", "class name", "colour"])
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setVisible(False)
        self.setMaximumHeight(130)
        self.names: dict[int, str] = {}
        self.itemChanged.connect(self._on_edit)

    def name(self, value: int) -> str:
        return self.names.get(value) or f"class {value}"

    def show_values(self, values, layer) -> None:
        """Rows for ``values`` and the next free value, coloured like ``layer``."""
        values = sorted(set(values))
        rows = values + [max(values, default=0) + 1]
        self.blockSignals(True)
        self.setRowCount(len(rows))
        for r, v in enumerate(rows):
            value = QTableWidgetItem(str(v))
            value.setFlags(Qt.ItemFlag.ItemIsEnabled)
            name = QTableWidgetItem(self.name(v) if v in values else f"{self.name(v)} (next)")
            name.setData(Qt.ItemDataRole.UserRole, v)
            swatch = QTableWidgetItem("")
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
            color = None if layer is None else layer.get_color(v)
            if color is not None:
                swatch.setBackground(QColor.fromRgbF(*(float(c) for c in color[:4])))
            for c, item in enumerate((value, name, swatch)):
                self.setItem(r, c, item)
        self.blockSignals(False)

    def _on_edit(self, item: QTableWidgetItem) -> None:
        value = item.data(Qt.ItemDataRole.UserRole)
        if value is not None:
            self.names[int(value)] = item.text().removesuffix(" (next)").strip()


class TrainWidget(QWidget):
    """Train a segmentation network on sparse annotations of the selected image.

    Public for scripts, tests and the demo: :meth:`new_annotation_layer`,
    :meth:`start_training`, :meth:`stop_training`, :meth:`continue_training`,
    :meth:`save_model_to`, :meth:`load_model_from`; ``worker`` (the running worker or None),
    ``trainer``, ``model`` (the best model), ``last_model`` (with its optimizer state).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = _layers.unwrap(napari_viewer)
        self.worker = None
        self.model: SegmentationModel | None = None
        self.last_model: SegmentationModel | None = None
        self.result: TrainResult | None = None
        self.preview_interval_s = 2.5
        self._job: _TrainJob | None = None
        self._progress_bar = None
        self._preview_writer: _layers.RegionWriter | None = None
        self._preview_region = None
        self._listened = None
        self._table_values: set[int] | None = None
        self._history: tuple[list, list, list, list] = ([], [], [], [])
        self._image_name = ""
        self._rendering = False
        self._build_ui()
        self._timers()
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            event.connect(self._refresh_layers)
        for layer in layers:
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()

    # --- layout -----------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.annotation_combo = QComboBox()
        self.new_layer_button = QPushButton("New annotation layer")
        form.addRow("Image", self.image_combo)
        form.addRow("Annotations", self.annotation_combo)
        form.addRow(self.new_layer_button)
        layout.addLayout(form)
        self.class_table = ClassTable()
        layout.addWidget(self.class_table)
        note = QLabel(NOTE)
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addLayout(self._settings_form())
        layout.addWidget(self._advanced())
        self.fine_tune_check = QCheckBox("Start from the current model (fine-tune)")
        self.fine_tune_check.setEnabled(False)
        self.preview_check = QCheckBox("Live preview")
        layout.addWidget(self.fine_tune_check)
        layout.addWidget(self.preview_check)
        self.train_button, self.stop_button = QPushButton("Train"), QPushButton("Stop")
        self.continue_button = QPushButton("Continue training")
        self.save_button = QPushButton("Save model...")
        self.load_button = QPushButton("Load model...")
        for row in ((self.train_button, self.stop_button),
                    (self.continue_button, self.save_button, self.load_button)):
            box = QHBoxLayout()
            for b in row:
                box.addWidget(b)
            layout.addLayout(box)
        self.status = QLabel("Paint a few strokes of each class, then press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot)
        layout.addStretch()
        self._connect_ui()
        self._update_buttons()

    def _settings_form(self) -> QFormLayout:
        form = QFormLayout()
        self.patch_spins = []
        row = QHBoxLayout()
        for axis in "ZYX":
            spin = QSpinBox(minimum=4, maximum=1024, singleStep=8, value=64, prefix=f"{axis} ")
            self.patch_spins.append(spin)
            row.addWidget(spin)
        form.addRow("Patch size", row)
        self.iterations_spin = QSpinBox(minimum=1, maximum=1_000_000, value=300, singleStep=100)
        self.batch_spin = QSpinBox(minimum=1, maximum=256, value=2)
        form.addRow("Iterations", self.iterations_spin)
        form.addRow("Batch size", self.batch_spin)
        return form

    def _advanced(self) -> QCollapsible:
        box = QCollapsible("Advanced")
        inner = QWidget()
        form = QFormLayout(inner)
        self.levels_spin = QSpinBox(minimum=0, maximum=6, value=0, specialValueText="auto")
        self.filters_spin = QSpinBox(minimum=2, maximum=256, value=16)
        self.lr_spin = QDoubleSpinBox(minimum=1e-6, maximum=1.0, decimals=6, value=3e-3,
                                      singleStep=1e-3)
        self.loss_combo = QComboBox()
        self.loss_combo.addItems(LOSSES)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.val_spin = QDoubleSpinBox(minimum=0.0, maximum=0.5, decimals=2, value=0.15,
                                       singleStep=0.05)
        for label, w in (("U-Net levels", self.levels_spin), ("Base filters", self.filters_spin),
                         ("Learning rate", self.lr_spin), ("Loss", self.loss_combo),
                         ("Device", self.device_combo), ("Seed", self.seed_spin),
                         ("Validation fraction", self.val_spin)):
            form.addRow(label, w)
        box.addWidget(inner)
        return box

    def _connect_ui(self) -> None:
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.annotation_combo.currentTextChanged.connect(self._on_annotation_layer_changed)
        self.new_layer_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        self.continue_button.clicked.connect(self.continue_training)
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)

    def _timers(self) -> None:
        self._render_timer = QTimer(self, interval=RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render)
        self._preview_timer = QTimer(self)
        self._preview_timer.timeout.connect(self.request_preview)
        self._send_timer = QTimer(self, singleShot=True)
        self._send_timer.timeout.connect(self._send_labels)
        self._table_timer = QTimer(self, singleShot=True, interval=300)
        self._table_timer.timeout.connect(self._refresh_class_table)

    # --- layers -----------------------------------------------------------------------------------

    def _refresh_layers(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_layers)
        images = [layer.name for layer in _layers.image_layers(self.viewer)]
        annotations = [layer.name for layer in _layers.annotation_candidates(self.viewer)]
        image_changed = _layers.fill_combo(self.image_combo, images)
        _layers.fill_combo(self.annotation_combo, annotations)
        if image_changed:
            self._on_image_changed()
        if self.annotation_layer() is not self._listened:
            self._on_annotation_layer_changed()
        self._update_buttons()

    def image_layer(self):
        layer = _layers.find_layer(self.viewer, self.image_combo.currentText())
        return layer if _layers.is_volume_image(layer) else None

    def annotation_layer(self):
        layer = _layers.find_layer(self.viewer, self.annotation_combo.currentText())
        return layer if layer in _layers.annotation_candidates(self.viewer) else None

    def _on_image_changed(self, name: str = "") -> None:
        image = self.image_layer()
        if image is None:
            return
        proposed = propose_patch_size(_layers.spatial_shape(image), _layers.voxel_size(image),
                                      max_edge=self._patch_target())
        for spin, p in zip(self.patch_spins, proposed):
            spin.setValue(p)
        for layer in _layers.annotation_candidates(self.viewer):
            if (layer.metadata.get("image") == image.name
                    or layer.name == f"{image.name} annotations"):
                self.annotation_combo.setCurrentText(layer.name)
                break

    def _patch_target(self) -> int:
        """96 on a GPU; 48 on the CPU, where a 2 x 64^3 step takes seconds (and Stop waits for
        the step to end)."""
        try:
            device = resolve_device(self.device_combo.currentText())
        except ValueError:
            device = resolve_device("auto")
        return 96 if device.type in ("cuda", "mps") else 48

    def _on_annotation_layer_changed(self, name: str = "") -> None:
        layer = self.annotation_layer()
        if self._listened is not None and self._listened is not layer:
            for e in (self._listened.events.paint, self._listened.events.data,
                      self._listened.events.set_data):
                e.disconnect(self._on_annotations_edited)
        if layer is not None and layer is not self._listened:
            for e in (layer.events.paint, layer.events.data, layer.events.set_data):
                e.connect(self._on_annotations_edited)
            self.class_table.names.update(layer.metadata.get("class_names", {}))
        self._listened = layer
        self._table_values = None
        self._refresh_class_table()

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
        layer = self.annotation_layer()
        if layer is None:
            self._table_values = None
        elif self._table_values is None or layer.data.size <= GUI_INIT_VOXELS:
            self._table_values = set(_layers.painted_values(_layers.layer_array(layer)))
        self.class_table.show_values(self._table_values or (), layer)
        if layer is not None:
            layer.metadata["class_names"] = dict(self.class_table.names)

    # --- training ---------------------------------------------------------------------------------

    def train_config(self) -> TrainConfig:
        """The settings in the widget as a :class:`TrainConfig`."""
        iterations = self.iterations_spin.value()
        return TrainConfig(
            patch_size=tuple(s.value() for s in self.patch_spins),
            batch_size=self.batch_spin.value(), iterations=iterations,
            learning_rate=self.lr_spin.value(), loss=self.loss_combo.currentText(),
            device=self.device_combo.currentText(), seed=self.seed_spin.value(),
            validation_fraction=self.val_spin.value(),
            validate_every=int(np.clip(iterations // 10, 5, 50)))

    def start_training(self) -> bool:
        """Train a new network (or fine-tune the current model when that box is checked)."""
        return self._start(resume=False)

    def continue_training(self) -> bool:
        """Resume exactly from the last state for as many more iterations as the box says."""
        return self._start(resume=True)

    def stop_training(self) -> None:
        """Stop after the current iteration; the best model so far is kept."""
        if self._job is not None:
            self._job.request_stop()
            self.status.setText("Stopping after this iteration...")
            self.stop_button.setEnabled(False)

    @property
    def trainer(self) -> Trainer | None:
        return None if self._job is None else self._job.trainer

    def _start(self, resume: bool) -> bool:
        if self.worker is not None:
            show_info("Training is already running.")
            return False
        try:
            job = self._make_job(resume)
            if job.sent_labels.size <= GUI_INIT_VOXELS:
                job.build()  # errors a user can fix show at once
        except Exception as e:  # noqa: BLE001 - a GUI action: tell the user, keep the widget ready
            if not isinstance(e, (Seg3DError, ValueError, OSError)):
                log.exception("Could not start training")
            show_error(_layers.error_message(e, "Training"))
            return False
        self._launch(job)
        return True

    def _make_job(self, resume: bool) -> _TrainJob:
        image_layer, ann = self.image_layer(), self.annotation_layer()
        if image_layer is None:
            raise AnnotationError("There is no 3D image layer: open a volume (Z, Y, X) or "
                                  "(C, Z, Y, X) first.")
        if ann is None:
            raise AnnotationError("There is no annotation layer: press 'New annotation layer' and "
                                  "paint a few strokes of each class.")
        shape = _layers.spatial_shape(image_layer)
        if ann.data.shape != shape:
            raise AnnotationError(f"The annotation layer '{ann.name}' has shape {ann.data.shape} "
                                  f"but the image '{image_layer.name}' is {shape}; make the "
                                  "annotation layer from this image.")
        labels = np.array(_layers.layer_array(ann), copy=True)
        image = _layers.layer_array(image_layer)
        channels = _layers.channels_of(image_layer)
        vs = _layers.voxel_size(image_layer)
        if resume:
            init = self.last_model
            if init is None:
                raise AnnotationError("There is no training to continue: train a model first.")
            cfg = dataclasses.replace(init.train_config, device=self.device_combo.currentText(),
                                      iterations=init.iteration + self.iterations_spin.value())
        else:
            cfg = self.train_config()
            init = self.model if self.fine_tune_check.isChecked() else None
        levels, filters = self.levels_spin.value() or None, self.filters_spin.value()
        names = self.class_table

        def make_trainer() -> Trainer:
            painted = class_values_of(labels)
            out = 1 if is_binary_loss(cfg.loss) else len(painted)
            mc = None if init is not None else default_model_config(
                channels, out, cfg.patch_size, vs, base_filters=filters, levels=levels)
            return Trainer(image, labels, cfg, model_config=mc, voxel_size=vs, init=init,
                           class_names=[names.name(v) for v in painted], resume=resume)

        start = init.iteration if resume else 0
        return _TrainJob(make_trainer, ann, image_layer.name, labels, start, cfg.iterations)

    def _launch(self, job: _TrainJob) -> None:
        self._job, self._image_name = job, job.image_name
        history = self.last_model.history if job.start_iteration and self.last_model else {}
        losses = list(history.get("loss", []))[:job.start_iteration]
        self._history = (list(range(1, len(losses) + 1)), losses,
                         list(history.get("val_iteration", [])), list(history.get("val_dice", [])))
        self.plot.clear()
        self._progress_bar = progress(total=job.iterations - job.start_iteration, desc="Training")
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
        job.latest = p
        its, losses, val_its, val_dice = self._history
        its.append(p.iteration)
        losses.append(p.loss)
        if p.val_dice is not None:
            val_its.append(p.iteration)
            val_dice.append(list(p.val_dice))
        if p.preview is not None:
            self._show_preview(p.preview)

    def _render(self) -> None:
        """Status line, plot and progress bar from the newest progress record."""
        job = self._job
        p = None if job is None else job.latest
        if p is None or self._rendering:
            return
        self._rendering = True
        try:
            parts = [f"Iteration {p.iteration}/{p.iterations}", f"loss {p.loss:.4f}"]
            if self._history[3]:
                parts.append("val Dice " + _dice_text(self._history[3][-1], self._class_names()))
            parts += [f"{p.voxels_per_s / 1e6:.2f} Mvoxel/s", f"ETA {_duration(p.eta_s)}"]
            if job.stop_requested:
                parts.append("stopping...")
            self.status.setText(" · ".join(parts))
            self.plot.set_data(*self._history, self._class_names())
            # last: napari's progress bar processes events
            _layers.advance(self._progress_bar, p.iteration - job.start_iteration)
        finally:
            self._rendering = False

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
        name = f"{self._image_name} model"
        SESSION.put(name, result.best)
        self.fine_tune_check.setEnabled(True)
        best = result.best.history.get("best_val_dice")
        how = f"Stopped at iteration {result.last.iteration}" if result.stopped else \
            f"Trained {result.last.iteration} iterations"
        quality = ("best val Dice " + _dice_text(best, result.best.class_names)
                   + f" (iteration {result.best.iteration})") if best else \
            "no validation set (paint more strokes on more slices to get one)"
        self.status.setText(f"{how}; {quality}. '{name}' is ready in Predict.")

    def _on_error(self, error: BaseException) -> None:
        show_error(_layers.error_message(error, "Training"))

    def _on_finished(self) -> None:
        # napari's progress bar runs processEvents: change state first, touch the bar last.
        job, bar = self._job, self._progress_bar
        names = self._class_names()
        if job is not None and not job.result_seen:  # the worker was quit: keep what it learnt
            result = job.finish()
            if result is not None:
                self._on_result(result)
        self.worker, self._job, self._progress_bar = None, None, None
        for timer in (self._render_timer, self._preview_timer, self._send_timer):
            timer.stop()
        self._update_buttons()
        self.plot.set_data(*self._history, names)
        if self._preview_writer is not None:
            self._preview_writer.close()
        if bar is not None:
            if job is not None and job.latest is not None:
                _layers.advance(bar, job.latest.iteration - job.start_iteration)
            bar.close()

    # --- strokes painted while training -----------------------------------------------------------

    def _on_annotations_edited(self, event=None) -> None:
        kind = getattr(event, "type", "")
        if kind != "set_data":  # set_data also comes with every re-slice
            if kind == "paint" and self._table_values is not None:
                self._table_values.add(int(event.source.selected_label))
            self._table_timer.start()
        job = self._job
        if job is None or self.worker is None or getattr(event, "source", None) is not \
                job.annotation_layer:
            return
        if kind == "set_data":  # compare before sending
            job.labels_maybe_changed = True
        else:
            job.labels_changed = True
        wait = job.last_send + SEND_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._send_labels()
        elif not self._send_timer.isActive():
            self._send_timer.start(int(wait * 1000) + 1)

    def _send_labels(self) -> None:
        """Send a copy of the annotation layer to the trainer if it changed."""
        job = self._job
        if job is None or not (job.labels_changed or job.labels_maybe_changed):
            return
        labels = _layers.layer_array(job.annotation_layer)
        if not job.labels_changed and np.array_equal(labels, job.sent_labels):
            job.labels_maybe_changed = False
            return
        labels = np.array(labels, copy=True)
        job.labels_changed = job.labels_maybe_changed = False
        job.last_send = time.monotonic()
        job.sent_labels = labels
        self._send(labels=self._known_classes_only(job, labels))

    def _known_classes_only(self, job: _TrainJob, labels: np.ndarray) -> np.ndarray:
        """``labels`` with values the running model has no class for set to 0 (shown once)."""
        if job.trainer is None:
            return labels
        known = set(job.trainer.model.class_values)
        extra = [v for v in _layers.painted_values(labels) if v not in known]
        if not extra:
            return labels
        new = sorted(set(extra) - job.warned_values)
        if new:
            job.warned_values.update(new)
            show_warning(f"Label {', '.join(map(str, new))} is not a class of the model being "
                         "trained; it is ignored until you train a new model.")
        out = labels.copy()
        out[np.isin(out, extra)] = 0
        return out

    def _send(self, labels=None, preview=None) -> None:
        """Hand new labels and/or a preview region to the trainer, merged with what it has not
        taken yet (the newest of each)."""
        job = self._job
        if job is None or self.worker is None:
            return
        pending = job.sent
        if pending is not None and job.consumed is not pending:
            labels = labels if labels is not None else pending.labels
            preview = preview if preview is not None else pending.preview
        job.sent = TrainerUpdate(labels=labels, preview=preview)
        self.worker.send(job.sent)

    # --- live preview -----------------------------------------------------------------------------

    def request_preview(self) -> None:
        """Ask the trainer to predict the region around the displayed slice."""
        if self._job is None or not self.preview_check.isChecked():
            return
        image = _layers.find_layer(self.viewer, self._job.image_name)
        if image is not None:
            patch = self._job.trainer.config.patch_size if self._job.trainer else (32, 64, 64)
            self._send(preview=_layers.view_region(image, self.viewer, patch[0], PREVIEW_YX))

    def _show_preview(self, preview) -> None:
        image = _layers.find_layer(self.viewer, self._job.image_name) if self._job else None
        if image is None:
            return
        writer = self._preview_writer
        name = f"{image.name} preview"
        if (writer is None or writer.layer not in self.viewer.layers or writer.layer.name != name
                or writer.layer.data.dtype != preview.labels.dtype):
            layer = _layers.output_labels_layer(self.viewer, name, image, preview.labels.dtype,
                                                "preview", opacity=0.5)
            writer = self._preview_writer = _layers.RegionWriter(layer, interval=0.1)
            self._preview_region = None
        if self._preview_region is not None:
            writer.write(self._preview_region, 0)
        writer.write(preview.slices, preview.labels)
        self._preview_region = preview.slices

    # --- model files ------------------------------------------------------------------------------

    def save_model_to(self, path) -> Path | None:
        """Save the best model to ``path``; returns the path, or None (after a notification)."""
        if self.model is None:
            show_error("There is no model yet: train or load one first.")
            return None
        try:
            out = save_model(self.model, path)
        except OSError as e:
            show_error(f"Cannot save the model to {path}: {e}")
            return None
        show_info(f"Saved the model to {out}.")
        return out

    def load_model_from(self, path) -> SegmentationModel | None:
        """Load a model file: it becomes the current model, and Train fine-tunes it."""
        try:
            model = load_model(path)
        except ModelFileError as e:
            show_error(str(e))
            return None
        self.model = self.last_model = model
        SESSION.put(Path(path).name, model)
        self.class_table.names.update(zip(model.class_values, model.class_names))
        for spin, p in zip(self.patch_spins, model.patch_size):
            spin.setValue(p)
        self.fine_tune_check.setEnabled(True)
        self.fine_tune_check.setChecked(True)
        self._refresh_class_table()
        self._update_buttons()
        self.status.setText(f"Loaded {Path(path).name}: classes {list(model.class_names)}, "
                            f"{model.iteration} iterations trained. Train fine-tunes it.")
        return model

    def _save_dialog(self) -> None:
        image = self.image_combo.currentText() or "model"
        path, _ = QFileDialog.getSaveFileName(self, "Save model", f"{image} model.pt",
                                              "napari-seg3d model (*.pt);;All files (*)")
        if path:
            self.save_model_to(path)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "",
                                              "napari-seg3d model (*.pt);;All files (*)")
        if path:
            self.load_model_from(path)

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.train_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.continue_button.setEnabled(not busy and self.last_model is not None
                                        and self.last_model.optimizer_state is not None)
        self.save_button.setEnabled(not busy and self.model is not None)
        self.load_button.setEnabled(not busy)
        self.new_layer_button.setEnabled(self.image_combo.count() > 0)


def _dice_text(dice, names) -> str:
    return ", ".join(f"{names[i] if i < len(names) else i}: {d:.2f}" for i, d in enumerate(dice))


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
