"""Processes that start autosaved training sessions and then crash (``os._exit``: no atexit, no
clean-up of any kind) or end normally, for the autosave tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import napari_seg3d

SRC = Path(napari_seg3d.__file__).resolve().parents[1]

# Starts sessions through the engine as the Train widget does, writes strokes (and a model),
# then dies.
ENGINE = """
import os, sys, time
import numpy as np
from napari_seg3d.engine import load_model
from napari_seg3d.engine.autosave import start_session
strokes, model, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
labels = np.load(strokes)
for i in range(count):
    session = start_session(f"image {i}", labels.shape, f"image {i} annotations",
                            class_names={1: "background", 2: "ball"}, scale=(2.0, 1.0, 1.0),
                            translate=(4.0, 0.0, 1.0), source="/data/image.tif")
    session.save_strokes(labels)
    if model != "-":
        best = load_model(model)
        session.save_model(best, load_model(model) if i % 2 else None)
    time.sleep(0.01)  # distinct saved times
os._exit(1)
"""

# napari with a Train widget: paint the strokes, train a tiny network (with "crash"), then
# crash, close the window, or just exit.
WIDGET = """
import os, sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_seg3d._widgets.train import TrainWidget
image, strokes, how = np.load(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3]
viewer = napari.Viewer(show=False)
viewer.add_image(image, name="blobs", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 1.0))
widget = TrainWidget(viewer)
viewer.window.add_dock_widget(widget)
for spin, p in zip(widget.patch_spins, (8, 16, 16)):
    spin.setValue(p)
widget.iterations_spin.setValue(6)
widget.batch_spin.setValue(2)
widget.filters_spin.setValue(4)
widget.levels_spin.setValue(2)
widget.device_combo.setCurrentText("cpu")
widget.quick_check.setChecked(False)
layer = widget.new_annotation_layer()
layer.data = strokes
widget.class_table.names.update({1: "background", 2: "ball"})
if how == "crash":
    assert widget.start_training()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.01)
    assert widget.model is not None and widget.last_model.iteration == 6
else:
    widget.autosave.save_strokes()
widget.autosave.writer.wait()
print(len(os.listdir(os.environ["NAPARI_SEG3D_AUTOSAVE_DIR"])), flush=True)
if how == "crash":
    os._exit(1)
if how == "close":
    viewer.close()
"""


def _run(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def crash(tmp_path, strokes, model=None, count=1) -> None:
    """Sessions of ``count`` images with these strokes (and model file), then a crash."""
    np.save(tmp_path / "strokes.npy", strokes)
    done = _run(ENGINE, tmp_path / "strokes.npy", model or "-", count)
    assert done.returncode == 1, done.stderr


def napari_session(tmp_path, image, strokes, how: str) -> str:
    """napari and a Train widget in a new process ending as ``how`` says ("crash", "close" or
    "exit"); returns what it printed (the number of session folders before its end)."""
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "strokes.npy", strokes)
    done = _run(WIDGET, tmp_path / "image.npy", tmp_path / "strokes.npy", how)
    assert done.returncode == (1 if how == "crash" else 0), done.stderr
    return done.stdout
