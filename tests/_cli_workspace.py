"""The command-line tests' shared workspace: a tiny model trained by ``train --truth`` on balls."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from conftest import ball_volume

from napari_seg3d.cli import main
from napari_seg3d.engine.io import write_volume
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
        "--device", "cpu"]


def _balls(shape=(13, 24, 26)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of bright balls and its truth painted as 3 (background) and 7 (balls)."""
    image, balls = ball_volume(shape)
    return image, np.where(balls, 7, 3).astype(np.uint8)


def make_workspace(folder):
    """Image, scribbles and truth as TIFF files, and a model trained on them by ``train --truth``
    (its printed output in ``train.out``)."""
    image, truth = _balls()
    scribbles = simulate_scribbles(truth == 7, slices_per_axis=2, strokes_per_class=2, length=8)
    write_volume(folder / "image.tif", image)
    write_volume(folder / "labels.tif", np.array([0, 3, 7], np.uint8)[scribbles])
    write_volume(folder / "truth.tif", truth)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--image", str(folder / "image.tif"), "--labels",
                     str(folder / "labels.tif"), "--out", str(folder / "model.pt"),
                     "--iterations", "4", "--truth", str(folder / "truth.tif"), *TINY])
    assert code == 0
    (folder / "train.out").write_text(out.getvalue())
    return folder


def model_info(capsys, model: Path) -> dict:
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    return json.loads(capsys.readouterr().out)


def train_args(workspace, tmp_path, image=None, labels=None, *extra):
    return ["train", "--image", str(image or workspace / "image.tif"), "--labels",
            str(labels or workspace / "labels.tif"), "--out", str(tmp_path / "m.pt"),
            "--iterations", "1", *TINY, *extra]
