"""The Train widget's time budget: the boxes reach the plan, the line under them says what
Train will do, and a run with a budget says how long it takes once its total is fixed."""

from test_widget_train import WAIT_MS, annotated, make_widget, shown, viewer

from napari_seg3d.engine.budget import FIX_AFTER
from napari_seg3d.engine.plan import plan_training

__all__ = ["shown", "viewer"]  # fixtures of the Train widget's tests, used here


def test_the_time_budget_box_reaches_the_config_and_says_what_train_does(viewer):
    """Iterations auto: the budget goes to the plan (and the line under the boxes says it);
    a number of iterations wins and greys the budget out."""
    widget = make_widget(viewer)
    widget.iterations_spin.setValue(0)
    widget.minutes_spin.setValue(1.5)
    assert widget.minutes_spin.isEnabled()
    assert "about 1.5 minutes on the CPU" in widget.budget.label.text()
    settings = widget.settings()
    assert (settings["iterations"], settings["minutes"]) == (None, 1.5)
    cfg = plan_training((17, 24, 26), 2, settings=settings).train_config
    assert (cfg.minutes, cfg.iterations, cfg.validate_every) == (1.5, 800, 0)
    widget.iterations_spin.setValue(40)
    assert not widget.minutes_spin.isEnabled()
    assert widget.budget.label.text() == "Train runs exactly 40 iterations (no time budget)."
    cfg = plan_training((17, 24, 26), 2, settings=widget.settings()).train_config
    assert (cfg.minutes, cfg.iterations, cfg.validate_every) == (None, 40, 5)


def test_a_budget_run_says_how_long_and_its_bar_follows_the_total(qtbot, viewer, blobs, shown):
    widget = make_widget(viewer, iterations=0)
    widget.minutes_spin.setValue(0.1)
    widget.self_training_spin.setValue(0)
    annotated(widget, blobs[2])
    assert widget.start_training()

    def fixed():
        job = widget._job
        return job is not None and job.latest is not None and job.latest.estimate is not None

    qtbot.waitUntil(fixed, timeout=WAIT_MS)
    job = widget._job
    widget._render()
    p = job.latest
    assert p.iteration >= FIX_AFTER and p.iterations == p.estimate.iterations
    assert p.estimate.describe().startswith("Training for about ")
    assert widget.status.text().startswith(p.estimate.describe() + " · Iteration ")
    assert widget._display._bar.total == p.iterations
    widget.stop_training()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not shown["error"], shown["error"]
    assert widget.last_model.train_config.iterations == p.iterations
    assert widget.last_model.history["budget"]["minutes"] == 0.1
