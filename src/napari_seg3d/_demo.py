"""``napari-seg3d demo``: the whole workflow on the bundled nuclei sample.

With a display: napari opens with the sample loaded and the Train widget docked. Without one (or
with ``--headless``): the same workflow runs scripted in a real napari window on a virtual display
(Xvfb): sample -> Train widget -> Predict widget; it saves screenshots, the model and the
prediction, and prints the Dice against the ground truth.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-seg3d"


def _start_xvfb() -> subprocess.Popen | None:
    """Start Xvfb on a free display and point DISPLAY at it; None if Xvfb is not installed."""
    if shutil.which("Xvfb") is None:
        return None
    for n in range(99, 140):
        if Path(f"/tmp/.X{n}-lock").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if proc.poll() is None:
            os.environ["DISPLAY"] = f":{n}"
            return proc
    return None


def _wait(app, done, timeout: float) -> None:
    t0 = time.monotonic()
    while not done():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("The demo step did not finish in time.")


def _interactive() -> int:
    import napari

    viewer = napari.Viewer(title="napari-seg3d demo")
    viewer.open_sample(PLUGIN, "nuclei3d")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    print("napari is open with the nuclei sample and the Train widget: press Train.")
    napari.run()
    return 0


def _scripted(out_dir: Path, iterations: int, device: str) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from ._sample_data import load_nuclei
    from .engine.io import write_volume
    from .engine.metrics import dice_scores

    out_dir.mkdir(parents=True, exist_ok=True)
    _, truth, _ = load_nuclei()
    viewer = napari.Viewer(title="napari-seg3d demo", show=True)
    app = QApplication.instance()
    try:
        viewer.window._qt_window.resize(1500, 950)
        viewer.open_sample(PLUGIN, "nuclei3d")
        _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
        train.iterations_spin.setValue(iterations)
        train.device_combo.setCurrentText(device)
        viewer.dims.set_current_step(0, truth.shape[0] // 2)
        t0 = time.monotonic()
        if not train.start_training():
            print("Training could not start (see the message above).", file=sys.stderr)
            return 1
        _wait(app, lambda: train.worker is None, timeout=1800)
        t_train = time.monotonic() - t0
        viewer.screenshot(str(out_dir / "training.png"), canvas_only=False)
        model = train.model
        _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
        predict.set_model(model, "nuclei model")
        t1 = time.monotonic()
        predict.start_prediction()
        _wait(app, lambda: predict.worker is None, timeout=600)
        t_pred = time.monotonic() - t1
        viewer.screenshot(str(out_dir / "prediction.png"), canvas_only=False)
        labels = np.asarray(viewer.layers["nuclei prediction"].data)
        train.save_model_to(out_dir / "nuclei-model.pt")
        write_volume(out_dir / "nuclei_prediction.tif", labels)
    finally:
        viewer.close()
    scores = dice_scores(labels, truth, model.class_values)
    names = model.class_names
    print(f"Trained {model.iteration} iterations in {t_train:.0f} s, predicted in {t_pred:.1f} s.")
    print("Dice against the ground truth: " + ", ".join(
        f"{n} {d:.3f}" for n, d in zip(names, scores)) + f"; mean {np.mean(scores):.3f}")
    print(f"Screenshots, model and prediction in {out_dir}/")
    return 0


def run_demo(out_dir: Path, iterations: int = 800, headless: bool = False,
             device: str = "auto") -> int:
    """Run the demo; returns the process exit code."""
    if not headless and os.environ.get("DISPLAY"):
        return _interactive()
    xvfb = None if os.environ.get("DISPLAY") else _start_xvfb()
    if not os.environ.get("DISPLAY"):
        print("No display and no Xvfb: install xvfb (apt-get install xvfb libxcb-cursor0) "
              "or run on a machine with a display.", file=sys.stderr)
        return 2
    try:
        return _scripted(out_dir, iterations, device)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)
