"""The schedule of a run as pure functions of the iteration: learning rate, random sources,
self-training rounds, time left."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import TrainConfig


def learning_rate_at(iteration: int, total: int, base: float, warmup: int = 20) -> float:
    """Linear warm-up, then polynomial decay (power 0.9) to zero at ``total``."""
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    return base * max(0.0, 1.0 - iteration / max(total, 1)) ** 0.9


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


LAST_PHASE = 0.75  # the last phase of a run: its last quarter, after the last self-training round


def last_phase_start(config: TrainConfig) -> int:
    """Steps after which the last phase of a run begins: three quarters of the run, or the last
    self-training round if that comes later."""
    return max([int(LAST_PHASE * config.iterations), *self_training_starts(config)])


def last_phase_interval(config: TrainConfig) -> int | None:
    """Steps between validations in the last phase of a run that may end early: a fortieth of
    the run, at least 5 and at most ``validate_every`` (800 steps: every 20, against 50 before).
    None when the last phase is too short to hold more validations than the early stop's
    patience (there is then nothing to end early)."""
    from .early_stop import PATIENCE

    every = max(1, min(config.validate_every, max(5, config.iterations // 40)))
    long_enough = (config.iterations - last_phase_start(config)) // every > PATIENCE
    return every if config.early_stop and long_enough else None


def validates_after(config: TrainConfig, done: int) -> bool:
    """Whether the run validates after ``done`` steps: every ``validate_every`` steps, at the end,
    and with early stop every :func:`last_phase_interval` steps of the last phase."""
    every = config.validate_every  # 0: a time budget whose total is not fixed yet
    if done == config.iterations or (every and done % every == 0):
        return True
    if not every or done <= last_phase_start(config):
        return False
    last = last_phase_interval(config)
    return last is not None and done % last == 0


def eta(seconds_per_step: float, remaining: int) -> float:
    return 0.0 if not math.isfinite(seconds_per_step) else seconds_per_step * remaining
