"""Shared by the bad-input tests (issue 4): tiny models, the command line in-process, and the
tables of cases that test_bad_input_engine.py, test_bad_input_cli.py and test_bad_input_widgets.py
try for real through the engine, the command line (``napari_seg3d.cli.main`` in-process) and the
napari widgets (a real viewer), with real files and tiny real models; no mocks. The table "Cases
we test" in docs/errors.md is these three modules.

A case that cannot work must give: in the engine, a Seg3DError (or ValueError) with a sentence; on
the command line, exit code 2 and that sentence as the one line on stderr (``predict`` marks the
file ``failed`` with it and exits 3: the other files go on); in napari, the sentence as a
notification (or a ``failed`` row of the Batch widget), and the widget ready for the next run.

Each test module binds the fixtures here to names of its own (``one_torch_thread`` is autouse: the
modules that bind it run with one torch thread).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import run_to_end

from napari_seg3d._sample_data import SAMPLE_DIR
from napari_seg3d.cli import main
from napari_seg3d.engine import (
    SegmentationModel,
    TrainConfig,
    Trainer,
    default_model_config,
    save_model,
)
from napari_seg3d.engine.io import write_volume

PATCH = (8, 16, 16)
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--iterations", "2",
        "--self-training", "0", "--no-report", "--quiet", "--device", "cpu"]
_CACHE: dict[str, SegmentationModel] = {}


# --- tiny models and the command line -------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from more threads, and on a busy machine OpenMP threads waiting
    for each other make them many times slower (as in test_train.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(image, labels, iterations: int = 2, **kwargs) -> SegmentationModel:
    """The best model of a tiny network trained for ``iterations`` on the CPU."""
    cfg = TrainConfig(patch_size=PATCH, batch_size=2, iterations=iterations, device="cpu",
                      validate_every=iterations, self_training=0)
    channels = image.shape[0] if np.ndim(image) == 4 else 1
    classes = len(np.unique(labels[labels > 0]))
    mc = default_model_config(channels, classes, PATCH, base_filters=4, levels=2)
    run = Trainer(image, labels, cfg, model_config=mc, **kwargs).run()
    return run_to_end(run).best


@pytest.fixture
def model(blobs) -> SegmentationModel:
    """A one-channel model of the blobs (trained once)."""
    if "one" not in _CACHE:
        _CACHE["one"] = train(blobs[0], blobs[2])
    return _CACHE["one"]


@pytest.fixture
def two_channel_model(blobs) -> SegmentationModel:
    """A model for 2-channel images (untrained: its channel count is what matters)."""
    if "two" not in _CACHE:
        image = np.stack([blobs[0], -blobs[0]])
        mc = default_model_config(2, 2, PATCH, base_filters=4, levels=2)
        _CACHE["two"] = Trainer(image, blobs[2], TrainConfig(patch_size=PATCH, device="cpu"),
                                model_config=mc).model
    return _CACHE["two"]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the command in-process: ``(exit code, stdout, stderr)``."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def cli_error(capsys, *args) -> str:
    """Run a command that must fail with exit code 2 and one line ``napari-seg3d <command>: error:
    <sentence>`` on stderr; returns that line."""
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith(f"napari-seg3d {args[0]}: error: "), lines[0]
    return lines[0]


def cli_failed_file(capsys, image, model_file, out_dir) -> str:
    """``predict`` one file that must fail: exit code 3, a ``failed`` line with the reason on
    stdout, the count on stderr; returns the reason."""
    code, out, err = cli(capsys, "predict", image, "--model", model_file, "--out", out_dir,
                         "--quiet", "--device", "cpu")
    assert code == 3 and err.strip() == "1 of 1 file(s) failed.", (code, out, err)
    status, _, reason = out.strip().partition(" -> ")
    assert status.split()[0] == "failed", out
    return reason


def cli_train(capsys, tmp_path, image, labels, *extra) -> tuple[int, str, str]:
    return cli(capsys, "train", "--image", image, "--labels", labels, "--out",
               tmp_path / "m.pt", *TINY, *extra)


# --- arrays that must work ------------------------------------------------------------------------

def three_classes(scribbles: np.ndarray) -> np.ndarray:
    """The blobs strokes painted 1 (background), 5 (the ball at the top) and 200 (the others)."""
    y = np.indices(scribbles.shape)[1]
    return np.select([scribbles == 1, (scribbles == 2) & (y < 12), scribbles == 2],
                     [1, 5, 200]).astype(np.uint8)


def with_nan_and_inf(image: np.ndarray) -> np.ndarray:
    image = image.copy()
    image[0, :5, :5] = np.nan
    image[3, 10:12, 10:12] = np.inf
    image[4, 0, :] = -np.inf
    return image


def smaller_than_the_patch(image, truth):
    """(5, 10, 12) around the first ball, one row painted across it."""
    crop = (slice(2, 7), slice(1, 11), slice(2, 14))
    labels = np.zeros((5, 10, 12), np.uint8)
    labels[3, 5] = truth[crop][3, 5]
    return image[crop], labels


def one_slice(image, truth):
    """The slice z = 5 alone, ``(1, Y, X)``, one row painted across a ball."""
    labels = np.zeros((1,) + image.shape[1:], np.uint8)
    labels[0, 6] = truth[5, 6]
    return image[5:6], labels


WORKS = {
    "bool image": lambda image, truth, scr: (truth == 2, scr),
    "float64 image": lambda image, truth, scr: (image.astype(np.float64), scr),
    "NaN and Inf in the image": lambda image, truth, scr: (with_nan_and_inf(image), scr),
    "int64 labels": lambda image, truth, scr: (image, scr.astype(np.int64)),
    "labels 1, 5, 200": lambda image, truth, scr: (image, three_classes(scr)),
    "image smaller than the patch": lambda image, truth, scr: smaller_than_the_patch(image, truth),
    "one-slice image": lambda image, truth, scr: one_slice(image, truth),
    "channels (C, Z, Y, X)": lambda image, truth, scr: (np.stack([image, -image]), scr),
}


def painted(labels) -> set[int]:
    return {int(v) for v in np.unique(labels) if v}


# --- arrays that cannot work: one sentence on every surface ---------------------------------------

def _float_labels(image, truth, scr):
    return image, scr.astype(np.float32)


def _all_nan(image, truth, scr):
    return np.full_like(image, np.nan), scr


def _one_class(image, truth, scr):
    return image, (scr > 0).astype(np.uint8)


def _no_annotations(image, truth, scr):
    return image, np.zeros_like(scr)


def _time_series(image, truth, scr):
    return np.stack([image] * 20), scr


def _five_dimensions(image, truth, scr):
    return image[None, None], scr


NO_IMAGE = "There is no 3D image layer"  # napari does not offer other images to the widgets
REFUSED = {  # case: (make image and labels, the sentence, what napari shows)
    "float labels": (_float_labels, "Annotations must be integer labels, got dtype float32.",
                     None),
    "all-NaN image": (_all_nan, "The image holds no finite value (all NaN or Inf).", None),
    "one class": (_one_class, "Only one class (value 1) is painted", None),
    "no annotations": (_no_annotations, "There are no annotations", None),
    "time series (20, Z, Y, X)": (
        _time_series, ("with at most 16 channels, got shape (20, 17, 24, 26); for a time series "
                       "(T, Z, Y, X), use one time point."), NO_IMAGE),
    "5D image": (_five_dimensions, ("Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got shape "
                                    "(1, 1, 17, 24, 26)."), NO_IMAGE),
}


# --- files that cannot be read --------------------------------------------------------------------

def _random_tiff(folder, image, labels):
    path = folder / "random.tif"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path, "Cannot read {path}: not a TIFF file"


def _truncated_tiff(folder, image, labels):
    path = write_volume(folder / "truncated.tif", image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "{path} is truncated: its image data needs"


def _cut_sample(folder, image, labels):
    """The sample image cut to 60,000 of its 138,925 bytes: tifffile alone reads one 2D page."""
    path = folder / "cut_sample.tif"
    path.write_bytes((SAMPLE_DIR / "image.tif").read_bytes()[:60_000])
    return path, ("{path} is truncated: its image data needs 62920 bytes but the file has 60000. "
                  "Copy or export the file again.")


def _short_imagej_tiff(folder, image, labels):
    """Whole as a file, but its ImageJ metadata describes more images than it holds."""
    path = folder / "short.tif"
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    path.write_bytes(path.read_bytes().replace(b"images=17", b"images=34"))
    return path, ("{path} is truncated or damaged: its ImageJ metadata describes 34 images but "
                  "its pages hold shape (17, 24, 26). Copy or export the file again.")


def _time_series_tiff(folder, image, labels):
    path = folder / "series.tif"
    tifffile.imwrite(path, np.stack([image] * 3), imagej=True, metadata={"axes": "TZYX"})
    return path, "{path} has axes TZYX of shape (3, 17, 24, 26); only (Z, Y, X) volumes"


def _truncated_hdf5(folder, image, labels):
    path = write_volume(f"{folder / 'truncated.h5'}:/raw", image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "Cannot read {path}: Unable to synchronously open file (truncated file"


def _hdf5_without_key(folder, image, labels):
    path = write_volume(f"{folder / 'several.h5'}:/raw", image)
    write_volume(f"{path}:/labels", labels)
    return path, ("{path} holds several volumes: /labels (17, 24, 26) uint8; /raw (17, 24, 26) "
                  "float32. Name the one to use as {path}:/path/to/dataset")


UNREADABLE = {
    "corrupt TIFF (random bytes)": _random_tiff,
    "truncated TIFF": _truncated_tiff,
    "sample TIFF cut at 60,000 bytes": _cut_sample,
    "TIFF shorter than its metadata": _short_imagej_tiff,
    "TIFF time series (T, Z, Y, X)": _time_series_tiff,
    "truncated HDF5": _truncated_hdf5,
    "HDF5 with several datasets, no key": _hdf5_without_key,
}


# --- model files that cannot be loaded ------------------------------------------------------------

class _Payload:
    """Unpickles by running Python code that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


