"""Training as a generator: it yields a :class:`TrainProgress` after every iteration, accepts new
annotations through ``generator.send(labels)``, stops at the next layer it computes when
:meth:`Trainer.request_stop` is called (an unfinished step is dropped, see :mod:`.interrupt`),
and returns a :class:`TrainResult` with the best and the last model. Every random draw of iteration ``i`` is seeded by ``(seed, i)``, so a run stopped
and resumed from its last model file continues exactly."""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import dataclass
from typing import Generator

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .errors import AnnotationError
from .losses import is_binary_loss, make_loss
from .model_file import SegmentationModel, resolve_device
from .models import MODELS, SliceNetwork, anisotropic_pooling, build_model
from .threads import compute_threads
from .sampling import (AnnotationSet, PatchSampler, SliceSampler, class_values_of,
                       compute_normalization, make_annotations)

log = logging.getLogger(__name__)

QUICK_PREVIEW_VOXELS = 8_000_000  # larger volumes get the quick preview of a region only
SELF_TRAINING_VOXELS = 16_000_000  # larger volumes train on strokes only (no whole-volume pass)
MAX_CHANNELS = 16  # a 4D image with a longer first axis is a time series, not (C, Z, Y, X)


@dataclass(frozen=True)
class TrainProgress:
    """One training iteration's report. ``val_dice`` (one value per class) is set on validation
    iterations only; ``is_best`` when that validation gave a new best model."""

    iteration: int
    iterations: int
    loss: float
    learning_rate: float
    voxels_per_s: float
    eta_s: float
    data_wait: float
    val_dice: tuple[float, ...] | None = None
    is_best: bool = False
    preview: Preview | None = None
    threads: int = 0  # CPU threads the step ran on (see .threads)


@dataclass(frozen=True)
class Preview:
    """A prediction of one region with the network as it is at ``iteration``; ``labels`` hold the
    painted label values, ``(z, y, x)`` for ``slices``."""

    slices: tuple[slice, slice, slice]
    labels: np.ndarray
    iteration: int


@dataclass(frozen=True)
class TrainerUpdate:
    """What the caller sends into :meth:`Trainer.run` (``generator.send``): new annotations (a full
    copy of the ``(Z, Y, X)`` labels) and/or a region to preview. Either may be None."""

    labels: np.ndarray | None = None
    preview: tuple[slice, slice, slice] | None = None


@dataclass(frozen=True)
class TrainResult:
    """``best``: the model with the best validation Dice (or training loss without validation);
    ``last``: the final state, with the optimizer state for exact resumption."""

    best: SegmentationModel
    last: SegmentationModel
    stopped: bool


