"""Optional TensorBoard logging of training: pass a :class:`TensorBoardLogger` in
``Trainer(..., loggers=[...])`` and watch the run with ``tensorboard --logdir DIR``.

Every iteration logs the loss, the learning rate, the speed and the data wait; validation
iterations log the Dice of each class and their mean, and one z-slice (the one with the most
annotated voxels) as three images: the image, the annotations and the network's current
prediction. Only a slab of that slice, at most :data:`MAX_IMAGE_EDGE` voxels wide in y and x, is
predicted, so a log step costs little. Needs the ``tensorboard`` package
(``pip install "napari-seg3d[tensorboard]"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OutputError, Seg3DError, writable_folder
from .tensorboard_guard import guard_event_file

if TYPE_CHECKING:
    from .progress import TrainProgress
    from .trainer import Trainer

MAX_IMAGE_EDGE = 256  # y/x extent of the logged slices of large volumes
STEP_BYTES = 3 * MAX_IMAGE_EDGE**2 * 3  # the most one step writes: three RGB slices

# One fixed colour per class (matplotlib's tab10, as in the training report), RGB in [0, 1].
CLASS_COLORS = np.array([(0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c),
                         (0xd6, 0x27, 0x28), (0x94, 0x67, 0xbd), (0x8c, 0x56, 0x4b),
                         (0xe3, 0x77, 0xc2)], np.float32) / 255

_MISSING = ('TensorBoard logging needs the tensorboard package: pip install '
            '"napari-seg3d[tensorboard]".')


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; raises :class:`Seg3DError` when the
    tensorboard package is missing. Deprecation warnings of its imports (protobuf and friends)
    are silenced here: they are not ours to fix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise Seg3DError(_MISSING) from exc
    return SummaryWriter


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package can be imported (so a :class:`TensorBoardLogger` can
    be made)."""
    try:
        _summary_writer_class()
    except Seg3DError:
        return False
    return True


def dice_tags(class_names) -> list[str]:
    """``validation/dice/<class name>`` for each class; a repeated name gets `` (2)``, ..."""
    tags: list[str] = []
    for name in class_names:
        tag, n = f"validation/dice/{name}", 1
        while tag in tags:
            n += 1
            tag = f"validation/dice/{name} ({n})"
        tags.append(tag)
    return tags


def mean_dice(val_dice) -> float | None:
    """The mean of the finite Dice values, None when there is none."""
    finite = [float(d) for d in val_dice if np.isfinite(d)]
    return float(np.mean(finite)) if finite else None


def settings_text(settings: dict[str, Any]) -> str:
    """``settings`` as indented JSON in a Markdown code block (TensorBoard's text plugin)."""
    return "\n".join("    " + line for line in json.dumps(settings, indent=2).splitlines())


def is_validation_step(config, progress: TrainProgress) -> bool:
    """Whether the loop validated at this step (also when no stroke is held out, so there is no
    Dice): see :func:`.schedule.validates_after`."""
    from .schedule import validates_after

    return progress.val_dice is not None or validates_after(config, progress.iteration)


def choose_slice(index: np.ndarray) -> int:
    """The z with the most annotated (nonzero) voxels of ``(Z, Y, X)`` annotations; the middle
    slice when nothing is annotated."""
    painted = (np.asarray(index) != 0).reshape(index.shape[0], -1).sum(1)
    return int(np.argmax(painted)) if painted.any() else index.shape[0] // 2


