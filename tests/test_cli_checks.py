"""Every option of ``napari-seg3d train`` is checked before it trains (most before it reads
anything), images it cannot use are one sentence on every command, and signals stop a command
cleanly: SIGTERM during ``predict`` leaves nothing behind, two Ctrl-C during a step abort.
Real files, the real command line (in-process, or a process of its own where a signal is sent)."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_seg3d.cli import main
from napari_seg3d.engine import load_model
from napari_seg3d.engine.io import read_volume, write_volume

SHAPE = (8, 20, 22)
TINY = ["--patch-size", "8", "16", "16", "--base-filters", "4", "--levels", "2", "--iterations",
        "2", "--self-training", "0", "--no-report", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``(folder, image.tif, labels.tif, model.pt)``: a noise image with two balls, strokes, and
    a tiny model trained on them."""
    folder = tmp_path_factory.mktemp("checks")
    z, y, x = np.indices(SHAPE)
    balls = ((z - 4) ** 2 + (y - 6) ** 2 + (x - 7) ** 2 < 10) | \
        ((z - 4) ** 2 + (y - 14) ** 2 + (x - 15) ** 2 < 10)
    image = (balls + np.random.default_rng(0).normal(0, 0.2, SHAPE)).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[4, 6, 3:11], labels[4, 14, 11:19] = 2, 2
    labels[4, 2, :], labels[4, 18, :] = 1, 1
    image_file = write_volume(folder / "image.tif", image)
    labels_file = write_volume(folder / "labels.tif", labels)
    assert main(["train", "--image", str(image_file), "--labels", str(labels_file), "--out",
                 str(folder / "model.pt"), *TINY]) == 0
    return folder, image_file, labels_file, folder / "model.pt"


def _one_error(capsys, args) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (code, err)
    return err[0]


def _unavailable_device() -> str:
    mps = getattr(torch.backends, "mps", None)
    return "mps" if not (mps and mps.is_available()) else "cuda"


OPTIONS = {  # case: (options, the sentence after "train: error: "); the image does not exist
    "--seed -1": (["--seed", "-1"], "--seed must be a whole number from 0 to 4,294,967,295, "
                  "got -1."),
    "--validation-fraction -1": (["--validation-fraction", "-1"], "--validation-fraction must "
                                 "be a number from 0 to 0.5, got -1.0."),
    "--validation-fraction 0.9": (["--validation-fraction", "0.9"], "--validation-fraction must "
                                  "be a number from 0 to 0.5, got 0.9."),
    "--learning-rate 0": (["--learning-rate", "0"], "--learning-rate must be a number above 0 "
                          "and at most 1, got 0.0."),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size must be a whole number from 1 to "
                       "1,024, got 0."),
    "--levels 9": (["--levels", "9"], "--levels must be a whole number from 1 to 8, got 9."),
    "--patch-size 0 16 16": (["--patch-size", "0", "16", "16"], "--patch-size must be three "
                             "positive integers (Z, Y, X), got [0, 16, 16]."),
    "an unavailable --device": (["--device", _unavailable_device()], "was asked for, but"),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_a_wrong_option_is_refused_before_anything_is_read(tmp_path, capsys, case):
    options, sentence = OPTIONS[case]
    line = _one_error(capsys, ["train", "--image", tmp_path / "missing.tif", "--labels",
                               tmp_path / "missing.tif", "--out", tmp_path / "m.pt", *options])
    assert line.startswith("napari-seg3d train: error: ") and sentence in line, line
    assert list(tmp_path.iterdir()) == []


