"""A time budget for a training run: its total iterations from the measured speed of this machine.

The plan (:mod:`.plan`) cannot know how long a step takes here, so a run with a budget
(``TrainConfig.minutes``) starts with ``iterations`` as a cap and the training loop times its
first steps: after :data:`WARMUP_STEPS` untimed steps (the first CUDA / oneDNN kernel selection)
it times :data:`MEASURED_STEPS` more and one validation, and then fixes the total once::

    total = min(cap, max(FLOOR, done + (budget - spent - validations - self-training) / step))

The run's config then holds that total and no budget (:func:`fixed_config`), so the model file
records the real number, ``--resume`` continues exactly and the learning-rate schedule and the
self-training rounds follow from it. Every step before the total is fixed lies within the
learning-rate warm-up, which does not depend on the total, so the run is the same as one given
that many iterations from the start.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .config import TrainConfig

DEFAULT_MINUTES = {"cpu": 3.0, "gpu": 1.0}  # the targets: a result within 3 min (1 on a GPU)
ITERATIONS_CAP = 800  # a budget run's most steps: what bench_quality validated on small volumes
FLOOR = 50  # a budget run's fewest steps, however slow the machine
WARMUP_STEPS = 2  # not timed
MEASURED_STEPS = 3
FIX_AFTER = WARMUP_STEPS + MEASURED_STEPS  # steps of a session before its total is fixed
# A budget run whose total would come below this trains on the strokes alone, its rounds' time
# given to steps: rounds on a network this young teach it its own mistakes (neurites, 100 steps:
# the thin class's Dice 0.36 without rounds, 0.01 with them; benchmarks/README.md).
MIN_SELF_TRAINING_STEPS = 200
# A self-training round, estimated before it runs: the whole-volume prediction costs about what
# its windows' forwards cost at the speed of the timed validation (measured 0.3 to 1x on the
# bench_quality volumes), and the forest (features, fit, prediction) about a second plus
# 20 us a voxel on a 2-core CPU (7 to 45 us under loads of 2 to 9).
ROUND_OVERHEAD = 1.0
FOREST_FIXED_S = 1.0
FOREST_S_PER_VOXEL = 2e-5
FOREST_VOXELS = 8_000_000  # above this, rounds use no forest (see self_training.py)


def default_minutes(device_kind: str) -> float:
    """The budget when the user sets neither iterations nor minutes (``"cpu"`` or ``"gpu"``)."""
    return DEFAULT_MINUTES["gpu" if device_kind in ("cuda", "mps", "gpu") else "cpu"]


def default_validate_every(iterations: int) -> int:
    """A tenth of the run, between 5 and 50 steps."""
    return int(np.clip(iterations // 10, 5, 50))


@dataclass(frozen=True)
class Costs:
    """What the first steps of a session measured.

    Attributes:
        step_s: seconds per training step (median of the timed steps).
        validation_s: seconds of one validation (0 without held-out strokes).
        round_s: estimated seconds of one self-training round.
    """

    step_s: float
    validation_s: float = 0.0
    round_s: float = 0.0


@dataclass(frozen=True)
class RunEstimate:
    """How long a run takes, known once its first steps are timed.

    Attributes:
        iterations: the run's total steps (fixed).
        step_s: measured seconds per step.
        seconds: expected wall time of the whole run (this session), from the Trainer's creation.
        minutes: the time budget the total was fixed from; None when the iterations were given.
        without_self_training: the budget was too short for self-training rounds.
    """

    iterations: int
    step_s: float
    seconds: float
    minutes: float | None = None
    without_self_training: bool = False

    def describe(self) -> str:
        """``"Training for about 3 minutes (≈ 620 iterations at 0.29 s each)"``."""
        if self.minutes is not None:
            floor = (f"; {FLOOR} is the fewest a time budget of {self.minutes:g} minutes gets"
                     if self.iterations == FLOOR and self.seconds > 60 * self.minutes else "")
            alone = ("; too few for self-training: on the strokes alone"
                     if self.without_self_training else "")
            return (f"Training for {about(self.seconds)} (≈ {self.iterations} iterations at "
                    f"{self.step_s:.2g} s each{floor}{alone})")
        return (f"Training {self.iterations} iterations: {about(self.seconds)} "
                f"({self.step_s:.2g} s each)")


def about(seconds: float) -> str:
    """``"about 3 minutes"``, ``"about 2.5 minutes"``, ``"about 40 seconds"``."""
    if not math.isfinite(seconds):
        return "an unknown time"
    if seconds < 60:
        s = max(1, round(seconds / 5) * 5 if seconds >= 10 else round(seconds))
        return f"about {s} second{'s' if s != 1 else ''}"
    minutes = seconds / 60
    m = round(minutes * 2) / 2 if minutes < 10 else round(minutes)
    text = f"{m:g}"
    return f"about {text} minute{'s' if text != '1' else ''}"


def _with_total(config: TrainConfig, total: int) -> TrainConfig:
    return fixed_config(config, total) if config.minutes is not None else \
        dataclasses.replace(config, iterations=int(total))


def remaining_seconds(config: TrainConfig, total: int, done: int, costs: Costs) -> float:
    """Expected seconds from step ``done`` to the end of a run of ``total`` steps: the steps, the
    validations (:func:`.training.schedule.validates_after`) and the self-training rounds."""
    from .training.schedule import self_training_starts, validates_after

    cfg = _with_total(config, total)
    validations = sum(validates_after(cfg, i) for i in range(done + 1, total + 1))
    rounds = sum(r > done for r in self_training_starts(cfg))
    return ((total - done) * costs.step_s + validations * costs.validation_s
            + rounds * costs.round_s)


def budget_total(config: TrainConfig, done: int, spent_s: float, costs: Costs,
                 floor: int = FLOOR) -> int:
    """The total iterations of a budget run (``config.minutes``, ``config.iterations`` the cap)
    after ``done`` steps and ``spent_s`` seconds: as many as fit, at least ``floor`` (and
    ``done``), at most the cap."""
    cap, budget = config.iterations, 60.0 * config.minutes
    # the steps alone bound it; the validations (their interval follows the total) and the
    # rounds take some back: the largest total below that bound that fits
    bound = min(cap, done + int(max(0.0, budget - spent_s) / max(costs.step_s, 1e-9)))
    lo = next((n for n in range(bound, done, -1)
               if spent_s + remaining_seconds(config, n, done, costs) <= budget), done)
    return max(done, min(cap, max(floor, lo)))


def budget_config(config: TrainConfig, done: int, spent_s: float, costs: Costs) -> TrainConfig:
    """The config of a budget run once its first ``done`` steps are timed: its total fixed by
    :func:`budget_total`, without self-training when that total is below
    :data:`MIN_SELF_TRAINING_STEPS` (the total then planned again without the rounds)."""
    total = budget_total(config, done, spent_s, costs)
    if config.self_training and total < MIN_SELF_TRAINING_STEPS:
        config = dataclasses.replace(config, self_training=0)
        total = budget_total(config, done, spent_s, costs)
    return fixed_config(config, total)


def fixed_config(config: TrainConfig, total: int) -> TrainConfig:
    """``config`` with its total fixed: ``total`` iterations, no budget, and validations every
    tenth of the run unless the config sets their interval."""
    every = config.validate_every or default_validate_every(total)
    return dataclasses.replace(config, iterations=int(total), minutes=None, validate_every=every)


def steps_for_minutes(minutes: float, step_s: float, cap: int = ITERATIONS_CAP,
                      floor: int = FLOOR) -> int:
    """Steps that fit ``minutes`` at ``step_s`` seconds each, within ``[floor, cap]`` (for a
    resumed run, planned from the step time it recorded; its validations are not counted)."""
    return int(np.clip(int(60.0 * minutes / max(step_s, 1e-9)), floor, cap))


def round_seconds(shape, window, passes: int, forward_s_per_voxel: float,
                  forest: bool) -> float:
    """Estimated seconds of one self-training round on a volume of spatial ``shape``: the
    network over every sliding window (overlap 0.25) ``passes`` times, and the forest's
    features, fit and prediction when ``forest`` (volumes up to :data:`FOREST_VOXELS`)."""
    from .prediction.windows import window_starts

    windows = math.prod(len(window_starts(int(n), int(w), 0.25)) for n, w in zip(shape, window))
    network = ROUND_OVERHEAD * windows * math.prod(window) * passes * forward_s_per_voxel
    voxels = math.prod(int(n) for n in shape)
    if not forest or voxels > FOREST_VOXELS:
        return network
    return network + FOREST_FIXED_S + FOREST_S_PER_VOXEL * voxels
