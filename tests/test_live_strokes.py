"""Strokes painted while training: the very next step learns from them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config
from napari_seg3d.engine.training import loop

PATCH = (8, 16, 16)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    yield


def _trainer(image, labels, iterations=8) -> Trainer:
    cfg = TrainConfig(patch_size=PATCH, batch_size=2, iterations=iterations, validate_every=100,
                      device="cpu", self_training=0, validation_fraction=0.0)
    return Trainer(image, labels, cfg,
                   model_config=default_model_config(1, 2, PATCH, base_filters=4, levels=2))


def _new_strokes(truth, labels):
    """``labels`` plus a stroke of each class far from the painted ones."""
    more = labels.copy()
    free = (labels == 0)
    for value in (1, 2):
        where = np.argwhere(free & (truth == value))
        far = where[np.argmax(np.abs(where - np.argwhere(labels > 0).mean(0)).sum(1))]
        more[tuple(far)] = value
    return more


def test_the_step_after_new_strokes_already_samples_them(blobs, monkeypatch):
    image, truth, labels = blobs
    new = _new_strokes(truth, labels)
    made = {}  # iteration -> the annotations its batch was drawn from
    make = loop.make_batch

    def recording(trainer, i):
        made[i] = trainer.sampler.annotations
        return make(trainer, i)

    monkeypatch.setattr(loop, "make_batch", recording)
    trainer = _trainer(image, labels)
    old = trainer.sampler.annotations
    gen = trainer.run()
    records = [next(gen), next(gen)]  # iterations 0 and 1 done; batches 2.. made ahead
    assert any(made[i] is old for i in range(2, 5) if i in made)
    records.append(gen.send(new))
    try:
        while True:
            records.append(next(gen))
    except StopIteration:
        pass
    fresh = trainer.sampler.annotations
    assert fresh is not old
    assert all(made[i] is fresh for i in range(2, 8)), {i: made[i] is fresh for i in made}
    assert [r.iteration for r in records] == list(range(1, 9))
