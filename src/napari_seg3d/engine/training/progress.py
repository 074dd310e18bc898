"""What a training run reports (:class:`TrainProgress`, :class:`Preview`, :class:`TrainResult`)
and what its caller sends in (:class:`TrainerUpdate`): small frozen records, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..budget import RunEstimate
from ..model_file import SegmentationModel


@dataclass(frozen=True)
class TrainProgress:
    """One training iteration's report. ``val_dice`` (one value per class) is set on validation
    iterations only; ``is_best`` when that validation gave a new best model. ``iterations`` is
    the run's total: with a time budget, the cap until the first steps are timed, then the total
    fixed from them (it changes once). ``estimate`` says how long the run takes once its first
    steps are timed; ``ended_early`` marks the last record of a run that ends early."""

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
    estimate: RunEstimate | None = None
    ended_early: bool = False


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
    ``last``: the final state, with the optimizer state for exact resumption. ``stopped``: by
    :meth:`Trainer.request_stop`; ``ended_early``: the iteration at which the run ended because
    the held-out strokes stopped improving (see :mod:`.early_stop`), else None."""

    best: SegmentationModel
    last: SegmentationModel
    stopped: bool
    ended_early: int | None = None