def _truncated_model(folder, model):
    path = save_model(model, folder / "cut.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path, "Cannot load cut.pt: it is truncated, corrupt or not a model file."


def _random_model(folder, model):
    path = folder / "random.pt"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    return path, "Cannot load random.pt: it is truncated, corrupt or not a model file."


def _torch_file_with_code(folder, model):
    path = folder / "evil.pt"
    torch.save(dict(model.to_dict(), history=_Payload(folder / "pwned")), path)
    return path, "Cannot load evil.pt: it holds code or objects that are not allowed."


def _pickle_with_code(folder, model):
    """A plain pickle (protocol 5): torch's safe loader stops at its first opcode ("Unsupported
    operand 149") before reading any name; its opcodes, read without running them, import one."""
    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "napari-seg3d-model", "x": _Payload(folder / "pwned")},
                                  protocol=5))
    return path, "Cannot load evil.pt: it holds code or objects that are not allowed."


def _old_pickle_with_code(folder, model):
    """A plain pickle of protocol 2, which torch's safe loader reads up to the forbidden name."""
    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "napari-seg3d-model", "x": _Payload(folder / "pwned")},
                                  protocol=2))
    return path, "Cannot load evil.pt: it holds code or objects that are not allowed."


BAD_MODELS = {
    "truncated model file": _truncated_model,
    "random bytes as a model file": _random_model,
    "model file carrying code (torch)": _torch_file_with_code,
    "pickle carrying code": _pickle_with_code,
    "pickle carrying code (protocol 2)": _old_pickle_with_code,
}


# --- a model for 2 channels, an image with 1 ------------------------------------------------------

CHANNELS = "The model was trained on 2-channel images"


# --- an output folder that cannot be written ------------------------------------------------------
# Tests run as root, which ignores file permissions: a path through a regular file fails for
# every user.

@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path whose parent is a regular file."""
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "out"
