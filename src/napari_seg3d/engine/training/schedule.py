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


def eta(seconds_per_step: float, remaining: int) -> float:
    return 0.0 if not math.isfinite(seconds_per_step) else seconds_per_step * remaining
