"""One training run of the Train widget, shared by the GUI thread and the worker thread: the
worker's generator around :meth:`Trainer.run`, the labels and previews handed to it while it
runs, and the checks and settings that make a run from the layers."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from ..engine import AnnotationError, Trainer, TrainerUpdate
from ..engine.budget import ITERATIONS_CAP
from ..engine.plan import plan_training
from ..engine.training.instant import painted_values
from ..engine.training.sampling import class_values_of
from ..engine.training.tensorboard import TensorBoardLogger
from . import _layers

if TYPE_CHECKING:
    from ..engine import SegmentationModel, TrainProgress
    from ._channels import ImageInput
    from ._class_table import ClassTable

log = logging.getLogger(__name__)


class TrainJob:
    """One training run, shared by the GUI thread and the worker thread.

    ``sent`` is the last :class:`TrainerUpdate` handed to ``worker.send`` and ``consumed`` the
    last one the generator received; while they differ, a new update is merged into the pending
    one (``GeneratorWorker`` keeps a single pending value)."""

    def __init__(self, make_trainer, annotation_layer, image_name: str,
                 start_iteration: int, iterations: int, new_model: bool = True) -> None:
        self._make_trainer = make_trainer
        self.new_model = new_model  # False: fine-tuning or continuing a model
        self.trainer: Trainer | None = None
        self.annotation_layer = annotation_layer
        self.image_name = image_name
        self.sent_labels: np.ndarray | None = None  # the copy trained on, made by build()
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
        self.forest = None  # the instant random-forest preview (a ForestJob), shown first
        self.on_kept = None  # called with each model the run keeps (the autosave)
        self.autosave_session = None  # where the autosave writes this run's models

    def __repr__(self) -> str:  # napari lists running workers by their function
        return f"napari-seg3d training on '{self.image_name}'"

    def build(self) -> None:
        """Copy the annotation layer and make the Trainer (slow for large volumes: in the GUI
        thread only for small ones)."""
        if self.sent_labels is None:
            self.sent_labels = np.array(_layers.layer_array(self.annotation_layer), copy=True)
        self.trainer = self._make_trainer(self.sent_labels)

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.trainer is not None:
            self.trainer.request_stop()

    def run(self):
        """The worker's generator: yields TrainProgress, returns TrainResult or WorkerFailed."""
        gen = None
        try:
            if self.forest is not None:  # the slice on screen first, with the CPU to itself
                self.forest.wait_first_record(lambda: self.stop_requested)
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
                if progress_.is_best and self.on_kept is not None:
                    self.on_kept(self.trainer.kept)  # in this thread, between two steps
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

    def note_edit(self, certain: bool, interval: float) -> float:
        """Record an edit of the annotation layer (``certain``: a stroke; else a ``set_data``,
        compared before sending); returns the seconds until labels may be sent again, at most
        every ``interval`` seconds."""
        if certain:
            self.labels_changed = True
        else:
            self.labels_maybe_changed = True
        return self.last_send + interval - time.monotonic()

    def labels_to_send(self) -> np.ndarray | None:
        """A copy of the annotation layer if it changed since the last one sent, else None."""
        if not (self.labels_changed or self.labels_maybe_changed):
            return None
        labels = _layers.layer_array(self.annotation_layer)
        if not self.labels_changed and np.array_equal(labels, self.sent_labels):
            self.labels_maybe_changed = False
            return None
        labels = np.array(labels, copy=True)
        self.labels_changed = self.labels_maybe_changed = False
        self.last_send = time.monotonic()
        self.sent_labels = labels
        return labels

    def without_unknown_classes(self, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """``labels`` with the values the running model has no class for set to 0, and those of
        them not reported before (to tell the user once)."""
        if self.trainer is None:
            return labels, []
        known = set(self.trainer.model.class_values)
        extra = [v for v in _layers.painted_values(labels) if v not in known]
        if not extra:
            return labels, []
        new = sorted(set(extra) - self.warned_values)
        self.warned_values.update(new)
        out = labels.copy()
        out[np.isin(out, extra)] = 0
        return out, new

    def next_update(self, labels=None, preview=None) -> TrainerUpdate:
        """The update to send: new labels and/or a preview region, merged with what the
        generator has not taken yet (the newest of each)."""
        pending = self.sent
        if pending is not None and self.consumed is not pending:
            labels = labels if labels is not None else pending.labels
            preview = preview if preview is not None else pending.preview
        self.sent = TrainerUpdate(labels=labels, preview=preview)
        return self.sent


def check_layers(image_layer, annotation_layer) -> None:
    """Raise an :class:`AnnotationError` unless both layers exist and have the same shape."""
    if image_layer is None:
        raise AnnotationError("There is no 3D image layer: open a volume (Z, Y, X) or "
                              "(C, Z, Y, X) first.")
    if annotation_layer is None:
        raise AnnotationError("There is no annotation layer: press 'New annotation layer' and "
                              "paint a few strokes of each class.")
    shape = _layers.spatial_shape(image_layer)
    if annotation_layer.data.shape != shape:
        raise AnnotationError(f"The annotation layer '{annotation_layer.name}' has shape "
                              f"{annotation_layer.data.shape} but the image "
                              f"'{image_layer.name}' is {shape}; make the annotation layer "
                              "from this image.")


def check_strokes(labels, painted=None) -> tuple[int, ...]:
    """The painted values of ``labels``; raises the :class:`AnnotationError` the Trainer would
    (none painted, one class, not integers), reading only the painted slices, or the values of
    ``painted`` (:class:`~..engine.autosave.PaintedVoxels` of ``labels``) when given (the
    instant preview starts before the Trainer is built)."""
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        class_values_of(np.zeros(1, labels.dtype))  # its sentence for the dtype
    values = painted_values(labels) if painted is None else np.unique(painted.values)
    return class_values_of(np.array(values, dtype=np.int64))


def new_job(source: ImageInput, annotation_layer, settings: dict,
            init: SegmentationModel | None, *, resume: bool, names: ClassTable,
            tensorboard: str | None = None) -> TrainJob:
    """A job training on ``source`` (the Image layer, and the layers stacked as its further
    channels, their names recorded in the model) and a copy of the annotations (checked by
    :func:`check_layers`; copied when the job is built), planned by
    :func:`~napari_seg3d.engine.plan.plan_training` from the layers and ``settings`` (the
    form's): from ``init`` (fine-tuned, or resumed exactly when ``resume``) or a new network,
    classes named by ``names``; logged to TensorBoard in the folder ``tensorboard`` when given."""
    image_layer = source.layer
    image, channels = source.data, source.channels
    vs = _layers.voxel_size(image_layer)
    shape = _layers.spatial_shape(image_layer)

    def make_trainer(labels: np.ndarray) -> Trainer:
        plan = plan_training(shape, labels, channels=channels, voxel_size=vs, settings=settings,
                             init=init, resume=resume)
        loggers = [TensorBoardLogger(tensorboard)] if tensorboard else []
        return Trainer(image, labels, plan.train_config, model_config=plan.model_config,
                       voxel_size=vs, init=init, resume=resume, loggers=loggers,
                       channel_names=source.channel_names,
                       class_names=[names.name(v) for v in class_values_of(labels)])

    start = init.iteration if resume else 0
    return TrainJob(make_trainer, annotation_layer, image_layer.name, start,
                    _provisional_total(settings, init, resume), new_model=init is None)


def _provisional_total(settings: dict, init: SegmentationModel | None, resume: bool) -> int:
    """The run's total for the progress bar until the run reports it (a time budget fixes it
    after the first steps): the iterations given, a stopped run's own total, else the cap."""
    start = init.iteration if resume else 0
    if settings.get("iterations"):
        return start + int(settings["iterations"])
    if resume and start < init.train_config.iterations:
        return init.train_config.iterations
    return start + ITERATIONS_CAP
