"""Faults, for real: a process killed while it writes a model file or a batch output leaves the
previous file intact and nothing partial under the final name; batch outputs stay in the output
folder whatever the input names, and inputs are never modified."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_seg3d.engine import TrainConfig, Trainer, load_model, save_model
from napari_seg3d.engine.batch import predict_files
from napari_seg3d.engine.io import read_volume, write_volume

_WRITER = """
import sys, numpy as np, torch
from napari_seg3d.engine import load_model, save_model
from napari_seg3d.engine.io import read_volume, write_volume
kind, source, target = sys.argv[1:4]
model = load_model(source)
big = np.random.default_rng(0).random((64, 256, 256), dtype=np.float32)
print("ready", flush=True)
i = 0
while True:  # write again and again until killed
    i += 1
    if kind == "model":
        model.history["loss"] = [float(i)] * 200_000  # a larger file: more time inside the write
        save_model(model, target)
    else:
        write_volume(target, big + i)
"""


def _train_tiny(image, labels):
    cfg = TrainConfig(patch_size=(8, 16, 16), iterations=2, device="cpu", self_training=0)
    gen = Trainer(image, labels, cfg).run()
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value.last


def _kill_while_writing(kind: str, source: Path, target: Path, delays) -> None:
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(source), str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.mark.parametrize("kind, name", [("model", "model.pt"), ("tif", "out.tif"),
                                        ("h5", "out.h5")])
def test_killed_writer_leaves_a_whole_file_under_the_final_name(blobs, tmp_path, kind, name):
    image, _, labels = blobs
    source = save_model(_train_tiny(image, labels), tmp_path / "source.pt")
    target = tmp_path / name
    if kind == "model":
        save_model(load_model(source), target)
    else:
        write_volume(target, np.zeros((4, 4, 4), np.float32))
    _kill_while_writing(kind, source, target, delays=(0.3, 0.9, 1.7, 2.6))
    # whatever moment the kill came, the final name holds a whole, readable file
    if kind == "model":
        model = load_model(target)
        assert model.class_values == (1, 2)
    else:
        data = np.asarray(read_volume(target).data)
        assert data.shape in ((4, 4, 4), (64, 256, 256))
        if data.shape == (64, 256, 256):
            assert np.isfinite(data).all() and data.min() >= 1.0  # one whole write (big + i)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in {"source.pt", name}]
    # only hidden temporaries of interrupted writes remain, so kills did land mid-write
    assert leftovers and all(n.startswith(".") and n.endswith(".part") for n in leftovers), leftovers


HOSTILE = ["../escape.tif", "..\\win.tif", ".hidden.tif", "spaces and ümlauts.tif",
           "a;rm -rf ~.tif", "-dash.tif", "x" * 200 + ".tif", "dots....tif"]


def test_batch_outputs_stay_in_the_output_folder_and_inputs_are_untouched(blobs, tmp_path):
    image, _, labels = blobs
    model = _train_tiny(image, labels)
    inputs_dir, out_dir = tmp_path / "in" / "deep", tmp_path / "out"
    inputs_dir.mkdir(parents=True)
    paths = []
    for name in HOSTILE:
        path = inputs_dir / name.replace("/", "_")
        write_volume(path, image)
        path.chmod(0o444)  # read-only: reading must not need write access
        paths.append(path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}
    results = predict_files(model, [str(p) for p in paths], out_dir, device="cpu", batch_size=2)
    assert [r.status for r in results] == ["done"] * len(paths), [r.reason for r in results]
    outputs = [Path(r.output) for r in results]
    assert len(set(outputs)) == len(outputs)  # no two inputs share an output
    for out in outputs:
        assert out.resolve().parent == out_dir.resolve() and out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*_labels.tif")) == sorted(o.name for o in outputs)
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime
