"""Strokes painted while training: the very next step learns from them, and the next batches
centre every other patch on them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, train_loop
from napari_seg3d.engine.sampling import FOCUS_BATCHES

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
    make = train_loop._make_batch

    def recording(trainer, i):
        made[i] = trainer.sampler.annotations
        return make(trainer, i)

    monkeypatch.setattr(train_loop, "_make_batch", recording)
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


def _centres(sampler, rng):
    """The patch centres of one batch of 4 from ``sampler``."""
    centres = []
    patch = sampler._patch

    def recording(ann, pseudo, center, rng):
        centres.append(tuple(int(c) for c in center))
        return patch(ann, pseudo, center, rng)

    sampler._patch = recording
    try:
        sampler.sample(4, rng)
    finally:
        del sampler._patch
    return centres


def test_new_strokes_centre_every_other_patch_for_a_while(blobs):
    image, truth, labels = blobs
    trainer = _trainer(image, labels)
    new = _new_strokes(truth, labels)
    fresh = {tuple(int(c) for c in v) for v in np.argwhere((new > 0) & (labels == 0))}
    assert len(fresh) == 2
    trainer.update_annotations(new)
    rng = np.random.default_rng(0)
    batches = [_centres(trainer.sampler, rng) for _ in range(FOCUS_BATCHES + 5)]
    for centres in batches[:FOCUS_BATCHES]:
        assert centres[0] in fresh and centres[2] in fresh
    later = [c for centres in batches[FOCUS_BATCHES:] for c in centres]
    assert sum(c in fresh for c in later) < len(later) / 2  # back to all strokes alike
    trainer.update_annotations(new)  # the same strokes again: nothing is fresh
    assert all(sum(c in fresh for c in _centres(trainer.sampler, rng)) < 2 for _ in range(5))


def test_without_new_strokes_the_draws_are_unchanged(blobs):
    image, _, labels = blobs
    a, b = _trainer(image, labels).sampler, _trainer(image, labels).sampler
    b.set_annotations(b.annotations, focus=True)  # nothing fresh: no focus
    ra, rb = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(3):
        x, y = a.sample(2, ra), b.sample(2, rb)
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
