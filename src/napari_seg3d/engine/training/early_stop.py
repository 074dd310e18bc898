"""Ending a run early when the held-out strokes stop improving.

Only the last phase of a run counts: its last quarter, and after the last self-training round
began (see :func:`.schedule.last_phase_start`). Before a round, one that changes the targets is
still to come, and the held-out Dice of different rounds are not comparable (see
:mod:`.selection`); and before the last quarter, held-out strokes saturate while the Dice against
the truth still rises (on the nuclei sample without self-training, a rule counting from the start
stopped at 150 to 480 of 800 steps and lost 0.01 to 0.06 Dice; ``benchmarks/bench_early_stop.py``).
In the last phase the run validates four times as often (:func:`.schedule.last_phase_interval`)
and ends when the kept model's score (the best held-out Dice of the phase) has risen by at most
``delta`` over the last ``patience`` validations. New strokes sent in while it trains
redraw the held-out strokes, so the count starts again. ``benchmarks/bench_early_stop.py``
measures the rule against the dense truth.
"""

from __future__ import annotations

from collections.abc import Sequence

PATIENCE = 4  # validations without improvement
MIN_DELTA = 0.005  # an improvement of the kept score by at most this is none
ENDED_EARLY_REASON = "validation stopped improving"


class EarlyStop:
    """Decides, validation by validation, whether the run ends now.

    Args:
        start: the last phase holds the validations after ``start`` steps.
        patience: validations of the last phase over which the best score must rise.
        delta: the rise that counts as an improvement (more than this).
    """

    def __init__(self, start: int, patience: int = PATIENCE, delta: float = MIN_DELTA) -> None:
        self.start, self.patience, self.delta = start, patience, delta
        self.kept: list[float] = []  # the best score of the phase after each of its validations

    def reset(self) -> None:
        """Count again from the next validation (new strokes: new held-out strokes)."""
        self.kept = []

    def update(self, iteration: int, score: float) -> bool:
        """Record the held-out score of the validation after ``iteration`` steps; True when the
        run should end here. The best score of the phase is the score of the model the
        ``phase`` selection rule keeps (see :mod:`.selection`)."""
        if iteration <= self.start:
            return False
        self.kept.append(max(score, self.kept[-1]) if self.kept else score)
        if len(self.kept) <= self.patience:
            return False
        return self.kept[-1] - self.kept[-1 - self.patience] <= self.delta


def early_stop_iteration(iterations: Sequence[int], scores: Sequence[float], start: int,
                         patience: int = PATIENCE, delta: float = MIN_DELTA) -> int | None:
    """Replay a run's validations, its last phase after ``start`` steps: the iteration at which
    the rule ends it (None: never)."""
    stop = EarlyStop(start, patience, delta)
    return next((it for it, score in zip(iterations, scores) if stop.update(it, score)), None)
