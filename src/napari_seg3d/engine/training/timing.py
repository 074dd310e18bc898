"""The first steps of a run, timed: what a step, a validation and a self-training round cost on
this machine now, the total of a budget run fixed from them (see :mod:`..budget`), and how long
the run will take."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from ..budget import (
    WARMUP_STEPS,
    Costs,
    RunEstimate,
    budget_config,
    remaining_seconds,
    round_seconds,
)
from .step import validate

if TYPE_CHECKING:
    from .trainer import Trainer

PASSES = {"fast": 1, "three": 3, "best": 12}  # 2D passes over a window, by planes


def measure_costs(trainer: Trainer, step_times, val_patches) -> Costs:
    """The median of ``step_times`` after the untimed warm-up steps, one validation on
    ``val_patches`` timed (its result dropped: validation changes nothing in the training), and
    from its speed the cost of a self-training round."""
    times = list(step_times[WARMUP_STEPS:]) or list(step_times)
    step_s = float(np.median(times))
    if not val_patches:
        return Costs(step_s)
    t0 = time.perf_counter()
    validate(trainer, val_patches)
    validation_s = time.perf_counter() - t0
    voxels = sum(math.prod(p[0].shape[1:]) for p in val_patches)
    cfg, shape = trainer.config, trainer.sampler.shape
    passes = PASSES[cfg.planes] if trainer.sliced else 1
    round_s = round_seconds(shape, trainer.model.window(shape), passes, validation_s / voxels,
                            forest=cfg.self_training_forest) if cfg.self_training else 0.0
    return Costs(step_s, validation_s, round_s)


def fix_run(trainer: Trainer, done: int, step_times, val_patches) -> RunEstimate:
    """Time the run after ``done`` steps; a budget run gets its total (``trainer.config`` and
    the model's config replaced, the history's ``"budget"`` recording how). Every run records
    its ``"step_seconds"``. Returns the estimate of the whole run."""
    costs = measure_costs(trainer, step_times, val_patches)
    cfg, history = trainer.config, trainer.model.history
    spent = time.perf_counter() - trainer.created
    if cfg.minutes is not None:
        trainer.config = trainer.model.train_config = budget_config(cfg, done, spent, costs)
        history["budget"] = {"minutes": cfg.minutes, "cap": cfg.iterations,
                             "iterations": trainer.config.iterations,
                             "self_training": trainer.config.self_training, "fixed_after": done,
                             "spent_seconds": spent, "step_seconds": costs.step_s,
                             "validation_seconds": costs.validation_s,
                             "round_seconds": costs.round_s}
    history["step_seconds"] = costs.step_s
    new = trainer.config
    seconds = spent + remaining_seconds(new, new.iterations, done, costs)
    return RunEstimate(new.iterations, costs.step_s, seconds, cfg.minutes,
                       without_self_training=new.self_training < cfg.self_training)
