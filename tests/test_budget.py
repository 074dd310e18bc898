"""The time budget: the total of a run fixed once from its measured first steps, written into
its config, the schedule following it, exact resumption, and iterations that win over it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_seg3d.engine import (
    TrainConfig,
    Trainer,
    budget,
    default_model_config,
    load_model,
    save_model,
)
from napari_seg3d.engine.budget import (
    FIX_AFTER,
    FLOOR,
    MIN_SELF_TRAINING_STEPS,
    Costs,
    RunEstimate,
    about,
    budget_config,
    budget_total,
    fixed_config,
    remaining_seconds,
    steps_for_minutes,
)
from napari_seg3d.engine.plan import plan_training
from napari_seg3d.engine.training.schedule import learning_rate_at, self_training_starts

PATCH = (8, 16, 16)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Tiny tensors gain nothing from more threads; one thread keeps runs bit-for-bit equal."""


def _budget_config(**changes) -> TrainConfig:
    settings = dict(patch_size=PATCH, batch_size=2, iterations=400, minutes=0.05,
                    validate_every=0, device="cpu", self_training=0, early_stop=False)
    settings.update(changes)
    return TrainConfig(**settings)


def _trainer(blobs, config, **kwargs) -> Trainer:
    image, _, labels = blobs
    if "init" not in kwargs:
        kwargs["model_config"] = default_model_config(1, 2, PATCH, base_filters=4, levels=2)
    return Trainer(image, labels, config, **kwargs)


def _run(trainer, stop_after=None):
    records, gen = [], trainer.run()
    while True:
        try:
            records.append(next(gen))
        except StopIteration as done:
            return records, done.value
        if stop_after is not None and len(records) == stop_after:
            trainer.request_stop()


# --- the arithmetic ---------------------------------------------------------------------------

def test_the_time_left_counts_steps_validations_and_rounds():
    cfg = _budget_config(minutes=None, iterations=800, validate_every=50, self_training=2,
                         early_stop=True)  # validations: 16 every 50, 8 more in the last phase
    assert remaining_seconds(cfg, 800, 0, Costs(0.0, 1.0)) == 24
    assert remaining_seconds(cfg, 800, 500, Costs(0.1, 1.0, 10.0)) == pytest.approx(30 + 14 + 10)
    off = dataclasses.replace(cfg, early_stop=False, self_training=0)
    assert remaining_seconds(off, 800, 0, Costs(0.0, 1.0)) == 16


@pytest.mark.parametrize("costs", [Costs(0.1), Costs(0.1, 0.5), Costs(0.2, 1.0, 7.0)])
@pytest.mark.parametrize(("rounds", "early_stop"), [(0, False), (2, False), (2, True)])
def test_budget_total_is_the_largest_total_that_fits(costs, rounds, early_stop):
    cfg = _budget_config(minutes=1.0, iterations=800, self_training=rounds, early_stop=early_stop)
    total = budget_total(cfg, 5, 2.0, costs)
    fits = [n for n in range(5, 801) if 2.0 + remaining_seconds(cfg, n, 5, costs) <= 60.0]
    assert total == max(FLOOR, max(fits))
    if rounds and costs.round_s:  # rounds cost time: fewer steps than without them
        assert total < budget_total(dataclasses.replace(cfg, self_training=0), 5, 2.0, costs)


def test_budget_total_keeps_between_the_floor_and_the_cap():
    cfg = _budget_config(minutes=1.0, iterations=300)
    assert budget_total(cfg, 5, 1.0, Costs(0.001)) == 300  # a fast machine: the cap
    assert budget_total(cfg, 5, 1.0, Costs(30.0)) == FLOOR  # a slow one: at least the floor
    assert budget_total(dataclasses.replace(cfg, iterations=20), 5, 1.0, Costs(30.0)) == 20
    assert steps_for_minutes(2.0, 0.3) == 400 and steps_for_minutes(2.0, 0.001) == 800


def test_a_fixed_config_has_the_total_no_budget_and_its_validations():
    cfg = fixed_config(_budget_config(), 230)
    assert (cfg.iterations, cfg.minutes, cfg.validate_every) == (230, None, 23)
    assert fixed_config(_budget_config(validate_every=7), 230).validate_every == 7


@pytest.mark.parametrize(("seconds", "text"), [
    (4.2, "about 4 seconds"), (42, "about 40 seconds"), (61, "about 1 minute"),
    (150, "about 2.5 minutes"), (178, "about 3 minutes"), (1300, "about 22 minutes")])
def test_about_rounds_to_what_a_person_says(seconds, text):
    assert about(seconds) == text


def test_the_estimate_says_about_how_long():
    assert RunEstimate(620, 0.29, 181, 3.0).describe() == \
        "Training for about 3 minutes (≈ 620 iterations at 0.29 s each)"
    assert RunEstimate(300, 0.29, 95, None).describe() == \
        "Training 300 iterations: about 1.5 minutes (0.29 s each)"
    assert "50 is the fewest" in RunEstimate(FLOOR, 2.0, 110, 1.0).describe()


@pytest.mark.parametrize(("changes", "message"), [
    ({"minutes": 0.0}, "time budget must be a positive number"),
    ({"minutes": -1.0}, "time budget must be a positive number"),
    ({"minutes": None, "validate_every": 0}, "validate_every must be a whole number of at least 1")])
def test_invalid_budgets_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _budget_config(**changes)


# --- a run with a budget ----------------------------------------------------------------------

