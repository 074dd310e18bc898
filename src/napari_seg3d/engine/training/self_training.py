"""The quality route beside the network: the random-forest preview right after *Train*, and the
self-training rounds in which the network (with a forest's second opinion) labels the voxels it
is sure of."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..prediction.sliding_window import predict_volume
from ..threads import compute_threads
from .forest import fit_forest, forest_predict
from .progress import Preview
from .views import ChannelView, RegionView

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

QUICK_PREVIEW_VOXELS = 8_000_000  # larger volumes get the quick preview of a region only
SELF_TRAINING_VOXELS = 16_000_000  # larger volumes train on strokes only (no whole-volume pass)


def quick_preview(trainer: Trainer, region: tuple[slice, slice, slice] | None = None) -> Preview:
    """A first segmentation in seconds, before the network has learnt anything: a random forest
    on multiscale filter features, fit on the current strokes (see :mod:`.forest`).

    Args:
        trainer: the run whose image, strokes and classes to use.
        region: the part to segment; the whole volume when None or when the volume has at most
            :data:`QUICK_PREVIEW_VOXELS` voxels.
    """
    shape = trainer.sampler.shape
    if region is None or np.prod(shape) <= QUICK_PREVIEW_VOXELS:
        region = tuple(slice(0, n) for n in shape)
    region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))
    with compute_threads():
        forest, image = _fit_forest(trainer, trainer.sampler.annotations.index)
        probs = forest_predict(forest, RegionView(image, region))
    return Preview(region, trainer.model.label_lut()[probs.argmax(0)], 0)


def self_training_round(trainer: Trainer, iteration: int) -> Preview | None:
    """One self-training round: predict the whole volume with the current network; voxels it
    gives a probability of at least ``pseudo_threshold`` become targets where there is no
    stroke, until the next round. Returns the prediction as a :class:`Preview` (None when the
    volume is above :data:`SELF_TRAINING_VOXELS`, where rounds are skipped)."""
    cfg, model, sampler = trainer.config, trainer.model, trainer.sampler
    shape = sampler.shape
    if np.prod(shape) > SELF_TRAINING_VOXELS:
        log.info("Self-training skipped: the volume has more than %d voxels.",
                 SELF_TRAINING_VOXELS)
        return None
    net = model.network
    net.eval()
    try:
        probs = predict_volume(net, model.prepare(np.asarray(sampler.image)),
                               patch_size=model.window(shape), overlap=0.25, batch_size=2,
                               device=trainer.device, probabilities=True, amp=cfg.amp)
    finally:
        net.train()
    if probs.shape[0] == 1:  # one sigmoid channel: the probability of the second class
        probs = np.concatenate([1 - probs, probs])
    if cfg.self_training_forest and np.prod(shape) <= QUICK_PREVIEW_VOXELS:
        forest = _forest_probabilities(trainer)
        if forest.shape == probs.shape:  # every class has training strokes
            probs = (probs + forest) / 2
    classes = probs.argmax(0)
    sure = probs.max(0) >= cfg.pseudo_threshold
    pseudo = np.where(sure, classes + 1, 0).astype(np.int16)
    sampler.set_pseudo_labels(pseudo, seed=cfg.seed + iteration)
    model.history.setdefault("self_training", []).append(iteration)
    log.info("Self-training at iteration %d: %.0f%% of the voxels pseudo-labelled.",
             iteration, 100 * sure.mean())
    return Preview(tuple(slice(0, n) for n in shape), model.label_lut()[classes], iteration)


def _forest_probabilities(trainer: Trainer) -> np.ndarray:
    """``(K, Z, Y, X)`` probabilities of a random forest fit on the current strokes: a second
    opinion for the pseudo-labels, right where the network is wrong but sure (on the nuclei
    sample, seed 2 of bench_quality: 0.826 with the network alone, 0.854 with both)."""
    index = trainer.sampler.annotations.index
    forest, image = _fit_forest(trainer, np.where(index > 0, index, 0))
    return forest_predict(forest, image)


def _fit_forest(trainer: Trainer, index: np.ndarray):
    """A forest fit on ``index`` (class + 1, 0 = none) and the ``(C, Z, Y, X)`` image view."""
    sampler = trainer.sampler
    image = sampler.image if sampler.has_channels else ChannelView(sampler.image)
    forest = fit_forest(image, index, trainer.model.normalization,
                        spacing=trainer.model.voxel_size, seed=trainer.config.seed)
    return forest, image