def _window(coords: np.ndarray, n: int, size: int) -> slice:
    """At most ``size`` of ``n`` voxels, centred on the span of ``coords`` (or on the middle)."""
    if n <= size:
        return slice(0, n)
    centre = (int(coords.min()) + int(coords.max())) // 2 if coords.size else n // 2
    start = int(np.clip(centre - size // 2, 0, n - size))
    return slice(start, start + size)


def slice_region(index: np.ndarray, z: int, depth: int,
                 max_edge: int = MAX_IMAGE_EDGE) -> tuple[slice, slice, slice]:
    """The region predicted for slice ``z``: a slab ``depth`` deep around it (one training patch,
    so the network sees context above and below) and, in y and x, at most ``max_edge`` voxels
    around the annotations of the slice."""
    n = index.shape[0]
    start = int(np.clip(z - depth // 2, 0, max(n - depth, 0)))
    ys, xs = np.nonzero(np.asarray(index[z]))
    return (slice(start, min(start + depth, n)), _window(ys, index.shape[1], max_edge),
            _window(xs, index.shape[2], max_edge))


def normalised_plane(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    """A 2D plane mapped to [0, 1] float32 by the model's intensity range (NaN/Inf to 0)."""
    out = (np.asarray(plane, np.float32) - low) / max(high - low, 1e-6)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), 0, 1).astype(np.float32)


def colour_classes(classes: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float32 RGB of class indices + 1 (0 = none, black), one fixed colour per
    class (:data:`CLASS_COLORS`, repeated beyond its length)."""
    classes = np.asarray(classes)
    lut = np.concatenate([np.zeros((1, 3), np.float32), CLASS_COLORS])
    k = np.where(classes > 0, (classes - 1) % len(CLASS_COLORS) + 1, 0)
    return lut[k]


def label_classes(labels: np.ndarray, class_values) -> np.ndarray:
    """Painted label values -> class index + 1 (0 for any other value)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int16)
    for k, v in enumerate(class_values):
        out[labels == v] = k + 1
    return out


class TensorBoardLogger:
    """Writes a training run to a TensorBoard log folder (a training logger, see
    :class:`~napari_seg3d.engine.training.trainer.Trainer`).

    Args:
        log_dir: the folder of the event files, created if needed; runs logged to the same
            folder show as one (a resumed run continues the steps).
        images_every: log the image slices every this many iterations; default: on validation
            iterations. Slices are also logged at the end.

    Raises:
        Seg3DError: the tensorboard package is not installed.
        OutputError: ``log_dir`` cannot be written.
    """

    def __init__(self, log_dir: str | os.PathLike, *, images_every: int | None = None) -> None:
        writer_class = _summary_writer_class()
        if images_every is not None and images_every < 1:
            raise ValueError(f"images_every must be at least 1, got {images_every}.")
        self.log_dir = writable_folder(log_dir)
        self.images_every = images_every
        try:
            self._writer = writer_class(log_dir=str(self.log_dir))
        except OSError as exc:
            raise OutputError(f"Cannot write the TensorBoard log to {self.log_dir} "
                              f"({exc.strerror or exc}). Choose a folder you can write to.") from exc
        self._guard = guard_event_file(self._writer)  # a full disk: a sentence, not a traceback
        self._trainer: Trainer | None = None
        self._region: tuple[slice, slice, slice] | None = None
        self._z = 0
        self._last_step: int | None = None
        self._last_image_step: int | None = None
        self._closed = False

    def log(self, trainer: Trainer, progress: TrainProgress) -> None:
        """Log one iteration: scalars always; settings at the first call; Dice and image slices
        on validation iterations (images every ``images_every`` iterations if given); flush
        after each validation. On an error the log is closed (the training drops a logger that
        raises, without closing it) and the error raised."""
        try:
            if self._guard is not None:  # before writing: room for this step's images
                self._guard.check(self.log_dir, STEP_BYTES)
            self._log(trainer, progress)
            if self._guard is not None:
                self._guard.check(self.log_dir)
        except BaseException:
            self._abandon()
            raise

    def _log(self, trainer: Trainer, progress: TrainProgress) -> None:
        step = progress.iteration
        if self._trainer is None:
            self._log_settings(trainer, step)
        self._trainer, self._last_step = trainer, step
        w = self._writer
        w.add_scalar("train/loss", float(progress.loss), step)
        w.add_scalar("train/learning_rate", float(progress.learning_rate), step)
        w.add_scalar("train/voxels_per_s", float(progress.voxels_per_s), step)
        w.add_scalar("train/data_wait", float(progress.data_wait), step)
        if progress.val_dice is not None:
            self._log_dice(trainer, progress.val_dice, step)
        validation = is_validation_step(trainer.config, progress)
        images = validation if self.images_every is None else step % self.images_every == 0
        if images:
            self._log_images(trainer, step)
        if validation or self._last_image_step == step:
            w.flush()  # a killed run keeps its log up to the last validation

    def close(self) -> None:
        """Log the final slices (unless already logged at the last step), flush and close;
        calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._trainer is not None and self._last_image_step != self._last_step:
                self._log_images(self._trainer, self._last_step)
        finally:
            self._trainer = None
            self._writer.flush()
            self._writer.close()

    def _abandon(self) -> None:
        """Close the writer after a failure, keeping what was written, raising nothing."""
        self._closed, self._trainer = True, None
        with contextlib.suppress(Exception):  # the first error is the one to report
            self._writer.close()

    def _log_settings(self, trainer: Trainer, step: int) -> None:
        model = trainer.model
        self._writer.add_text("settings/training", settings_text(trainer.config.to_dict()), step)
        model_settings = dict(model.model_config.to_dict(),
                              classes=dict(zip(map(str, model.class_values), model.class_names)))
        self._writer.add_text("settings/model", settings_text(model_settings), step)

    def _log_dice(self, trainer: Trainer, val_dice, step: int) -> None:
        for tag, dice in zip(dice_tags(trainer.model.class_names), val_dice):
            if np.isfinite(dice):
                self._writer.add_scalar(tag, float(dice), step)
        mean = mean_dice(val_dice)
        if mean is not None:
            self._writer.add_scalar("validation/mean_dice", mean, step)

    def _log_images(self, trainer: Trainer, step: int) -> None:
        """The image, the annotations and the prediction of the chosen slice."""
        index = trainer.sampler.annotations.index
        if self._region is None:  # chosen once, so the images of every step compare
            self._z = choose_slice(index)
            self._region = slice_region(index, self._z,
                                        trainer.model.window(trainer.sampler.shape)[0])
        z, (zs, ys, xs) = self._z, self._region
        src = trainer.sampler.image
        plane = src[0, z, ys, xs] if trainer.sampler.has_channels else src[z, ys, xs]
        norm = trainer.model.normalization
        image = normalised_plane(plane, norm.low[0], norm.high[0])
        annotations = colour_classes(np.abs(np.asarray(index[z, ys, xs])))
        preview = trainer.preview(self._region, step)
        predicted = label_classes(preview.labels[z - zs.start], trainer.model.class_values)
        self._writer.add_image("slices/image", image, step, dataformats="HW")
        self._writer.add_image("slices/annotations", annotations, step, dataformats="HWC")
        self._writer.add_image("slices/prediction", colour_classes(predicted), step,
                               dataformats="HWC")
        self._last_image_step = step