def test_a_budget_too_short_for_self_training_trains_on_the_strokes_alone():
    cfg = _budget_config(minutes=1.0, iterations=800, self_training=2)
    long = budget_config(cfg, 5, 1.0, Costs(0.05, 0.1, 1.0))
    assert long.iterations >= MIN_SELF_TRAINING_STEPS and long.self_training == 2
    short = budget_config(cfg, 5, 1.0, Costs(0.5, 1.0, 5.0))
    with_rounds = budget_total(cfg, 5, 1.0, Costs(0.5, 1.0, 5.0))
    assert with_rounds < MIN_SELF_TRAINING_STEPS and short.self_training == 0
    assert short.iterations > with_rounds  # the rounds' time goes to steps
    assert short == fixed_config(dataclasses.replace(cfg, self_training=0), short.iterations)


def test_the_budget_fixes_the_total_once_from_the_measured_steps(blobs, monkeypatch):
    monkeypatch.setattr(budget, "MIN_SELF_TRAINING_STEPS", 0)  # rounds even in a short run
    cfg = _budget_config(self_training=2, self_training_forest=False)
    trainer = _trainer(blobs, cfg)
    records, result = _run(trainer)
    totals = [r.iterations for r in records]
    total = totals[-1]
    assert totals == [400] * (FIX_AFTER - 1) + [total] * (len(records) - FIX_AFTER + 1)
    assert FLOOR <= total <= 400 and len(records) == total  # the cap until fixed, then fixed
    record = result.last.history["budget"]
    costs = Costs(record["step_seconds"], record["validation_seconds"], record["round_seconds"])
    assert record["iterations"] == total == budget_total(cfg, FIX_AFTER, record["spent_seconds"],
                                                         costs)
    assert costs.step_s > 0 and costs.validation_s > 0 and costs.round_s > 0
    for model in (result.last, result.best, trainer.model):  # the model files record the total
        assert model.train_config == fixed_config(cfg, total)
    assert [r.estimate is not None for r in records] == [i >= FIX_AFTER for i in
                                                         range(1, total + 1)]
    assert records[-1].estimate.iterations == total and records[-1].estimate.minutes == 0.05
    assert not records[-1].estimate.without_self_training
    for r in records:  # the schedule follows the fixed total, also in the steps before it
        assert r.learning_rate == pytest.approx(learning_rate_at(r.iteration - 1, total, 3e-3))
    every = result.last.train_config.validate_every
    assert result.last.history["val_iteration"] == [i for i in range(1, total + 1)
                                                    if i % every == 0 or i == total]
    assert result.last.history["self_training"] == self_training_starts(fixed_config(cfg, total))


def test_a_resumed_budget_run_continues_exactly(blobs, tmp_path):
    """Stopped after its total was fixed and resumed as the command line plans it: the same
    losses as a run given that total from the start."""
    cfg = _budget_config()
    _, stopped = _run(_trainer(blobs, cfg), stop_after=12)
    assert stopped.stopped and stopped.last.iteration == 12
    total = stopped.last.train_config.iterations
    path = save_model(stopped.last, tmp_path / "run.last.pt")
    init = load_model(path)
    plan = plan_training(blobs[0].shape, blobs[2], settings={"device": "cpu"}, init=init,
                         resume=True)
    assert plan.train_config == init.train_config and plan.start_iteration == 12
    resumed_records, resumed = _run(_trainer(blobs, plan.train_config, init=init, resume=True))

    _, whole = _run(_trainer(blobs, fixed_config(cfg, total)))
    assert resumed_records[0].iteration == 13
    assert resumed.last.iteration == whole.last.iteration
    assert resumed.last.history["loss"] == pytest.approx(whole.last.history["loss"], abs=1e-6)
    for name, w in whole.last.network.state_dict().items():
        assert torch.allclose(w, resumed.last.network.state_dict()[name], atol=1e-6), name


def test_iterations_given_win_over_the_budget(blobs):
    plan = plan_training(blobs[0].shape, blobs[2], settings={"iterations": 12, "minutes": 2.0,
                                                             "self_training": 0})
    assert (plan.train_config.iterations, plan.train_config.minutes) == (12, None)
    cfg = dataclasses.replace(plan.train_config, patch_size=PATCH, device="cpu")
    records, result = _run(_trainer(blobs, cfg))
    assert [r.iterations for r in records] == [12] * 12 and "budget" not in result.last.history
    assert records[-1].estimate.describe().startswith("Training 12 iterations: about ")
    assert result.last.history["step_seconds"] > 0


def test_the_default_plan_is_a_budget_with_a_cap():
    cfg = plan_training((17, 24, 26), 2, settings={"device": "cpu"}).train_config
    assert (cfg.minutes, cfg.iterations, cfg.validate_every) == (3.0, 800, 0)
    cfg = plan_training((17, 24, 26), 2, settings={"minutes": 0.5}).train_config
    assert (cfg.minutes, cfg.iterations) == (0.5, 800)
    assert plan_training((17, 24, 26), 2, settings={"validate_every": 9}).train_config \
        .validate_every == 9


def test_a_finished_run_continues_for_the_budget_at_its_recorded_speed(blobs):
    _, result = _run(_trainer(blobs, _budget_config(minutes=None, iterations=6,
                                                    validate_every=3)))
    model = result.last
    plan = plan_training(blobs[0].shape, blobs[2], settings={"minutes": 0.5}, init=model,
                         resume=True)
    added = steps_for_minutes(0.5, model.history["step_seconds"])
    assert plan.train_config.iterations == 6 + added and plan.train_config.minutes is None
    del model.history["step_seconds"]
    with pytest.raises(ValueError, match="does not record how long a step took"):
        plan_training(blobs[0].shape, blobs[2], init=model, resume=True)
