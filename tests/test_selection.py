"""Which checkpoint of a run is kept: the selection rules on made-up score sequences, and the
rule the training loop applies."""

import pytest

from napari_seg3d.engine.training.selection import ModelSelection, phase_of, pick_checkpoint

ITS = [50, 100, 150, 200, 250, 300, 350, 400]


@pytest.mark.parametrize(("scores", "rounds", "rule", "kept"), [
    # rising scores: the last
    ([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93], [], "phase", 400),
    # a small dip is within the margin: later is kept
    ([0.9, 0.94, 0.93, 0.92, 0.93, 0.91, 0.92, 0.90], [], "margin", 400),
    # a clear drop is not
    ([0.9, 0.94, 0.93, 0.8, 0.8, 0.8, 0.81, 0.82], [], "margin", 150),
    # the same drop when a self-training round starts (after 200 steps): the old rule keeps the
    # model from before the round, the phase rule the best of the last round
    ([0.9, 0.94, 0.93, 0.94, 0.8, 0.81, 0.82, 0.79], [200], "margin", 200),
    ([0.9, 0.94, 0.93, 0.94, 0.8, 0.81, 0.82, 0.79], [200], "phase", 400),
    ([0.9, 0.94, 0.93, 0.94, 0.8, 0.86, 0.85, 0.70], [200], "phase", 350),
    # two rounds (200 and 300): the last round decides
    ([0.9, 0.94, 0.93, 0.94, 0.8, 0.81, 0.6, 0.62], [200, 300], "phase", 400),
])
def test_pick_checkpoint(scores, rounds, rule, kept):
    assert pick_checkpoint(ITS, scores, rounds, rule) == kept


def test_phase_of_a_checkpoint():
    # a round starting at 400 comes before step 401: the checkpoint after 400 steps is before it
    assert [phase_of(i, [400, 600]) for i in (50, 400, 450, 600, 650, 800)] == [0, 0, 1, 1, 2, 2]


def test_unknown_rule_is_refused_with_the_list():
    with pytest.raises(ValueError, match="choose one of phase, margin"):
        ModelSelection(rule="best")


def test_the_training_keeps_a_model_of_the_last_self_training_round(blobs):
    """With self-training, the model file holds a checkpoint of the last round, never one from
    before it (the rounds' held-out scores are not comparable with the earlier ones)."""
    from napari_seg3d.engine import TrainConfig, Trainer, default_model_config
    from napari_seg3d.engine.training.schedule import self_training_starts

    image, _, labels = blobs
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=12, validate_every=2, device="cpu",
                      self_training=2, seed=0)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))
    gen = trainer.run()
    while True:
        try:
            next(gen)
        except StopIteration as done:
            result = done.value
            break
    last_round = self_training_starts(cfg)[-1]
    assert result.best.iteration > last_round
    assert result.best.history["val_iteration"][-1] == 12
