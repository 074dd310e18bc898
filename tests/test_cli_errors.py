"""The ``napari-seg3d`` command's one-line errors (exit 2), --debug tracebacks, the console script."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import ModelFileError
from napari_seg3d.engine.io import write_volume
from _cli_workspace import make_workspace, train_args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("cli"))


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _labels_file(tmp_path, labels) -> Path:
    return write_volume(tmp_path / "bad_labels.tif", labels)


def _missing_image(workspace, tmp_path):
    return train_args(workspace, tmp_path, image=tmp_path / "nothing.tif")


def _labels_wrong_shape(workspace, tmp_path):
    labels = _labels_file(tmp_path, np.ones((3, 4, 5), np.uint8))
    return train_args(workspace, tmp_path, labels=labels)


def _no_annotations(workspace, tmp_path):
    return train_args(workspace, tmp_path,
                       labels=_labels_file(tmp_path, np.zeros((13, 24, 26), np.uint8)))


def _one_class(workspace, tmp_path):
    labels = np.zeros((13, 24, 26), np.uint8)
    labels[2:4, 2:6, 2:6] = 5
    return train_args(workspace, tmp_path, labels=_labels_file(tmp_path, labels))


def _unknown_loss(workspace, tmp_path):
    return train_args(workspace, tmp_path, None, None, "--loss", "lovasz")


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
