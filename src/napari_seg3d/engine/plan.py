"""The plan of a training run: the network, the patch, the batch and the schedule for an image,
its voxel size, the strokes, the user's settings and the device.

The command line and the Train widget only collect what the user set and call
:func:`plan_training`, so the same inputs give the same run::

    plan = plan_training(image.shape, labels, voxel_size=(2.0, 0.5, 0.5),
                         settings={"minutes": 2})  # or {"iterations": 300}
    trainer = Trainer(image, labels, plan.train_config, model_config=plan.model_config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .budget import (
    ITERATIONS_CAP,
    default_minutes,
    default_validate_every,
    steps_for_minutes,
)
from .config import ModelConfig, TrainConfig
from .devices import resolve_device
from .models import MODELS, anisotropic_pooling
from .schema import check_depth, check_settings

if TYPE_CHECKING:
    from .model_file import SegmentationModel

#: network settings a plan takes besides the fields of :class:`TrainConfig`
NETWORK_SETTINGS = {"dims": 3, "architecture": "unet", "base_filters": 16, "levels": None}
PATCH_EDGE = {"cpu": 48, "gpu": 96}  # largest y/x patch edge: a 2 x 64^3 CPU step takes seconds


@dataclass(frozen=True)
class TrainingPlan:
    """What :func:`plan_training` decided.

    Attributes:
        train_config: every training setting of the run.
        model_config: the network to build; None when the run starts from a model.
        start_iteration: where the run starts (the resumed model's iteration, else 0).
    """

    train_config: TrainConfig
    model_config: ModelConfig | None
    start_iteration: int = 0


def plan_training(image_shape, labels=None, *, channels: int = 1, voxel_size=None,
                  settings: Mapping[str, Any] | None = None,
                  init: SegmentationModel | None = None, resume: bool = False) -> TrainingPlan:
    """Plan a training run.

    Args:
        image_shape: ``(Z, Y, X)`` (or ``(C, Z, Y, X)``: the last three axes count).
        labels: the strokes ``(Z, Y, X)`` (0 = not painted), or the number of painted classes;
            needed for a new model (its output channels).
        channels: image channels.
        voxel_size: ``(z, y, x)``, or None for isotropic voxels.
        settings: what the user set: any :class:`TrainConfig` field and the network settings
            of :data:`NETWORK_SETTINGS`; everything else is planned. With ``init``, settings not
            given come from the model's own training settings. ``iterations`` (exactly that
            many steps) wins over ``minutes`` (a time budget); with neither, the run has the
            default budget of the device (see :func:`_steps`).
        init: a model to fine-tune, or with ``resume`` to continue exactly (``iterations`` then
            counts the steps added).
        resume: continue ``init`` exactly.

    Returns:
        The :class:`TrainingPlan`.

    Raises:
        ValueError: an unknown setting, or one that contradicts ``init``, in a sentence.
    """
    settings = check_settings({k: v for k, v in (settings or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(NETWORK_SETTINGS)
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"Unknown training settings: {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(names))}.")
    shape = tuple(int(n) for n in image_shape)[-3:]
    device = settings.get("device", "auto")
    base = init.train_config if init is not None else TrainConfig()
    if init is not None:
        dims = init.dims
        if settings.get("dims", dims) != dims:
            other = settings["dims"]
            raise ValueError(f"The model to start from is a {dims}D network; a {other}D network "
                             f"(--dims {other}, or the Network box of the Train widget) needs a "
                             "new model.")
        patch = tuple(settings.get("patch_size", init.patch_size))
    else:
        dims = int(settings.get("dims", NETWORK_SETTINGS["dims"]))
        patch = tuple(settings.get("patch_size") or propose_patch_size(
            shape, voxel_size, dims=dims, max_edge=patch_edge(device)))
    start = init.iteration if (init is not None and resume) else 0
    steps = _steps(settings, base, init, resume, device)
    given = {k: v for k, v in settings.items() if k in base.to_dict()
             and k not in ("patch_size", "iterations", "minutes", "validate_every", "device")}
    if init is None:
        given.setdefault("batch_size", default_batch_size(dims))
    cfg = dataclasses.replace(base, patch_size=patch, device=device, **steps, **given)
    model_config = None
    if init is None:
        model_config = default_model_config(
            channels, output_channels(labels, cfg.loss), patch, voxel_size,
            base_filters=int(settings.get("base_filters", NETWORK_SETTINGS["base_filters"])),
            levels=settings.get("levels"), dims=dims,
            architecture=str(settings.get("architecture", NETWORK_SETTINGS["architecture"])))
    return TrainingPlan(cfg, model_config, start)


def output_channels(labels, loss: str) -> int:
    """The network's outputs: one (a sigmoid) for the binary losses, else one per class painted
    in ``labels`` (an array of strokes, or the number of classes)."""
    from .training.losses import is_binary_loss

    if is_binary_loss(loss):
        return 1
    if labels is None:
        raise ValueError("A new model needs the strokes (or the number of classes) to plan.")
    if np.isscalar(labels):
        return int(labels)
    labels = np.asarray(labels)
    return len(np.unique(labels[labels > 0]))


def device_kind(device: str = "auto") -> str:
    """``"gpu"`` or ``"cpu"``: where ``device`` (``auto``: the GPU when there is one) runs."""
    try:
        kind = resolve_device(device).type
    except ValueError:  # an unavailable device: the trainer says so; plan as on a CPU
        kind = "cpu"
    return "gpu" if kind in ("cuda", "mps") else "cpu"


def patch_edge(device: str = "auto") -> int:
    """The largest y/x edge of a proposed training patch on ``device``."""
    return PATCH_EDGE[device_kind(device)]


def _steps(settings, base: TrainConfig, init, resume: bool, device: str) -> dict[str, Any]:
    """The ``iterations``, ``minutes`` and ``validate_every`` of a run (see :func:`plan_training`).

    Iterations given: exactly that many steps (added to a resumed run's), no budget. Else a
    resumed run stopped before its total continues to it (exactly, as planned); a resumed run
    that had ended gets the steps of the budget at the step time it recorded; a new or
    fine-tuned run gets the budget (``minutes``, or :func:`.budget.default_minutes` of the
    device) and at most :data:`.budget.ITERATIONS_CAP` steps, its total fixed as it trains."""
    start = init.iteration if (init is not None and resume) else 0
    every = settings.get("validate_every")
    if "iterations" in settings:
        run = int(settings["iterations"])
        own = base.validate_every if resume and base.validate_every else None
        return {"iterations": start + run, "minutes": None,
                "validate_every": every or own or default_validate_every(run)}
    if resume and start < base.iterations:
        return {"iterations": base.iterations, "minutes": base.minutes,
                "validate_every": every if every is not None else base.validate_every}
    minutes = settings.get("minutes")
    minutes = float(default_minutes(device_kind(device)) if minutes is None else minutes)
    if not 0 < minutes < float("inf"):
        raise ValueError(f"The time budget must be a positive number of minutes, got {minutes}.")
    if resume:
        step_s = init.history.get("step_seconds")
        if not step_s:
            raise ValueError("This model file does not record how long a step took, so a time "
                             "budget cannot plan the steps to add: give the iterations to add "
                             "(--iterations, or the Iterations box).")
        run = steps_for_minutes(minutes, float(step_s))
        return {"iterations": start + run, "minutes": None,
                "validate_every": every or base.validate_every or default_validate_every(run)}
    return {"iterations": ITERATIONS_CAP, "minutes": minutes,
            "validate_every": every if every is not None else 0}


def window_for(patch_size, dims: int, shape) -> tuple[int, int, int]:
    """The sliding window of a model for an image of spatial ``shape``: the training patch; for
    a 2D network (``dims=2``) no larger than the image (its slices need no padding, and an
    image one slice thick stays a 2D image). Its depth is also the depth of a preview."""
    if dims == 3:
        return tuple(int(p) for p in patch_size)
    return tuple(min(int(p), int(s)) for p, s in zip(patch_size, shape))


def windows_per_pass(batch_size: int, patch_size, window) -> int:
    """Windows per forward pass for ``batch_size`` patches' worth of voxels (at least one)."""
    return max(1, int(batch_size * np.prod(patch_size) // np.prod(window)))


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
    chosen = levels is not None
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
    if chosen:  # a network deeper than its patch trains for nothing, then fails inside torch
        check_depth(levels, pool, size)
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
