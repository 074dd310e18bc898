"""Conveniences for scripts: a training run driven to its end in one call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import ModelConfig, TrainConfig
from .generators import run_to_end
from .model_file import SegmentationModel
from .plan import plan_training
from .training.progress import TrainProgress, TrainResult
from .training.trainer import Trainer


def train(image: Any, labels: Any, config: TrainConfig | None = None, *,
          settings: Mapping[str, Any] | None = None,
          model_config: ModelConfig | None = None, voxel_size: Sequence[float] | None = None,
          class_names: Sequence[str] | None = None, init: SegmentationModel | None = None,
          resume: bool = False, loggers: Sequence[Any] = (),
          on_progress: Callable[[TrainProgress], object] | None = None) -> TrainResult:
    """Train a model on an image and sparse annotations, to the end, in one call: a
    :class:`.Trainer` whose :meth:`~.Trainer.run` generator is driven by :func:`.run_to_end`.

    Args:
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)``; numpy array, memmap or h5py dataset.
        labels: ``(Z, Y, X)`` integer annotations: 0 = not annotated, 1, 2, ... = classes.
        config: Every training setting; None: planned by :func:`.plan_training` from the
            image, its voxel size, the strokes and ``settings``, as the command line and the
            Train widget plan a run.
        settings: What you set, for the plan (any :class:`.TrainConfig` field and the network's
            ``dims``, ``architecture``, ``base_filters``, ``levels``); ignored with ``config``.
        model_config: The network (default: the plan's, or :func:`.default_model_config`).
        voxel_size: ``(z, y, x)`` of the image, kept in the model file.
        class_names: A name per class, in the order of the painted values.
        init: A model to start from (fine-tuning) or, with ``resume=True``, to continue exactly.
        resume: Continue ``init``'s run exactly (its optimizer state and iteration count).
        loggers: e.g. a :class:`.TensorBoardLogger`.
        on_progress: Called with each :class:`.TrainProgress` (e.g. to print the loss).

    Returns:
        The :class:`.TrainResult`: ``best`` (by validation Dice) and ``last`` models.

    Example:
        >>> from napari_seg3d.engine import train
        >>> result = train(image, scribbles, settings={"iterations": 200})  # doctest: +SKIP
        >>> labels = result.best.predict(image)  # doctest: +SKIP
    """
    if config is None:
        channels = int(image.shape[0]) if len(image.shape) == 4 else 1
        plan = plan_training(image.shape, labels, channels=channels, voxel_size=voxel_size,
                             settings=settings, init=init, resume=resume)
        config, model_config = plan.train_config, model_config or plan.model_config
    trainer = Trainer(image, labels, config, model_config=model_config, class_names=class_names,
                      voxel_size=voxel_size, init=init, resume=resume, loggers=loggers)
    return run_to_end(trainer.run(), on_progress)
