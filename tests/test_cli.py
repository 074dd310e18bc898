"""The ``napari-seg3d`` command: train, resume, predict, info, and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ball_volume

from napari_seg3d.cli import main
from napari_seg3d.engine import ModelFileError, load_model, uncertainty_map
from napari_seg3d.engine.io import read_volume, write_volume
from napari_seg3d.engine.prediction.output_names import MANIFEST
from napari_seg3d.engine.training.scribbles import simulate_scribbles

TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--quiet",
        "--device", "cpu"]


def _balls(shape=(13, 24, 26)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of bright balls and its truth painted as 3 (background) and 7 (balls)."""
    image, balls = ball_volume(shape)
    return image, np.where(balls, 7, 3).astype(np.uint8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Image, scribbles and truth as TIFF files, and a model trained on them by ``train --truth``
    (its printed output in ``train.out``)."""
    folder = tmp_path_factory.mktemp("cli")
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


def _info(capsys, model: Path) -> dict:
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_writes_the_best_and_the_last_model_and_reports_dice(workspace, capsys):
    printed = (workspace / "train.out").read_text()
    assert f"Saved the best model to {workspace / 'model.pt'}" in printed
    assert "Dice against the ground truth: class 3 " in printed and "; mean " in printed
    last = _info(capsys, workspace / "model.last.pt")
    assert last["iterations_trained"] == 4 and last["optimizer_state"] is True
    assert last["classes"] == {"3": "class 3", "7": "class 7"}
    assert last["network"]["base_filters"] == 4 and last["patch_size"] == [8, 16, 16]
    best = _info(capsys, workspace / "model.pt")
    assert 1 <= best["iterations_trained"] <= 4
    report = workspace / "model.report.png"
    assert f"Training report: {report}" in printed
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report.stat().st_size > 10_000
    assert not list(workspace.glob("*.part"))


@pytest.mark.parametrize(("option", "more", "total"), [("--resume", 2, 6), ("--fine-tune", 3, 3)])
def test_resume_continues_and_fine_tune_restarts_the_count(workspace, tmp_path, capsys, option,
                                                           more, total):
    code = main(["train", "--image", str(workspace / "image.tif"), "--labels",
                 str(workspace / "labels.tif"), "--out", str(tmp_path / "more.pt"),
                 option, str(workspace / "model.last.pt"), "--iterations", str(more), "--quiet",
                 "--device", "cpu"])
    assert code == 0
    info = _info(capsys, tmp_path / "more.last.pt")
    assert info["iterations_trained"] == total and info["patch_size"] == [8, 16, 16]
    history = load_model(tmp_path / "more.last.pt").history["loss"]
    assert len(history) == total
    first = load_model(workspace / "model.last.pt").history["loss"]
    assert (history[:4] == first) == (option == "--resume")


def _predict(workspace, out, *extra) -> int:
    return main(["predict", str(workspace / "image.tif"), "--model", str(workspace / "model.pt"),
                 "--out", str(out), "--quiet", "--device", "cpu", *extra])


def test_predict_writes_painted_labels_then_skips_unless_overwrite(workspace, tmp_path, capsys):
    expected = load_model(workspace / "model.pt").predict(read_volume(workspace / "image.tif").data,
                                                          device="cpu")
    assert set(np.unique(expected)) <= {3, 7}
    out = tmp_path / "out"
    assert _predict(workspace, out) == 0
    assert capsys.readouterr().out.startswith("done")
    written = out / "image_labels.tif"
    np.testing.assert_array_equal(read_volume(written).data, expected)
    write_volume(written, np.zeros_like(expected))  # so that a rewrite shows

    assert _predict(workspace, out) == 0
    assert capsys.readouterr().out.startswith("skipped")
    assert not read_volume(written).data.any()

    assert _predict(workspace, out, "--overwrite") == 0
    assert capsys.readouterr().out.startswith("done")
    np.testing.assert_array_equal(read_volume(written).data, expected)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "image_labels.tif"]


def test_predict_h5_format_and_probabilities(workspace, tmp_path):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--format", "h5", "--probabilities") == 0
    labels = read_volume(out / "image_labels.h5").data
    probs = read_volume(out / "image_probabilities.h5").data
    assert labels.shape == (13, 24, 26) and set(np.unique(labels)) <= {3, 7}
    assert probs.shape == (2, 13, 24, 26) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels, np.array([3, 7])[probs.argmax(0)])


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_predict_block_by_block_from_hdf5_and_zarr_inputs(workspace, tmp_path, fmt):
    """Small blocks (many halos) from a chunked on-disk input give the whole-volume result."""
    model = load_model(workspace / "model.pt")
    image = read_volume(workspace / "image.tif").data
    expected = model.predict(image, device="cpu", probabilities=True)
    source = write_volume(tmp_path / f"in.{fmt}", image)
    out = tmp_path / "out"
    assert main(["predict", str(source), "--model", str(workspace / "model.pt"), "--out", str(out),
                 "--quiet", "--device", "cpu", "--format", fmt, "--probabilities",
                 "--block-size", "5", "9", "11"]) == 0
    np.testing.assert_array_equal(read_volume(out / f"in_labels.{fmt}").data,
                                  np.array([3, 7])[expected.argmax(0)])
    np.testing.assert_allclose(read_volume(out / f"in_probabilities.{fmt}").data, expected,
                               rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, f"in_labels.{fmt}",
                                                     f"in_probabilities.{fmt}"]


@pytest.mark.parametrize("fmt", ["tif", "h5"])
def test_predict_uncertainty_is_written_beside_the_labels(workspace, tmp_path, fmt):
    out = tmp_path / "out"
    assert _predict(workspace, out, "--format", fmt, "--uncertainty") == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, f"image_labels.{fmt}",
                                                     f"image_uncertainty.{fmt}"]
    written = read_volume(out / f"image_uncertainty.{fmt}")
    assert written.key == ("/uncertainty" if fmt == "h5" else None)
    unc = written.data
    assert unc.shape == (13, 24, 26) and unc.dtype == np.float32
    assert 0 <= unc.min() and unc.max() <= 1 and unc.max() > unc.min()
    probs = load_model(workspace / "model.pt").predict(
        read_volume(workspace / "image.tif").data, device="cpu", probabilities=True)
    np.testing.assert_allclose(unc, uncertainty_map(probs), atol=1e-5)


def test_predict_reports_failed_files_with_exit_code_3(workspace, tmp_path, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    code = main(["predict", str(workspace / "image.tif"), str(bad), "--model",
                 str(workspace / "model.pt"), "--out", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 3
    assert [line.split()[0] for line in captured.out.splitlines()] == ["done", "failed"]
    assert captured.err.strip() == "1 of 2 file(s) failed."


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _train_args(workspace, tmp_path, image=None, labels=None, *extra):
    return ["train", "--image", str(image or workspace / "image.tif"), "--labels",
            str(labels or workspace / "labels.tif"), "--out", str(tmp_path / "m.pt"),
            "--iterations", "1", *TINY, *extra]


def _labels_file(tmp_path, labels) -> Path:
    return write_volume(tmp_path / "bad_labels.tif", labels)


def _missing_image(workspace, tmp_path):
    return _train_args(workspace, tmp_path, image=tmp_path / "nothing.tif")


def _labels_wrong_shape(workspace, tmp_path):
    labels = _labels_file(tmp_path, np.ones((3, 4, 5), np.uint8))
    return _train_args(workspace, tmp_path, labels=labels)


def _no_annotations(workspace, tmp_path):
    return _train_args(workspace, tmp_path,
                       labels=_labels_file(tmp_path, np.zeros((13, 24, 26), np.uint8)))


def _one_class(workspace, tmp_path):
    labels = np.zeros((13, 24, 26), np.uint8)
    labels[2:4, 2:6, 2:6] = 5
    return _train_args(workspace, tmp_path, labels=_labels_file(tmp_path, labels))


def _unknown_loss(workspace, tmp_path):
    return _train_args(workspace, tmp_path, None, None, "--loss", "lovasz")


def _corrupt_model(workspace, tmp_path):
    data = (workspace / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    return ["predict", str(workspace / "image.tif"), "--model", str(tmp_path / "cut.pt"),
            "--out", str(tmp_path / "out"), "--quiet"]


def _torch_pickle_model(workspace, tmp_path):
    torch.save({"format": "napari-seg3d-model", "x": _Payload(tmp_path / "pwned")},
               tmp_path / "evil.pt")
    return ["info", str(tmp_path / "evil.pt")]


def _plain_pickle_model(workspace, tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": _Payload(tmp_path / "pwned")}))
    return ["info", str(tmp_path / "evil.pt")]


def _missing_model(workspace, tmp_path):
    return ["info", str(tmp_path / "none.pt")]


@pytest.mark.parametrize(("make", "message"), [
    (_missing_image, "train: error: Cannot find the file .*nothing.tif"),
    (_labels_wrong_shape, r"train: error: The annotations have shape \(3, 4, 5\)"),
    (_no_annotations, "train: error: There are no annotations"),
    (_one_class, r"train: error: Only one class \(value 5\)"),
    (_unknown_loss, "train: error: Unknown loss 'lovasz'; choose one of ce_dice"),
    (_corrupt_model, "predict: error: Cannot load cut.pt: it is truncated, corrupt"),
    (_torch_pickle_model, "info: error: Cannot load evil.pt: it holds code or objects"),
    (_plain_pickle_model, "info: error: Cannot load evil.pt"),
    (_missing_model, "info: error: No model file at"),
])
def test_user_errors_exit_2_with_one_line(workspace, tmp_path, capsys, make, message):
    args = make(workspace, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("napari-seg3d ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "m.pt").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ModelFileError, match="No model file"):
        main(["--debug", "info", str(tmp_path / "none.pt")])


def test_console_script_prints_json_one_line_errors_and_debug_tracebacks(workspace, tmp_path):
    script = Path(sys.executable).with_name("napari-seg3d")

    def run(*args):
        return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    ok = run("info", workspace / "model.pt")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["classes"] == {"3": "class 3", "7": "class 7"}
    _plain_pickle_model(workspace, tmp_path)
    refused = run("info", tmp_path / "evil.pt")  # no warning from torch may reach stderr either
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("napari-seg3d info: error: Cannot load evil.pt")
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "pwned").exists()
    debug = run("--debug", "info", tmp_path / "none.pt")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ModelFileError: No model file at" in debug.stderr


def test_resume_takes_unspecified_settings_from_the_model_file(workspace, tmp_path):
    """`--resume` without repeating non-default settings continues with the saved ones."""
    first = _train_args(workspace, tmp_path, None, None, "--learning-rate", "0.01", "--seed", "7",
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
    info = _info(capsys, tmp_path / "m2d.pt")
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
