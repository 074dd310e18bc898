"""``napari-seg3d train --minutes`` and ``--no-early-stop``: through the command line, the model
file, ``info --config`` and ``train --config``, and which of iterations and minutes wins."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg3d.cli import main
from napari_seg3d.engine import load_model
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--device",
        "cpu", "--no-report", "--self-training", "0"]


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Tiny tensors gain nothing from more threads."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:13, :24, :26]
    balls = ((z - 6) ** 2 + (y - 8) ** 2 + (x - 9) ** 2 < 16) | \
        ((z - 7) ** 2 + (y - 16) ** 2 + (x - 18) ** 2 < 16)
    image = (balls + rng.normal(0, 0.2, balls.shape)).astype(np.float32)
    strokes = simulate_scribbles(balls, slices_per_axis=2, strokes_per_class=2, length=8)
    write_volume(folder / "image.tif", image)
    write_volume(folder / "labels.tif", strokes.astype(np.uint8))
    return folder


def _train(files, out, *extra) -> int:
    return main(["train", "--image", str(files / "image.tif"), "--labels",
                 str(files / "labels.tif"), "--out", str(out), *TINY, *extra])


def test_minutes_fixes_the_total_and_says_how_long(files, tmp_path, capsys):
    assert _train(files, tmp_path / "m.pt", "--minutes", "0.1", "--no-early-stop") == 0
    err = capsys.readouterr().err
    assert "Time budget: 0.1 minutes on the CPU, at most 800 iterations" in err
    assert "Training for about " in err and " iterations at " in err
    model = load_model(tmp_path / "m.last.pt")
    budget, cfg = model.history["budget"], model.train_config
    assert budget["minutes"] == 0.1 and budget["cap"] == 800
    assert cfg.minutes is None and cfg.iterations == budget["iterations"] == model.iteration
    assert cfg.early_stop is False and "ended_early" not in model.history

    assert main(["info", str(tmp_path / "m.last.pt"), "--config"]) == 0
    text = capsys.readouterr().out
    assert f"iterations: {cfg.iterations}\n" in text and "early_stop: false" in text
    assert "fixed by a time budget of 0.1 minutes" in text and "minutes: null" in text


def test_the_config_file_carries_minutes_and_the_command_line_wins(files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("minutes: 0.1\nearly_stop: false\nseed: 3\n")
    assert _train(files, tmp_path / "a.pt", "--config", str(config), "--quiet") == 0
    a = load_model(tmp_path / "a.last.pt")
    assert a.history["budget"]["minutes"] == 0.1 and a.train_config.early_stop is False
    assert a.train_config.seed == 3

    assert _train(files, tmp_path / "b.pt", "--config", str(config), "--iterations", "3",
                  "--quiet") == 0
    b = load_model(tmp_path / "b.last.pt")
    assert (b.train_config.iterations, b.train_config.minutes) == (3, None)
    assert "budget" not in b.history

    config.write_text("iterations: 3\n")
    assert _train(files, tmp_path / "c.pt", "--config", str(config), "--minutes", "0.1",
                  "--quiet") == 0
    assert load_model(tmp_path / "c.last.pt").history["budget"]["minutes"] == 0.1


def test_a_budget_of_no_time_is_one_clear_line(files, tmp_path, capsys):
    assert _train(files, tmp_path / "m.pt", "--minutes", "0", "--quiet") == 2
    err = capsys.readouterr().err
    assert err == ("napari-seg3d train: error: The time budget must be a positive number of "
                   "minutes, got 0.0.\n")