def test_out_naming_a_folder_is_refused_before_training(data, tmp_path, capsys):
    folder, image, labels, _ = data
    (tmp_path / "models").mkdir()
    line = _one_error(capsys, ["train", "--image", image, "--labels", labels, "--out",
                               tmp_path / "models", *TINY])
    assert line == (f"napari-seg3d train: error: --out {tmp_path / 'models'} is a folder; name "
                    f"the model file to write, e.g. --out {tmp_path / 'models' / 'model.pt'}.")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("truth, sentence", [
    ("missing.tif", "Cannot find the file"),
    ("small.tif", "has shape (8, 20, 21) but the image is (8, 20, 22); give the ground truth of "
                  "this image."),
])
def test_truth_is_checked_before_training(data, tmp_path, capsys, truth, sentence):
    folder, image, labels, _ = data
    write_volume(tmp_path / "small.tif", np.zeros((8, 20, 21), np.uint8))
    line = _one_error(capsys, ["train", "--image", image, "--labels", labels, "--out",
                               tmp_path / "out" / "m.pt", "--truth", tmp_path / truth, *TINY])
    assert sentence in line and not (tmp_path / "out").exists()  # nor the folder it made


def test_levels_too_deep_for_the_patch_is_refused_before_training(data, tmp_path, capsys):
    folder, image, labels, _ = data
    line = _one_error(capsys, ["train", "--image", image, "--labels", labels, "--out",
                               tmp_path / "m.pt", *TINY, "--levels", "5"])
    assert line.endswith("levels 5 is too deep for the patch (8, 16, 16): its 4 poolings shrink "
                         "Z 16-fold, more than its 8 voxels; choose levels 4 or fewer, or a larger "
                         "patch.")


def test_a_2d_npy_is_one_slice_like_a_2d_tiff(data, tmp_path, capsys):
    """Both are read as (1, Y, X) (a 2D TIFF always was): the same model, the same prediction."""
    folder, image, labels, _ = data
    plane, strokes = read_volume(image).data[4], read_volume(labels).data[4]
    files = {"npy": (tmp_path / "i.npy", tmp_path / "l.npy"),
             "tif": (tmp_path / "i.tif", tmp_path / "l.tif")}
    np.save(files["npy"][0], plane)
    np.save(files["npy"][1], strokes)
    tifffile.imwrite(files["tif"][0], plane)
    tifffile.imwrite(files["tif"][1], strokes)
    predictions = {}
    for kind, (img, lab) in files.items():
        assert main(["train", "--image", str(img), "--labels", str(lab), "--out",
                     str(tmp_path / f"{kind}.pt"), *TINY]) == 0
        assert main(["predict", str(img), "--model", str(tmp_path / f"{kind}.pt"), "--out",
                     str(tmp_path / kind), "--quiet", "--device", "cpu"]) == 0
        predictions[kind] = read_volume(tmp_path / kind / f"i_labels.{'tif'}").data
    assert predictions["npy"].shape == (1, *plane.shape)
    np.testing.assert_array_equal(predictions["npy"], predictions["tif"])
    for name, tensor in load_model(tmp_path / "npy.pt").network.state_dict().items():
        assert torch.equal(tensor, load_model(tmp_path / "tif.pt").network.state_dict()[name])


