"""Training as a generator: it yields a :class:`TrainProgress` after every iteration, accepts new
annotations through ``generator.send(labels)``, stops at the next layer it computes when
:meth:`Trainer.request_stop` is called (an unfinished step is dropped, see :mod:`.interrupt`),
and returns a :class:`TrainResult` with the best and the last model. Every random draw of iteration ``i`` is seeded by ``(seed, i)``, so a run stopped
and resumed from its last model file continues exactly."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Generator

import numpy as np
import torch

from ..call_checks import complex_image
from ..config import ModelConfig, TrainConfig
from ..devices import resolve_device
from ..errors import AnnotationError
from ..model_file import SegmentationModel
from ..models import MODELS, SliceNetwork, build_model
from ..normalization import compute_normalization
from ..plan import default_model_config
from ..schema import check_network_patch
from .losses import is_binary_loss, make_loss
from .progress import Preview, TrainerUpdate, TrainProgress, TrainResult
from .sampling import AnnotationSet, PatchSampler, SliceSampler, class_values_of, make_annotations
from .views import ChannelView

log = logging.getLogger(__name__)

MAX_CHANNELS = 16  # a 4D image with a longer first axis is a time series, not (C, Z, Y, X)


def _image_shape(image) -> tuple[tuple[int, int, int], int]:
    if image.ndim not in (3, 4):
        raise AnnotationError(f"Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got shape {tuple(image.shape)}.")
    if complex_image(image):
        raise AnnotationError(complex_image(image))
    channels = image.shape[0] if image.ndim == 4 else 1
    if channels > MAX_CHANNELS:
        raise AnnotationError(f"Expected a 3D image (Z, Y, X) or (C, Z, Y, X) with at most "
                              f"{MAX_CHANNELS} channels, got shape {tuple(image.shape)}; for a "
                              "time series (T, Z, Y, X), use one time point.")
    return tuple(int(s) for s in image.shape[-3:]), channels


class Trainer:
    """Trains a network on an image and sparse annotations (label 0 = not annotated).

    Args:
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)``; numpy array, memmap or h5py dataset.
        labels: ``(Z, Y, X)`` integer annotations.
        config: every training setting. With a time budget (``config.minutes``) the run
            replaces it once, after its first steps, by the config of the total fixed then
            (``trainer.config`` and the model's ``train_config``; see :mod:`..budget`).
        model_config: the network; default :func:`default_model_config`.
        init: a model to start from (fine-tuning) or, with ``resume=True``, to continue exactly.
        channel_names: the names of the image's channels, in order (recorded in the model).
        loggers: objects with ``log(trainer, progress)`` and ``close()``, called in the training
            thread after every iteration and at the end (e.g. ``tensorboard.TensorBoardLogger``);
            a logger that fails is dropped with a warning, the training goes on.
    """

    def __init__(self, image, labels, config: TrainConfig, *, model_config: ModelConfig | None = None,
                 class_names=None, voxel_size=None, init: SegmentationModel | None = None,
                 resume: bool = False, loggers=(), channel_names=()) -> None:
        self.created = time.perf_counter()  # a time budget counts from here
        shape, channels = _image_shape(image)
        labels = np.asarray(labels)
        if labels.shape != shape:
            raise AnnotationError(f"The annotations have shape {labels.shape} but the image is {shape}; "
                                  "make the annotation layer from this image.")
        painted = class_values_of(labels)
        self.config = config
        self.micro_batches = 1  # parts each batch is split into (more after CUDA out of memory)
        self._stop = threading.Event()
        self.device = resolve_device(config.device)
        if init is not None:
            self._init_from(init, painted, channels, resume)
        else:
            self._init_new(image, painted, channels, model_config, class_names, voxel_size)
        if channel_names and len(channel_names) == channels:  # else those of ``init``, if any
            self.model.channel_names = tuple(str(n) for n in channel_names)
        self.sliced = isinstance(self.model.network, SliceNetwork)  # a 2D network (2.5D)
        if self.sliced:
            self.model.network.planes = config.planes
        sampler = SliceSampler if self.sliced else PatchSampler
        self.sampler = sampler(
            image, self._annotations(labels), self.model.normalization, config.patch_size,
            has_channels=image.ndim == 4, random_fraction=config.random_patch_fraction)
        self.loss_fn = make_loss(config.loss)
        self.loggers = list(loggers)
        self.kept: SegmentationModel | None = None  # the model the loop kept last (autosave)

    def _init_new(self, image, painted, channels, model_config, class_names, voxel_size) -> None:
        k = len(painted)
        binary = is_binary_loss(self.config.loss)
        if binary and k != 2:
            raise AnnotationError(f"The {self.config.loss} loss is for two classes; {k} are painted. "
                                  "Choose the ce_dice loss.")
        out = 1 if binary else k
        mc = model_config or default_model_config(channels, out, self.config.patch_size, voxel_size)
        check_network_patch(mc.kwargs, self.config.patch_size)  # before a step is spent on it
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not global state
            torch.manual_seed(self.config.seed)
            network = build_model(mc.architecture, **mc.kwargs)
        self.model = SegmentationModel(
            network=network, model_config=mc,
            train_config=self.config, class_values=painted,
            normalization=compute_normalization(image if image.ndim == 4 else ChannelView(image)),
            in_channels=channels, class_names=tuple(class_names or ()),
            voxel_size=None if voxel_size is None else tuple(float(v) for v in voxel_size),
            history={"loss": [], "val_dice": [], "val_iteration": [], "best_val_dice": None})
        self.start_iteration = 0
        self.optimizer_state = None

    def _init_from(self, init: SegmentationModel, painted, channels, resume) -> None:
        if init.model_config.architecture not in MODELS:  # another tool's bioimage.io model
            raise AnnotationError("This model comes from another tool's bioimage.io package: "
                                  "napari-seg3d predicts with it but cannot train it; train a "
                                  "new model instead.")
        if channels != init.in_channels:
            raise AnnotationError(f"The model was trained on {init.in_channels}-channel images; "
                                  f"this image has {channels}.")
        extra = set(painted) - set(init.class_values)
        if extra:
            raise AnnotationError(f"Label values {sorted(extra)} are not classes of the loaded model "
                                  f"({list(init.class_values)}); train a new model for new classes.")
        if resume and init.optimizer_state is None:
            raise AnnotationError("This model file has no optimizer state, so training cannot resume "
                                  "exactly; fine-tune it instead.")
        self.model = SegmentationModel(
            network=copy.deepcopy(init.network), model_config=init.model_config,
            train_config=self.config, class_values=init.class_values,
            normalization=init.normalization, in_channels=init.in_channels,
            class_names=init.class_names, voxel_size=init.voxel_size,
            channel_names=init.channel_names,
            history=copy.deepcopy(init.history) if resume else
            {"loss": [], "val_dice": [], "val_iteration": [], "best_val_dice": None})
        self.start_iteration = init.iteration if resume else 0
        self.optimizer_state = init.optimizer_state if resume else None

    def _annotations(self, labels) -> AnnotationSet:
        return make_annotations(labels, self.model.class_values, self.config.validation_fraction,
                                self.config.seed)

    def request_stop(self) -> None:
        """Ask the loop to stop at the next layer it computes, dropping an unfinished step (safe
        from any thread)."""
        self._stop.set()

    def update_annotations(self, labels: np.ndarray) -> None:
        """Use new annotations from the next batch on (call from the training thread, or send
        the labels into :meth:`run`)."""
        self.sampler.set_annotations(self._annotations(np.asarray(labels)))

    def preview(self, slices: tuple[slice, slice, slice], iteration: int) -> Preview:
        """Predict ``slices`` of the image with the current network (in the training thread)."""
        from ..prediction.sliding_window import predict_volume

        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, self.sampler.shape))
        src = self.sampler.image
        image = np.asarray(src[(slice(None),) + region] if self.sampler.has_channels else src[region])
        net = self.model.network
        net.eval()
        try:
            labels = predict_volume(net, self.model.prepare(image),
                                    patch_size=self.model.window(image.shape[-3:]),
                                    overlap=0.25, batch_size=2, device=self.device,
                                    amp=self.config.amp)
        finally:
            net.train()
        return Preview(region, self.model.label_lut()[labels], iteration)

    def quick_preview(self, region: tuple[slice, slice, slice] | None = None) -> Preview:
        """A random-forest segmentation of ``region`` from the current strokes, in seconds
        (see :func:`.self_training.quick_preview`)."""
        from .self_training import quick_preview

        return quick_preview(self, region)

    def self_train(self, iteration: int) -> Preview | None:
        """One self-training round (see :func:`.self_training.self_training_round`)."""
        from .self_training import self_training_round

        return self_training_round(self, iteration)

    def run(self) -> Generator[TrainProgress, TrainerUpdate | np.ndarray | None, TrainResult]:
        from .loop import training_loop

        return (yield from training_loop(self))


