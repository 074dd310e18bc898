"""The ``napari-seg3d`` command's settings: resume, --config files, info --config, 2D models."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import load_model
from napari_seg3d.engine.io import read_volume
from _cli_workspace import TINY, make_workspace, model_info, train_args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("cli"))


def test_resume_takes_unspecified_settings_from_the_model_file(workspace, tmp_path):
    """`--resume` without repeating non-default settings continues with the saved ones."""
    first = train_args(workspace, tmp_path, None, None, "--learning-rate", "0.01", "--seed", "7",
                        "--smoothness", "0.5", "--self-training", "1")
    assert main(first) == 0
    resumed = ["train", "--image", str(workspace / "image.tif"), "--labels",
               str(workspace / "labels.tif"), "--out", str(tmp_path / "r.pt"), "--iterations", "2",
               "--resume", str(tmp_path / "m.last.pt"), "--quiet"]
    assert main(resumed) == 0
    cfg = load_model(tmp_path / "r.last.pt").train_config
    assert (cfg.learning_rate, cfg.seed, cfg.iterations) == (0.01, 7, 3)
    assert (cfg.smoothness, cfg.self_training) == (0.5, 1)


def _captured(argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_info_config_reproduces_the_run_through_train_config(workspace, tmp_path):
    torch.set_num_threads(1)
    first = ["train", "--image", str(workspace / "image.tif"), "--labels",
             str(workspace / "labels.tif"), "--out", str(tmp_path / "a.pt"), "--iterations", "3",
             "--seed", "5", "--smoothness", "0.5", "--learning-rate", "0.01", "--no-report", *TINY]
    assert main(first) == 0
    code, text = _captured(["info", str(tmp_path / "a.last.pt"), "--config"])
    assert code == 0 and "seed: 5" in text and "smoothness: 0.5" in text
    config = tmp_path / "run.yaml"
    config.write_text(text)
    again = ["train", "--image", str(workspace / "image.tif"), "--labels",
             str(workspace / "labels.tif"), "--out", str(tmp_path / "b.pt"), "--config",
             str(config), "--quiet", "--device", "cpu"]
    assert main(again) == 0
    assert not (tmp_path / "a.report.png").exists() and (tmp_path / "b.report.png").exists()
    a, b = load_model(tmp_path / "a.last.pt"), load_model(tmp_path / "b.last.pt")
    assert a.train_config == b.train_config and a.model_config == b.model_config
    for name, tensor in a.network.state_dict().items():
        assert torch.equal(tensor, b.network.state_dict()[name]), name


def test_command_line_options_win_over_the_config_file(workspace, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("iterations: 2\nseed: 3\nloss: dice\nbase_filters: 4\nlevels: 2\n"
                      "patch_size: [8, 16, 16]\nself_training: 0\n")
    argv = ["train", "--image", str(workspace / "image.tif"), "--labels",
            str(workspace / "labels.tif"), "--out", str(tmp_path / "m.pt"), "--config",
            str(config), "--seed", "9", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    model = load_model(tmp_path / "m.last.pt")
    cfg = model.train_config
    assert (cfg.iterations, cfg.seed, cfg.loss, cfg.self_training) == (2, 9, "dice", 0)
    assert model.model_config.kwargs["base_filters"] == 4 and cfg.patch_size == (8, 16, 16)


@pytest.mark.parametrize("text, message", [
    ("iterations: 2\nlerning_rate: 0.1\n", "Unknown settings in .*: lerning_rate. Valid settings:"),
    ("loss: lovasz\n", "Invalid setting in .*Unknown loss 'lovasz'"),
    ("- 1\n- 2\n", "must hold a mapping of settings"),
    ("seed: [1\n", "is not valid YAML"),
])
def test_bad_config_files_are_one_line_errors(workspace, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "napari_seg3d.cli", "train", "--image", str(workspace / "image.tif"),
         "--labels", str(workspace / "labels.tif"), "--out", str(tmp_path / "m.pt"), "--config",
         str(config), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr)
    assert not (tmp_path / "m.pt").exists()


def test_2d_model_on_slices_from_the_command_line(workspace, tmp_path, capsys, one_thread):
    """--dims 2 trains a 2D network on slices; info and --config show it; predict --planes
    applies it along the chosen planes; TensorBoard logs when asked."""
    train = ["train", "--image", str(workspace / "image.tif"), "--labels",
             str(workspace / "labels.tif"), "--iterations", "3", "--no-report", *TINY]
    assert main(train + ["--out", str(tmp_path / "m2d.pt"), "--dims", "2", "--planes", "fast",
                         "--tensorboard", str(tmp_path / "runs")]) == 0
    info = model_info(capsys, tmp_path / "m2d.pt")
    assert info["dims"] == 2 and info["network"]["spatial_dims"] == 2
    assert info["training"]["planes"] == "fast" and info["training"]["batch_size"] == 8
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
    code, text = _captured(["info", str(tmp_path / "m2d.pt"), "--config"])
    assert code == 0 and "dims: 2" in text and "planes: fast" in text
    model = load_model(tmp_path / "m2d.pt")
    image = read_volume(workspace / "image.tif").data
    for planes in ("best", None):
        out = tmp_path / f"out-{planes}"
        argv = ["predict", str(workspace / "image.tif"), "--model", str(tmp_path / "m2d.pt"),
                "--out", str(out), "--quiet", "--device", "cpu"]
        assert main(argv + (["--planes", planes] if planes else [])) == 0
        written = read_volume(out / "image_labels.tif").data
        np.testing.assert_array_equal(written, model.predict(image, planes=planes, device="cpu"))
    assert model.network.planes == "fast"  # as trained when not given
    # a config file with dims: 2 builds a 2D network too
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(train + ["--out", str(tmp_path / "again.pt"), "--config", str(config)]) == 0
    assert load_model(tmp_path / "again.pt").dims == 2


@pytest.mark.parametrize("argv, message", [
    (["predict", "{image}", "--model", "{model}", "--out", "{tmp}", "--planes", "fast"],
     "apply to 2D .* models only"),
    (["train", "--image", "{image}", "--labels", "{labels}", "--out", "{tmp}/x.pt",
      "--fine-tune", "{model}", "--dims", "2"], "is a 3D network; a 2D network \\(--dims 2"),
    (["train", "--image", "{image}", "--labels", "{labels}", "--out", "{tmp}/x.pt",
      "--tensorboard", "{image}"], "TensorBoard log .* would be written over the image"),
])
def test_2d_options_that_do_not_fit_are_one_line_errors(workspace, tmp_path, capsys, argv,
                                                        message):
    names = {"image": workspace / "image.tif", "labels": workspace / "labels.tif",
             "model": workspace / "model.pt", "tmp": tmp_path}
    capsys.readouterr()
    assert main([a.format(**names) for a in argv] + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "x.pt").exists()