def _huge_tiff(path: Path) -> Path:
    """A small zlib TIFF whose tags declare 10^6 x 10^6 pixels."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), compression="zlib", rowsperstrip=64)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
            struct.pack_into("<I", data, tif.pages[0].tags[name].valueoffset, 1_000_000)
    path.write_bytes(bytes(data))
    return path


def test_a_tiff_declaring_a_terapixel_is_one_sentence_for_train_and_predict(data, tmp_path,
                                                                             capsys):
    """Before: MemoryError in train, 'not enough memory for this volume' in predict."""
    huge = _huge_tiff(tmp_path / "huge.tif")
    line = _one_error(capsys, ["train", "--image", huge, "--labels", huge, "--out",
                               tmp_path / "m.pt", *TINY])
    sentence = line.removeprefix("napari-seg3d train: error: ")
    assert sentence.startswith(f"Cannot read {huge}: its image of shape (1000000, 1000000) "
                               "uint8 needs 1.0 TB of memory and ")
    capsys.readouterr()
    assert main(["predict", str(huge), "--model", str(data[3]), "--out", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu"]) == 3
    out = capsys.readouterr().out.strip()
    failed = out.partition(" -> ")[2]
    # the same sentence; the free memory it quotes moves with whatever else runs (a test beside it)
    def free_memory_masked(text):
        return re.sub(r"and [0-9.]+ [KMGT]?B is available", "and N is available", text)
    assert free_memory_masked(failed) == free_memory_masked(sentence), (out, line)
    assert "and N is available" in free_memory_masked(sentence)
    assert not (tmp_path / "out").exists()  # the folder the failed run made is gone


def test_a_complex_image_is_refused_on_every_command(data, tmp_path, capsys):
    folder, image, labels, model = data
    np.save(tmp_path / "c.npy", read_volume(image).data.astype(np.complex64) * (1 + 1j))
    sentence = ("The image holds complex numbers (complex64); napari-seg3d segments real "
                "intensities: save their magnitude (numpy.abs) or their real part instead.")
    line = _one_error(capsys, ["train", "--image", tmp_path / "c.npy", "--labels", labels,
                               "--out", tmp_path / "m.pt", *TINY])
    assert line == f"napari-seg3d train: error: {sentence}"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "c.npy"), "--model", str(model), "--out",
                 str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 3
    assert capsys.readouterr().out.strip().endswith(f"-> {sentence}")


# --- signals: a process of its own -------------------------------------------------------------

def _start(args, head=("-m", "napari_seg3d.cli")) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # as in a terminal (see stop tests)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return subprocess.Popen([sys.executable, *head, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _wait_for(proc, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)


@pytest.mark.parametrize("fmt", ["npy", "h5", "zarr"])
def test_sigterm_during_predict_leaves_no_temporary(data, tmp_path, fmt):
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).normal(size=(48, 96, 96)).astype(np.float32))
    out = tmp_path / "out"
    proc = _start(["predict", big, "--model", data[3], "--out", out, "--format", fmt,
                   "--probabilities", "--device", "cpu", "--quiet", "--block-size", "16", "96",
                   "96"])
    _wait_for(proc, lambda: out.exists() and any(p.name.endswith(".part")
                                                 for p in out.iterdir()))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == [
        "Stopping: the outputs of the file being predicted are deleted (Ctrl-C again to stop at "
        "once)...", "napari-seg3d predict: interrupted"], err
    assert not out.exists()  # no .part, and the folder it made is gone


_SLOW_LAYERS = """
import sys, time
import numpy as np
import torch
from napari_seg3d.cli import main
a = np.ones((800, 800))
t0 = time.perf_counter(); a @ a; t1 = time.perf_counter() - t0
big = np.ones((int(800 * (1.0 / t1) ** (1 / 3)),) * 2)  # one product of about 1 s
conv = torch.nn.Conv3d.forward
def slow(self, x):  # a layer that computes for 1 s in C, as a large one does
    with open(sys.argv[-1], "a") as fh:  # one line before each: the test's moment
        fh.write("conv\\n")
    big @ big
    return conv(self, x)
torch.nn.Conv3d.forward = slow
sys.exit(main(sys.argv[1:-1]))
"""


def test_two_ctrl_c_within_one_layer_abort(data, tmp_path):
    """Both arrive while a layer computes, so Python runs the handler once: before, that was one
    Ctrl-C (the run stopped, saved and exited 0); now the second is counted and aborts."""
    folder, image, labels, _ = data
    marker = tmp_path / "computing"
    proc = _start(["train", "--image", image, "--labels", labels, "--out", tmp_path / "m.pt",
                   *TINY, "--iterations", "50", marker], head=("-c", _SLOW_LAYERS))
    _wait_for(proc, lambda: marker.exists() and marker.read_text().count("conv") >= 3)
    calls = marker.read_text().count("conv")
    _wait_for(proc, lambda: marker.read_text().count("conv") > calls)  # a layer just began
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "napari-seg3d train: interrupted", err
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.last.pt").exists()