def default_model_config(in_channels: int, out_channels: int, patch_size, voxel_size=None,
                         base_filters: int = 16, levels: int | None = None,
                         architecture: str = "unet", dims: int = 3) -> ModelConfig:
    """A U-Net sized for ``patch_size``: as many levels (at most 4) as keep every axis of the
    deepest feature map at least 4 voxels. ``dims=3``: a 3D network pooling per axis for
    anisotropic voxels; ``dims=2``: a 2D network trained on ``patch_size[1:]`` slices along z, y
    and x (2.5D), which treats every plane as isotropic."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 (slices, 2.5D) or 3, got {dims}.")
    size = tuple(patch_size) if dims == 3 else tuple(patch_size)[1:]
    spacing = (voxel_size or (1, 1, 1)) if dims == 3 else (1, 1)
    if levels is None:
        levels = 1
        while levels < 4:
            pool = anisotropic_pooling(spacing, levels + 1)
            div = np.prod(np.array(pool), axis=0)
            if np.all(np.array(size) / div >= 4) or np.all(div == 1):
                levels += 1
            else:
                break
    pool = anisotropic_pooling(spacing, levels)
    kwargs = dict(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels,
                  levels=levels, base_filters=base_filters, growth=2.0, residual=True,
                  norm="instance", dropout=0.0, pooling=[list(p) for p in pool])
    if architecture not in MODELS:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of {', '.join(MODELS)}.")
    return ModelConfig(architecture, kwargs)


def default_batch_size(dims: int) -> int:
    """Patches per batch: 2 for 3D patches; 8 for 2D slices, which hold far fewer voxels (on the
    nuclei sample a step of 8 slices of 32^2 costs a fraction of one of 2 patches 16x32x32)."""
    return 8 if dims == 2 else 2


def learning_rate_at(iteration: int, total: int, base: float, warmup: int = 20) -> float:
    """Linear warm-up, then polynomial decay (power 0.9) to zero at ``total``."""
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    return base * max(0.0, 1.0 - iteration / max(total, 1)) ** 0.9


def _image_shape(image) -> tuple[tuple[int, int, int], int]:
    if image.ndim not in (3, 4):
        raise AnnotationError(f"Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got shape {tuple(image.shape)}.")
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
        config: every training setting.
        model_config: the network; default :func:`default_model_config`.
        init: a model to start from (fine-tuning) or, with ``resume=True``, to continue exactly.
        loggers: objects with ``log(trainer, progress)`` and ``close()``, called in the training
            thread after every iteration and at the end (e.g. ``tensorboard.TensorBoardLogger``);
            a logger that fails is dropped with a warning, the training goes on.
    """

    def __init__(self, image, labels, config: TrainConfig, *, model_config: ModelConfig | None = None,
                 class_names=None, voxel_size=None, init: SegmentationModel | None = None,
                 resume: bool = False, loggers=()) -> None:
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
        self.sliced = isinstance(self.model.network, SliceNetwork)  # a 2D network (2.5D)
        if self.sliced:
            self.model.network.planes = config.planes
        sampler = SliceSampler if self.sliced else PatchSampler
        self.sampler = sampler(
            image, self._annotations(labels), self.model.normalization, config.patch_size,
            has_channels=image.ndim == 4, random_fraction=config.random_patch_fraction)
        self.loss_fn = make_loss(config.loss)
        self.loggers = list(loggers)

    def _init_new(self, image, painted, channels, model_config, class_names, voxel_size) -> None:
        k = len(painted)
        binary = is_binary_loss(self.config.loss)
        if binary and k != 2:
            raise AnnotationError(f"The {self.config.loss} loss is for two classes; {k} are painted. "
                                  "Choose the ce_dice loss.")
        out = 1 if binary else k
        mc = model_config or default_model_config(channels, out, self.config.patch_size, voxel_size)
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not global state
            torch.manual_seed(self.config.seed)
            network = build_model(mc.architecture, **mc.kwargs)
        self.model = SegmentationModel(
            network=network, model_config=mc,
            train_config=self.config, class_values=painted,
            normalization=compute_normalization(image if image.ndim == 4 else _Channel(image)),
            in_channels=channels, class_names=tuple(class_names or ()),
            voxel_size=None if voxel_size is None else tuple(float(v) for v in voxel_size),
            history={"loss": [], "val_dice": [], "val_iteration": [], "best_val_dice": None})
        self.start_iteration = 0
        self.optimizer_state = None

    def _init_from(self, init: SegmentationModel, painted, channels, resume) -> None:
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
        from .predict import predict_volume

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
        """A first segmentation in seconds, before the network has learnt anything: a random
        forest on multiscale filter features, fit on the current strokes (see ``forest.py``).

        Args:
            region: the part to segment; the whole volume when None or when the volume has at
                most :data:`QUICK_PREVIEW_VOXELS` voxels.
        """
        from .forest import forest_predict

        shape = self.sampler.shape
        if region is None or np.prod(shape) <= QUICK_PREVIEW_VOXELS:
            region = tuple(slice(0, n) for n in shape)
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))
        with compute_threads():
            forest, image = self._fit_forest(self.sampler.annotations.index)
            probs = forest_predict(forest, _Region(image, region))
        return Preview(region, self.model.label_lut()[probs.argmax(0)], 0)

    def self_train(self, iteration: int) -> Preview | None:
        """One self-training round: predict the whole volume with the current network; voxels
        it gives a probability of at least ``pseudo_threshold`` become targets where there is no
        stroke, until the next round. Returns the prediction as a :class:`Preview` (None when
        the volume is above :data:`SELF_TRAINING_VOXELS`, where rounds are skipped)."""
        from .predict import predict_volume

        shape = self.sampler.shape
        if np.prod(shape) > SELF_TRAINING_VOXELS:
            log.info("Self-training skipped: the volume has more than %d voxels.",
                     SELF_TRAINING_VOXELS)
            return None
        net = self.model.network
        net.eval()
        try:
            probs = predict_volume(net, self.model.prepare(np.asarray(self.sampler.image)),
                                   patch_size=self.model.window(shape), overlap=0.25, batch_size=2,
                                   device=self.device, probabilities=True, amp=self.config.amp)
        finally:
            net.train()
        if probs.shape[0] == 1:  # one sigmoid channel: the probability of the second class
            probs = np.concatenate([1 - probs, probs])
        if self.config.self_training_forest and np.prod(shape) <= QUICK_PREVIEW_VOXELS:
            forest = self._forest_probabilities()
            if forest.shape == probs.shape:  # every class has training strokes
                probs = (probs + forest) / 2
        classes = probs.argmax(0)
        sure = probs.max(0) >= self.config.pseudo_threshold
        pseudo = np.where(sure, classes + 1, 0).astype(np.int16)
        self.sampler.set_pseudo_labels(pseudo, seed=self.config.seed + iteration)
        self.model.history.setdefault("self_training", []).append(iteration)
        log.info("Self-training at iteration %d: %.0f%% of the voxels pseudo-labelled.",
                 iteration, 100 * sure.mean())
        return Preview(tuple(slice(0, n) for n in shape), self.model.label_lut()[classes], iteration)

    def _forest_probabilities(self) -> np.ndarray:
        """``(K, Z, Y, X)`` probabilities of a random forest fit on the current strokes: a second
        opinion for the pseudo-labels, right where the network is wrong but sure (on the
        nuclei sample, seed 2 of bench_quality: 0.826 with the network alone, 0.854 with both)."""
        from .forest import forest_predict

        index = self.sampler.annotations.index
        forest, image = self._fit_forest(np.where(index > 0, index, 0))
        return forest_predict(forest, image)

    def _fit_forest(self, index: np.ndarray):
        """A forest fit on ``index`` (class + 1, 0 = none) and the ``(C, Z, Y, X)`` image view."""
        from .forest import fit_forest

        image = self.sampler.image if self.sampler.has_channels else _Channel(self.sampler.image)
        forest = fit_forest(image, index, self.model.normalization, spacing=self.model.voxel_size,
                            seed=self.config.seed)
        return forest, image

    def run(self) -> Generator[TrainProgress, TrainerUpdate | np.ndarray | None, TrainResult]:
        from .train_loop import training_loop

        return (yield from training_loop(self))


