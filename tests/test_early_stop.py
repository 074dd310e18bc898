"""Early stop: a run ends when, in its last phase, the held-out strokes stop improving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config
from napari_seg3d.engine.training.early_stop import (
    ENDED_EARLY_REASON,
    PATIENCE,
    EarlyStop,
    early_stop_iteration,
)
from napari_seg3d.engine.training.schedule import (
    last_phase_interval,
    last_phase_start,
    validates_after,
)

PATCH = (8, 16, 16)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """One thread: the runs are bit-for-bit the same every time, so is where they end."""


def test_the_rule_waits_for_patience_validations_without_a_rise():
    stop = EarlyStop(start=0, patience=3, delta=0.01)
    kept = [0.5, 0.7, 0.9, 0.905, 0.908, 0.909]  # running best: rises, then by < 0.01
    ends = [stop.update(10 * (i + 1), k) for i, k in enumerate(kept)]
    assert ends == [False, False, False, False, False, True]  # 0.909 - 0.9 <= 0.01 over 3


def test_the_rule_ignores_validations_before_the_last_phase():
    stop = EarlyStop(start=300)
    assert not any(stop.update(it, 0.9) for it in range(50, 301, 50))  # flat, but too early
    assert [stop.update(it, 0.9) for it in range(310, 310 + 10 * (PATIENCE + 1), 10)] == \
        [False] * PATIENCE + [True]


def test_new_strokes_start_the_count_again():
    stop = EarlyStop(start=0)
    assert not any(stop.update(10 * i, 0.9) for i in range(1, PATIENCE + 1))
    stop.reset()  # the held-out strokes were redrawn: a lower score is no worse a model
    assert [stop.update(100 + 10 * i, 0.8) for i in range(PATIENCE + 1)] == \
        [False] * PATIENCE + [True]


@pytest.mark.parametrize(("rounds", "start"), [(0, 600), (2, 600), (4, 700)])
def test_the_last_phase_is_the_last_quarter_after_the_last_round(rounds, start):
    cfg = TrainConfig(iterations=800, self_training=rounds)
    assert last_phase_start(cfg) == start


def test_the_last_phase_validates_four_times_as_often():
    cfg = TrainConfig(iterations=800, validate_every=50, self_training=2)
    assert last_phase_interval(cfg) == 20
    every = [i for i in range(1, 801) if validates_after(cfg, i)]
    assert every == sorted({*range(50, 801, 50), *range(620, 801, 20)})
    off = dataclasses.replace(cfg, early_stop=False)
    assert [i for i in range(1, 801) if validates_after(off, i)] == list(range(50, 801, 50))
    assert last_phase_interval(dataclasses.replace(cfg, iterations=60, validate_every=2)) == 2
    assert last_phase_interval(off) is None
    assert last_phase_interval(dataclasses.replace(cfg, iterations=50, validate_every=5)) is None


def test_replayed_runs_end_in_the_last_phase_only():
    its = list(range(20, 801, 20))
    flat = [0.9] * len(its)
    assert early_stop_iteration(its, flat, 0) == 20 * (PATIENCE + 1)
    assert early_stop_iteration(its, flat, 600) == 600 + 20 * (PATIENCE + 1)
    rising = list(np.linspace(0.5, 0.95, len(its)))  # +0.0115 a validation
    assert early_stop_iteration(its, rising, 0) is None
    assert early_stop_iteration(its, rising, 0, delta=0.05) == 20 * (PATIENCE + 1)


def _run(blobs, **changes):
    image, _, labels = blobs
    settings = dict(patch_size=PATCH, batch_size=2, iterations=60, validate_every=2,
                    device="cpu", self_training=0, self_training_forest=False)
    settings.update(changes)
    trainer = Trainer(image, labels, TrainConfig(**settings),
                      model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))
    records, gen = [], trainer.run()
    while True:
        try:
            records.append(next(gen))
        except StopIteration as done:
            return records, done.value


def _replayed(result) -> int | None:
    history = result.last.history
    scores = [float(np.mean(d)) for d in history["val_dice"]]
    return early_stop_iteration(history["val_iteration"], scores,
                                last_phase_start(result.last.train_config))


def test_a_run_whose_validation_is_flat_ends_early(blobs):
    """On the easy blobs held-out Dice rises by less than 0.005 over 4 validations after 50
    steps; the last phase begins at 45 (three quarters of 60)."""
    records, result = _run(blobs)
    end = result.ended_early
    assert end is not None and 45 < end < 60 and not result.stopped
    assert end == _replayed(result) == result.last.iteration == len(records)
    assert result.last.history["ended_early"] == {"iteration": end, "reason": ENDED_EARLY_REASON}
    assert records[-1].ended_early and records[-1].eta_s == 0
    assert not any(r.ended_early for r in records[:-1])
    assert result.last.train_config.iterations == 60  # the schedule stays that of 60 steps

    full_records, full = _run(blobs, early_stop=False)
    assert full.ended_early is None and len(full_records) == 60
    assert "ended_early" not in full.last.history
    assert [r.loss for r in full_records[:end]] == [r.loss for r in records]


def test_early_stop_waits_for_the_last_self_training_round(blobs):
    _, result = _run(blobs, self_training=2)  # rounds at 30 and 45
    assert result.last.history["self_training"] == [30, 45]
    end = result.ended_early
    assert end is not None and 45 < end < 60 and end == _replayed(result)
