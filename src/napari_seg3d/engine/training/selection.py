"""Which model of a training run to keep as the best (the model file; ``.last`` keeps the end).

Held-out strokes are few and easy (inside objects, far from borders), so their Dice saturates
early and is noisy: the checkpoint with the top score is often an early one, worse against the
truth than later ones. So a later checkpoint replaces the kept one unless its score is clearly
below the best (``margin``).

Self-training changes what the network learns from in each round, and held-out-stroke Dice
falls when a round begins (on the nuclei sample from about 0.94 to 0.80) while the Dice
against the truth rises: scores of different rounds are not comparable. The ``phase`` rule
(the default) therefore starts the comparison again in each round, so the model kept comes
from the last round. ``benchmarks/bench_selection.py`` measures both rules against the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULES = ("phase", "margin")
MARGIN = 0.05


def phase_of(iteration: int, rounds: Sequence[int]) -> int:
    """The self-training round a checkpoint after ``iteration`` steps belongs to (0: before)."""
    return sum(1 for r in rounds if iteration > r)


class ModelSelection:
    """Decides, checkpoint by checkpoint, whether it becomes the kept model.

    Args:
        rounds: iterations at which self-training rounds start.
        rule: one of :data:`RULES`.
        margin: how far below the best score a later checkpoint may be and still be kept.
    """

    def __init__(self, rounds: Sequence[int] = (), rule: str = "phase",
                 margin: float = MARGIN) -> None:
        if rule not in RULES:
            raise ValueError(f"Unknown selection rule {rule!r}; choose one of {', '.join(RULES)}.")
        self.rounds, self.rule, self.margin = tuple(rounds), rule, margin
        self.best_score, self.phase = -np.inf, -1

    def consider(self, iteration: int, score: float) -> bool:
        """True when the checkpoint after ``iteration`` steps, with ``score``, is kept."""
        phase = phase_of(iteration, self.rounds) if self.rule == "phase" else 0
        if phase > self.phase:  # a new round: nothing before it is comparable
            self.phase, self.best_score = phase, score
            return True
        if score >= self.best_score - self.margin:
            self.best_score = max(score, self.best_score)
            return True
        return False


def pick_checkpoint(iterations: Sequence[int], scores: Sequence[float], rounds: Sequence[int],
                    rule: str = "phase") -> int:
    """The iteration of the checkpoint ``rule`` keeps, replaying the run's checkpoints."""
    selection, kept = ModelSelection(rounds, rule), iterations[0]
    for it, score in zip(iterations, scores):
        if selection.consider(it, score):
            kept = it
    return kept
