"""Bad input on the command line (``napari_seg3d.cli.main`` in-process): every case of
:mod:`_bad_input_cases` exits with code 2 and its sentence as the one line on stderr, or
(``predict``) marks the file ``failed`` with it and exits 3."""

from __future__ import annotations

import _bad_input_cases as cases
import numpy as np
import pytest
from _bad_input_cases import (
    BAD_MODELS,
    CHANNELS,
    REFUSED,
    TINY,
    UNREADABLE,
    WORKS,
    cli,
    cli_error,
    cli_failed_file,
    cli_train,
    painted,
)

from napari_seg3d.engine import save_model
from napari_seg3d.engine.io import read_volume, write_volume

# the shared fixtures (see _bad_input_cases), in this module
one_torch_thread = cases.one_torch_thread  # autouse
model = cases.model
two_channel_model = cases.two_channel_model
blocked = cases.blocked


# --- arrays that must work ------------------------------------------------------------------------

@pytest.mark.parametrize("case", WORKS)
def test_works_on_the_command_line(blobs, tmp_path, capsys, case):
    image, labels = WORKS[case](*blobs)
    image_file = write_volume(tmp_path / "image.tif", image)
    labels_file = write_volume(tmp_path / "labels.tif", labels)
    code, out, err = cli_train(capsys, tmp_path, image_file, labels_file)
    assert code == 0 and not err, err
    code, out, err = cli(capsys, "predict", image_file, "--model", tmp_path / "m.pt", "--out",
                         tmp_path / "out", "--quiet", "--device", "cpu")
    assert code == 0 and out.startswith("done"), (out, err)
    pred = read_volume(tmp_path / "out" / "image_labels.tif").data
    assert pred.shape == labels.shape and painted(pred) <= painted(labels)
    if case == "labels 1, 5, 200":
        assert cli(capsys, "info", tmp_path / "m.pt")[1].count('"200": "class 200"') == 1


# --- arrays that cannot work: one sentence on every surface ---------------------------------------

@pytest.mark.parametrize("case", REFUSED)
def test_refused_by_the_command_line(blobs, tmp_path, capsys, case):
    make, message, _ = REFUSED[case]
    image, labels = make(*blobs)
    np.save(tmp_path / "image.npy", image)  # .npy: the array as it is, no axes metadata
    np.save(tmp_path / "labels.npy", labels)
    line = cli_error(capsys, "train", "--image", tmp_path / "image.npy", "--labels",
                     tmp_path / "labels.npy", "--out", tmp_path / "m.pt", *TINY)
    assert message in line
    assert not (tmp_path / "m.pt").exists()


# --- files that cannot be read --------------------------------------------------------------------

@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_files_on_the_command_line(blobs, model, tmp_path, capsys, case):
    path, message = UNREADABLE[case](tmp_path, blobs[0], blobs[2])
    message = message.format(path=path)
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    line = cli_error(capsys, "train", "--image", path, "--labels", labels, "--out",
                     tmp_path / "m.pt", *TINY)
    assert message in line and not (tmp_path / "m.pt").exists()
    model_file = save_model(model, tmp_path / "model.pt")
    assert message in cli_failed_file(capsys, path, model_file, tmp_path / "out")
    assert not any((tmp_path / "out").glob("*"))


# --- model files that cannot be loaded ------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_files_on_the_command_line(blobs, model, tmp_path, capsys, case):
    path, message = BAD_MODELS[case](tmp_path, model)
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    for args in (["info", path],
                 ["predict", image, "--model", path, "--out", tmp_path / "out", "--quiet"],
                 ["train", "--image", image, "--labels", labels, "--out", tmp_path / "m.pt",
                  "--fine-tune", path, *TINY]):
        line = cli_error(capsys, *args)
        assert line.endswith(f"error: {message} Only files saved by napari-seg3d can be loaded.")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.pt").exists()
    assert not (tmp_path / "out").exists()


# --- a model for 2 channels, an image with 1 ------------------------------------------------------

def test_two_channel_model_on_a_one_channel_image_on_the_command_line(blobs, two_channel_model,
                                                                      tmp_path, capsys):
    model_file = save_model(two_channel_model, tmp_path / "two.pt")
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    reason = cli_failed_file(capsys, image, model_file, tmp_path / "out")
    assert reason == "This model was trained on 2-channel images; the image has 1 channel(s)."
    line = cli_error(capsys, "train", "--image", image, "--labels", labels, "--out",
                     tmp_path / "m.pt", "--fine-tune", model_file, *TINY)
    assert line.endswith(f"{CHANNELS}; this image has 1.")


# --- an output folder that cannot be written ------------------------------------------------------

def test_unwritable_output_on_the_command_line(blobs, model, blocked, tmp_path, capsys):
    image = write_volume(tmp_path / "image.tif", blobs[0])
    labels = write_volume(tmp_path / "labels.tif", blobs[2])
    line = cli_error(capsys, "train", "--image", image, "--labels", labels, "--out",
                     blocked / "m.pt", *TINY)
    # refused before training, not after it
    assert f"Cannot write to the output folder {blocked} (Not a directory)." in line
    model_file = save_model(model, tmp_path / "model.pt")
    line = cli_error(capsys, "predict", image, "--model", model_file, "--out", blocked, "--quiet")
    assert f"Cannot write to the output folder {blocked} (Not a directory)." in line
