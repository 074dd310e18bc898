"""The quality route beside the network: the random-forest preview right after *Train*, and the
self-training rounds in which the network (with a forest's second opinion) labels the voxels it
is sure of."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..prediction.blocks import plan_blocks
from ..prediction.sliding_window import iter_predict_volume
from ..threads import compute_threads
from .forest import _MAX_PER_CLASS, fit_samples, forest_predict, predict_region
from .forest_samples import coords_samples
from .progress import Preview
from .pseudo import PseudoLabels
from .views import ChannelView, RegionView

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

QUICK_PREVIEW_VOXELS = 8_000_000  # larger volumes get the quick preview of a region only
ROUND_VOXELS = 4_000_000  # voxels a self-training round predicts: larger volumes, sampled blocks
ROUND_BLOCK = (64, 128, 128)  # block cores of a round (the forest's blocks, too)
ROUND_OVERLAP = 0.25  # window overlap of a round's predictions
FOREST_MIN_VOXELS = 10  # stroke voxels of every class a model's forest needs (else none kept)
KEPT_TREES = 32  # trees of the forest a model file keeps (see final_forest)


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
        forest, image = _fit_forest(trainer, _stroke_coords(trainer, held_out=True))
        probs = forest_predict(forest, RegionView(image, region))
    return Preview(region, trainer.model.label_lut()[probs.argmax(0)], 0)


def self_training_round(trainer: Trainer, iteration: int) -> Preview | None:
    """One self-training round: the current network (and, with ``self_training_forest``, a
    random forest fit on the current strokes) segments blocks of the volume; voxels given a
    probability of at least ``pseudo_threshold`` become targets where there is no stroke, until
    the next round.

    The blocks are those of the sliding window's block plan, so each is predicted exactly as in
    a prediction of the whole volume. Volumes of at most :data:`ROUND_VOXELS` voxels are
    predicted whole; larger ones on blocks drawn at random (a new draw each round) up to that
    many voxels, so memory and time per round follow the budget, not the volume.

    Returns:
        The prediction as a :class:`Preview` when the round covered the whole volume, else None.
    """
    cfg, model, sampler = trainer.config, trainer.model, trainer.sampler
    chosen, plan = round_blocks(sampler.shape, model.window(sampler.shape),
                                seed=cfg.seed + iteration)
    probs = _network_blocks(trainer, plan, chosen)
    forest = _fit_forest(trainer, _stroke_coords(trainer, held_out=False)) \
        if cfg.self_training_forest else None
    whole = len(chosen) == len(plan)
    regions, labels, shown, sure_voxels = [], [], [], 0
    for block in (plan[i] for i in chosen):
        p = probs.pop(block.index)
        if p.shape[0] == 1:  # one sigmoid channel: the probability of the second class
            p = np.concatenate([1 - p, p])
        if forest is not None and forest[0].n_classes == p.shape[0]:  # every class has strokes
            p = (p + predict_region(forest[0], forest[1], block.core)) / 2
        classes, sure = p.argmax(0), p.max(0) >= cfg.pseudo_threshold
        regions.append(block.core)
        labels.append(np.where(sure, classes + 1, 0).astype(np.int8))
        sure_voxels += int(sure.sum())
        if whole:
            shown.append(classes.astype(np.int16))
    pseudo = PseudoLabels.build(regions, labels, len(model.class_values), seed=cfg.seed + iteration)
    sampler.set_pseudo_labels(pseudo)
    model.history.setdefault("self_training", []).append(iteration)
    log.info("Self-training at iteration %d: %d of %d blocks, %.0f%% of their voxels "
             "pseudo-labelled.", iteration, len(chosen), len(plan),
             100 * sure_voxels / max(pseudo.voxels, 1))
    if not whole:
        return None
    classes = np.zeros(sampler.shape, np.int16)
    for region, c in zip(regions, shown):
        classes[region] = c
    return Preview(tuple(slice(0, n) for n in sampler.shape), model.label_lut()[classes],
                   iteration)


def final_forest(trainer: Trainer):
    """The random forest a model file keeps beside the network: fit on every stroke (held-out
    ones included) at the end of the run, so that a prediction can average its probabilities
    with the network's (see :func:`.model_file.with_forest`; on the bench_scale volumes of
    10^7 voxels after a 3-minute run: tissue 0.852 against 0.834 for the forest and 0.807 for
    the network alone, textures 0.867 against 0.801 and 0.812). None when some class has
    fewer than :data:`FOREST_MIN_VOXELS` stroke voxels (the forest could not say it).
    It has :data:`KEPT_TREES` trees: averaged in, 32 trees gave the same Dice as 100 (on those
    volumes +0.0004 / +0.0002 / -0.0006) and made the prediction 12-15 % faster
    (``benchmarks/bench_forest_blend.py``). Its samples come from the strokes' coordinates, so
    no array the size of the volume is made (at 5x10^8 voxels each one is 477 MiB)."""
    coords = _stroke_coords(trainer, held_out=True)
    n_classes = len(trainer.model.class_values)
    if len(coords) != n_classes or min(len(c) for c in coords) < FOREST_MIN_VOXELS:
        return None
    with compute_threads():
        forest, _ = _fit_forest(trainer, coords, n_trees=KEPT_TREES)
    return forest if forest.classes == tuple(range(n_classes)) else None


def round_blocks(shape, window, *, seed: int,
                 budget: int | None = None) -> tuple[list[int], list]:
    """The blocks a round predicts: ``(indices, plan)`` of the sliding window's block plan of
    ``shape`` (blocks of :data:`ROUND_BLOCK`); all of them when the volume has at most
    ``budget`` (:data:`ROUND_VOXELS`) voxels, else a random draw (by ``seed``) up to it."""
    budget = ROUND_VOXELS if budget is None else budget
    plan = plan_blocks(shape, window, ROUND_OVERLAP, ROUND_BLOCK)
    if np.prod(shape) <= budget:
        return [b.index for b in plan], plan
    order = np.random.default_rng([seed, 11]).permutation(len(plan))
    chosen, voxels = [], 0
    for i in order:
        size = int(np.prod([s.stop - s.start for s in plan[i].core]))
        if chosen and voxels + size > budget:
            continue
        chosen.append(int(i))
        voxels += size
    return sorted(chosen), plan


def _network_blocks(trainer: Trainer, plan, chosen: list[int]) -> dict[int, np.ndarray]:
    """``{block index: (K, z, y, x) probabilities of its core}`` from the current network."""
    model, net, sampler = trainer.model, trainer.model.network, trainer.sampler
    out: dict[int, np.ndarray] = {}
    net.eval()
    try:
        for r in iter_predict_volume(
                net, sampler.image, patch_size=model.window(sampler.shape),
                overlap=ROUND_OVERLAP, batch_size=2, device=trainer.device, probabilities=True,
                amp=trainer.config.amp, block_shape=ROUND_BLOCK, blocks=chosen,
                normalize=model.normalization.apply):
            core = plan[r.block].core
            if r.block not in out:
                out[r.block] = np.zeros((r.probabilities.shape[0],)
                                        + tuple(c.stop - c.start for c in core), np.float32)
            local = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(r.slices, core))
            out[r.block][(slice(None),) + local] = r.probabilities
    finally:
        net.train()
    return out


def _stroke_coords(trainer: Trainer, *, held_out: bool) -> list[np.ndarray]:
    """The ``(N_k, 3)`` stroke voxels of each class: the training ones, and with ``held_out``
    the held-out ones too (from the annotations' coordinates: no volume-sized array is made,
    each of which is 477 MiB at 5x10^8 voxels)."""
    ann = trainer.sampler.annotations
    if not held_out:
        return list(ann.train_coords)
    return [np.concatenate([t, v]) for t, v in zip(ann.train_coords, ann.val_coords)]


def _forest_probabilities(trainer: Trainer) -> np.ndarray:
    """``(K, Z, Y, X)`` probabilities of a random forest fit on the current strokes: a second
    opinion for the pseudo-labels, right where the network is wrong but sure (on the nuclei
    sample, seed 2 of bench_quality: 0.826 with the network alone, 0.854 with both)."""
    forest, image = _fit_forest(trainer, _stroke_coords(trainer, held_out=False))
    return forest_predict(forest, image)


def _fit_forest(trainer: Trainer, coords: list[np.ndarray], n_trees: int = 100):
    """A forest of ``n_trees`` fit on at most :data:`.forest._MAX_PER_CLASS` voxels a class of
    ``coords`` (see :func:`_stroke_coords`), and the ``(C, Z, Y, X)`` image view."""
    sampler, model, seed = trainer.sampler, trainer.model, trainer.config.seed
    image = sampler.image if sampler.has_channels else ChannelView(sampler.image)
    forest = fit_samples(image, coords_samples(coords, _MAX_PER_CLASS, seed),
                         model.normalization, spacing=model.voxel_size, n_trees=n_trees,
                         seed=seed)
    return forest, image