class _Region:
    """A ``(C, z, y, x)`` view of one region of a ``(C, Z, Y, X)`` source."""

    def __init__(self, source, region: tuple[slice, slice, slice]) -> None:
        self.source, self.region = source, region
        self.shape = (source.shape[0],) + tuple(s.stop - s.start for s in region)

    def __getitem__(self, key):
        ch, *spatial = key
        inner = tuple(slice(r.start + k.start, r.start + k.stop) for r, k in zip(self.region, spatial))
        return self.source[(ch,) + inner]


class _Channel:
    """A ``(1, Z, Y, X)`` view of a lazy 3D source, reading only what is indexed."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape = (1,) + tuple(source.shape)

    def __getitem__(self, key):
        return np.asarray(self.source[key[1:]])[None] if isinstance(key, tuple) else \
            np.asarray(self.source[:])[None][key]


def batch_rng(seed: int, iteration: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random sources of one iteration, a pure function of ``(seed, iteration)``."""
    rng = np.random.default_rng([seed, iteration])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def self_training_starts(config: TrainConfig) -> list[int]:
    """Iterations at which self-training rounds start: the first half of the run learns from
    the strokes alone, the second half is split evenly between ``config.self_training`` rounds
    (800 iterations, 2 rounds: 400 and 600)."""
    n, rounds = config.iterations, config.self_training
    starts = {int(n * (1 - 0.5 * (rounds - r) / rounds)) for r in range(rounds)} if rounds else set()
    return sorted(s for s in starts if s > 0)


def eta(seconds_per_step: float, remaining: int) -> float:
    return 0.0 if not math.isfinite(seconds_per_step) else seconds_per_step * remaining


def propose_patch_size(shape, voxel_size=None, *, max_edge: int = 48,
                       dims: int = 3) -> tuple[int, int, int]:
    """A training patch for an image of ``shape`` ``(Z, Y, X)``: multiples of 8, at most ``max_edge``
    in y/x and 60% of the image along each axis (at least 8), so patches land at varied
    positions; z shortened by the voxel-size ratio so a patch covers about the same physical
    extent along every axis. On the nuclei sample (31, 61, 57) this gives (16, 32, 32), which
    trained as well as (16, 48, 48) and better than (24, 48, 48) in half the time.

    ``dims=2`` (2.5D): square training slices of 60% of the larger of Y and X, at most
    ``2 * max_edge``, and the prediction window as deep as the slices are wide (or the image)."""
    if dims == 2:
        edge = max(8, min(2 * max_edge, int(0.6 * max(shape[1:])) // 8 * 8))
        return (max(8, min(edge, -(-int(shape[0]) // 8) * 8)), edge, edge)
    vs = np.asarray(voxel_size if voxel_size is not None else (1.0, 1.0, 1.0), float)
    ratio = vs / vs[1:].min()
    edges = []
    for n, r in zip(shape, ratio):
        edge = max(8, int(max_edge / r) // 8 * 8)
        edges.append(max(8, min(edge, int(0.6 * n) // 8 * 8)))
    return tuple(edges)
