"""The GUI part of ``bench_scale.py``: time from pressing *Train* to the first preview of the
region on screen, in a real napari window (Xvfb when there is no display), in this process.

The volume opens as an Image layer backed by the HDF5 dataset through dask (as the plugin's
reader opens files over 1 GiB: nothing is read until shown), the strokes as a Labels layer in
memory (a painted layer is), the view on the first painted z slice; the Train widget is
docked with its defaults and *Train* pressed. The ``<image> preview`` layer (the widget's
instant random-forest preview) is polled every 20 ms until the displayed slice holds labels.

    python benchmarks/_scale_gui.py IMAGE.h5 STROKES.h5 --name tissue

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

POLL_S = 0.02


def start_xvfb() -> subprocess.Popen | None:
    """Xvfb on a free display, DISPLAY pointed at it; None when Xvfb is not installed."""
    if shutil.which("Xvfb") is None:
        return None
    for n in range(150, 200):
        if Path(f"/tmp/.X{n}-lock").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten",
                                 "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if proc.poll() is None:
            os.environ["DISPLAY"] = f":{n}"
            return proc
    return None


def _wait(app, until, timeout: float) -> float | None:
    """Process events until ``until()``; the time it became true, or None after ``timeout``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        app.processEvents()
        if until():
            return time.perf_counter()
        time.sleep(POLL_S)
    return None


def _slice_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean Dice over the classes of ``truth`` on the part of one slice the preview covers (its
    first record covers the view's y/x extent, which at 10^8 voxels can be part of the slice),
    and the share of the slice it covers."""
    covered = pred != 0
    pred, truth = pred[covered], truth[covered]
    scores = []
    for c in np.unique(truth):
        p, t = pred == c, truth == c
        both = np.count_nonzero(p) + np.count_nonzero(t)
        scores.append(2 * np.count_nonzero(p & t) / max(both, 1))
    return float(np.mean(scores)) if scores else float("nan"), float(covered.mean())


def first_preview(image_path: str, strokes_path: str, name: str, z: int, timeout: float,
                  profile: str | None = None) -> dict:
    """Open, dock, press Train, wait for the preview on slice ``z``; stop and close. With
    ``profile``, the press (what holds the GUI thread) is profiled into that pstats file."""
    import dask.array as da
    import h5py
    import napari
    from qtpy.QtWidgets import QApplication

    t_open = time.perf_counter()
    f = h5py.File(image_path, "r")
    ds = f["image"]
    scale = tuple(float(v) for v in ds.attrs["element_size_um"])
    with h5py.File(strokes_path, "r") as fs:
        strokes = fs["labels"][()]
    truth = f["truth"][z]
    viewer = napari.Viewer(show=True)
    viewer.add_image(da.from_array(ds, chunks=ds.chunks), name=name, scale=scale)
    viewer.add_labels(strokes, name=f"{name} annotations", scale=scale)
    viewer.dims.set_current_step(0, z)
    _, widget = viewer.window.add_plugin_dock_widget("napari-seg3d", "Train")
    widget.image_combo.setCurrentText(name)
    widget.annotation_combo.setCurrentText(f"{name} annotations")
    app = QApplication.instance()
    # a user looks around before pressing Train: let the widget's background import finish
    _wait(app, lambda: "sklearn.ensemble" in sys.modules, 60)
    _wait(app, lambda: False, 0.5)
    opened = time.perf_counter() - t_open
    layer_name = f"{name} preview"

    marks: dict[str, float] = {}

    def on_slice():  # also notes when the trainer exists and when the preview layer appears
        now = time.perf_counter()
        if widget.trainer is not None:
            marks.setdefault("trainer_built_s", now - t0)
        if layer_name not in viewer.layers:
            return False
        marks.setdefault("preview_layer_s", now - t0)
        return bool(np.asarray(viewer.layers[layer_name].data[z]).any())

    profiler = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    started = widget.start_training()
    pressed = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    seen = _wait(app, on_slice, timeout) if started else None
    out = {"opened_s": opened, "press_s": pressed, "started": bool(started),
           "first_preview_s": None if seen is None else seen - t0, "z": z, **marks}
    if seen is not None:
        out["slice_dice"], out["slice_covered"] = _slice_dice(
            np.asarray(viewer.layers[layer_name].data[z]), truth)
    widget.stop_training()
    stopped = _wait(app, lambda: widget.worker is None, 300)
    out["stop_s"] = None if stopped is None else stopped - t0
    viewer.close()
    f.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image")
    p.add_argument("strokes")
    p.add_argument("--name", default="volume")
    p.add_argument("--z", type=int, required=True, help="the displayed z slice")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--profile", help="write a pstats profile of pressing Train here")
    args = p.parse_args(argv)
    xvfb = start_xvfb() if "DISPLAY" not in os.environ else None
    try:
        out = first_preview(args.image, args.strokes, args.name, args.z, args.timeout,
                            args.profile)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
