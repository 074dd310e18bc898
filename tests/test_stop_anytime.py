"""Stopping training in the engine at any moment leaves valid best/last models.

A training generator stopped or closed at any iteration leaves a loadable model; a stop inside a
step (forward or backward) takes effect at the next layer, and one during a self-training round
ends the round at once. The CLI's signals are in test_stop_signals.py.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ball_volume

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, load_model, save_model
from napari_seg3d.engine.training.scribbles import simulate_scribbles

CLASSES = {3, 7}


@pytest.fixture(scope="module")
def strokes():
    image, balls = ball_volume()
    return image, np.array([0, 3, 7], np.uint8)[
        simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)]


def _trainer(strokes, iterations=12) -> Trainer:
    image, labels = strokes
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=iterations, validate_every=5,
                      device="cpu", self_training=0, seed=1)
    return Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "seg3d-prefetch" and t.is_alive()]


def _loads_and_predicts(model, image, path: Path):
    loaded = load_model(save_model(model, path))
    labels = loaded.predict(image, device="cpu")
    assert labels.shape == image.shape and set(np.unique(labels)) <= CLASSES
    return loaded


@pytest.mark.parametrize("after", [0, 1, 5, 11])
def test_stopping_the_trainer_at_any_iteration_gives_best_and_last(strokes, tmp_path, after,
                                                                   one_thread):
    """``request_stop`` after ``after`` iterations (5: right after a validation snapshot)."""
    trainer = _trainer(strokes)
    gen = trainer.run()
    for _ in range(after):
        next(gen)
    trainer.request_stop()
    with pytest.raises(StopIteration) as done:
        next(gen)
    result = done.value.value
    assert result.stopped and result.last.iteration == after
    assert result.best.iteration <= after and not _prefetch_threads()
    last = _loads_and_predicts(result.last, strokes[0], tmp_path / "last.pt")
    _loads_and_predicts(result.best, strokes[0], tmp_path / "best.pt")
    assert last.iteration == after and last.optimizer_state is not None


@pytest.mark.parametrize("after", [1, 11])
def test_closing_the_training_generator_leaves_a_loadable_model(strokes, tmp_path, after,
                                                                one_thread):
    """``generator.close()`` (what a cancelled worker does) between two iterations: the
    prefetch thread ends and the trainer's model, as trained so far, saves and loads."""
    trainer = _trainer(strokes)
    gen = trainer.run()
    for _ in range(after):
        next(gen)
    gen.close()
    assert not _prefetch_threads()
    loaded = _loads_and_predicts(trainer.model, strokes[0], tmp_path / "closed.pt")
    assert len(loaded.history["loss"]) == after


# --- a stop inside a step or a self-training round: it takes effect between two layers ---------

def _stop_inside(trainer: Trainer, *, step: int, where: str) -> list[str]:
    """Press Stop (``request_stop``) from inside step ``step`` (1-based): before the 3rd layer of
    its forward pass, or as the 3rd gradient of its backward pass arrives, as a user's click
    lands in the middle of a long step. Returns the layers that ran after the press."""
    import torch

    calls, after, pressed = {"n": 0, "step": 0}, [], []
    convs = [m for m in trainer.model.network.modules() if isinstance(m, torch.nn.Conv3d)]

    def count_step(module, args):  # the first layer starts a step
        if module is convs[0] and module.training:
            calls["step"] += 1
            calls["n"] = 0

    def forward(module, args):
        if pressed:
            after.append(f"forward {type(module).__name__}")
        elif where == "forward" and calls["step"] == step and module.training:
            calls["n"] += 1
            if calls["n"] == 3:
                trainer.request_stop()
                pressed.append(True)

    def backward(grad):
        if pressed:
            after.append("backward")
        elif calls["step"] == step:
            calls["n"] += 1
            if calls["n"] == 3:
                trainer.request_stop()
                pressed.append(True)
        return grad

    def watch_gradient(module, args, output):
        if where == "backward" and module.training and output.requires_grad:
            output.register_hook(backward)

    convs[0].register_forward_pre_hook(count_step)
    for m in convs:
        m.register_forward_pre_hook(forward)
        m.register_forward_hook(watch_gradient)
    return after


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_stop_inside_a_step_takes_effect_at_the_next_layer(strokes, tmp_path, where, one_thread):
    """The step being computed is dropped, the models are those of the steps before it, and the
    run resumes from its last model exactly like a run stopped between the same two steps."""
    trainer = _trainer(strokes)
    ran_after = _stop_inside(trainer, step=4, where=where)
    records, result = [], None
    gen = trainer.run()
    with pytest.raises(StopIteration) as done:
        while True:
            records.append(next(gen))
    result = done.value.value
    assert ran_after == [] and [r.iteration for r in records] == [1, 2, 3]
    assert result.stopped and result.last.iteration == 3 and len(result.last.history["loss"]) == 3
    assert not _prefetch_threads()

    between = _trainer(strokes)  # the same run stopped between steps 3 and 4
    gen = between.run()
    for _ in range(3):
        next(gen)
    between.request_stop()
    with pytest.raises(StopIteration) as done:
        next(gen)
    reference = done.value.value.last
    for a, b in zip(result.last.network.state_dict().values(),
                    reference.network.state_dict().values()):
        assert torch_equal(a, b)
    loaded = _loads_and_predicts(result.last, strokes[0], tmp_path / "last.pt")
    assert loaded.iteration == 3 and loaded.optimizer_state is not None


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_stop_during_a_self_training_round_ends_the_round_at_once(strokes, one_thread):
    """A self-training round predicts the whole volume; Stop lands inside its first window."""
    import torch

    image, labels = strokes
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=8, validate_every=5, device="cpu",
                      self_training=1, seed=1)
    trainer = Trainer(image, labels, cfg, model_config=default_model_config(
        1, 2, cfg.patch_size, base_filters=4, levels=2))
    inference_layers = []

    def press(module, args):
        if not torch.is_grad_enabled():  # the round's prediction (no gradients)
            inference_layers.append(module)
            trainer.request_stop()

    for m in trainer.model.network.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.register_forward_pre_hook(press)
    gen = trainer.run()
    records = []
    with pytest.raises(StopIteration) as done:
        while True:
            records.append(next(gen))
    result = done.value.value
    # the round starts at iteration 4 (half the run); only its first layer ran
    assert len(inference_layers) == 1 and [r.iteration for r in records] == [1, 2, 3, 4]
    assert result.stopped and result.last.iteration == 4
