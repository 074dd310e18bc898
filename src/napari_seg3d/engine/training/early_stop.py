"""Ending a run early when the held-out strokes stop improving.

Only the last phase of a run counts: after the last self-training round began (from the start
when self-training is off). Earlier, a round that changes the targets is still to come, and the
held-out Dice of different rounds are not comparable (see :mod:`.selection`). In the last phase
the run ends when the kept model's score (the best held-out Dice of the phase) has risen by at
most ``delta`` over the last ``patience`` validations. ``benchmarks/bench_early_stop.py``
measures the rule against the dense truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from .selection import ModelSelection

PATIENCE = 4  # validations without improvement
MIN_DELTA = 0.005  # an improvement of the kept score by at most this is none
ENDED_EARLY_REASON = "validation stopped improving"


def last_phase_start(rounds: Sequence[int]) -> int:
    """The iteration after which the last phase of a run begins (0 without self-training)."""
    return max(rounds, default=0)


class EarlyStop:
    """Decides, validation by validation, whether the run ends now.

    Args:
        start: the last phase holds the validations after ``start`` steps.
        patience: validations of the last phase over which the kept score must rise.
        delta: the rise that counts as an improvement (more than this).
    """

    def __init__(self, start: int, patience: int = PATIENCE, delta: float = MIN_DELTA) -> None:
        self.start, self.patience, self.delta = start, patience, delta
        self.kept: list[float] = []  # the kept score after each validation of the last phase

    def update(self, iteration: int, kept_score: float) -> bool:
        """Record the kept model's score after the validation at ``iteration``; True when the
        run should end here."""
        if iteration <= self.start:
            return False
        self.kept.append(kept_score)
        if len(self.kept) <= self.patience:
            return False
        return self.kept[-1] - self.kept[-1 - self.patience] <= self.delta


def early_stop_iteration(iterations: Sequence[int], scores: Sequence[float],
                         rounds: Sequence[int], patience: int = PATIENCE,
                         delta: float = MIN_DELTA) -> int | None:
    """Replay a run's validations: the iteration at which the rule ends it (None: never)."""
    selection = ModelSelection(rounds)
    stop = EarlyStop(last_phase_start(rounds), patience, delta)
    for it, score in zip(iterations, scores):
        selection.consider(it, score)
        if stop.update(it, selection.best_score):
            return it
    return None
