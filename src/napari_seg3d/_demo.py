"""``napari-seg3d demo``: the whole workflow on the bundled nuclei sample.

With a display: napari opens with the sample loaded and the Train widget docked. Without one (or
with ``--headless``): the same workflow runs scripted in a real napari window on a virtual display
(Xvfb): sample -> Train widget -> Predict widget; it saves screenshots, the model and the
prediction, and prints the Dice against the ground truth.
"""

from __future__ import annotations

import os
import shutil
import signal
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


class _Stops:
    """Ctrl-C and SIGTERM while the demo runs: the first asks the running step to stop (the
    demo goes on with what it has and saves it), a second aborts at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict = {}

    def __enter__(self) -> _Stops:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            print("\nStopping: the demo saves what it has (Ctrl-C again to abort)...",
                  file=sys.stderr)
        else:
            raise KeyboardInterrupt


def _wait(app, worker_done, stop, stops: _Stops, bar=None, progress=None) -> bool:
    """Run the event loop until ``worker_done()``; ``stop()`` once on a Ctrl-C that comes while
    it waits. Returns whether it was stopped. ``progress()`` gives ``(done, total)`` for the tqdm ``bar``."""
    asked, before = False, stops.count
    while not worker_done():
        app.processEvents()
        time.sleep(0.01)
        if stops.count > before and not asked:
            asked = True
            stop()
        if bar is not None and progress is not None:
            done, total = progress()
            if total and bar.total != total:
                bar.total = total
            if done > bar.n:
                bar.update(done - bar.n)
    return asked


def _interactive() -> int:
    import napari

    viewer = napari.Viewer(title="napari-seg3d demo")
    viewer.open_sample(PLUGIN, "nuclei3d")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    print("napari is open with the nuclei sample and the Train widget: press Train.")
    napari.run()
    return 0


def _train_progress(train) -> tuple[int, int]:
    job = train._job
    p = None if job is None else job.latest
    return (0, 0) if p is None else (p.iteration, p.iterations)


def _predict_progress(predict) -> tuple[int, int]:
    job = predict._job
    return (0, 0) if job is None else (job.windows_done, job.windows_total)


def _scripted(out_dir: Path, iterations: int, device: str) -> int:
    import napari
    from qtpy.QtWidgets import QApplication
    from tqdm import tqdm

    from ._sample_data import load_nuclei
    from .engine.io import write_volume
    from .engine.metrics import dice_scores

    out_dir.mkdir(parents=True, exist_ok=True)
    _, truth, _ = load_nuclei()
    viewer = napari.Viewer(title="napari-seg3d demo", show=True)
    app = QApplication.instance()
    labels, stopped, partial, t_pred, widgets = None, False, False, 0.0, []
    with _Stops() as stops:
        try:
            viewer.window._qt_window.resize(1500, 950)
            viewer.open_sample(PLUGIN, "nuclei3d")
            _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
            widgets.append(train)
            train.iterations_spin.setValue(iterations)
            train.device_combo.setCurrentText(device)
            viewer.dims.set_current_step(0, truth.shape[0] // 2)
            t0 = time.monotonic()
            if not train.start_training():
                print("Training could not start (see the message above).", file=sys.stderr)
                return 1
            with tqdm(total=iterations, unit="it", desc="train") as bar:
                stopped = _wait(app, lambda: train.worker is None, train.stop_training, stops,
                                bar, lambda: _train_progress(train))
            t_train = time.monotonic() - t0
            model, last = train.model, train.last_model
            if model is None:
                print("Training stopped before a model was made; nothing to save.",
                      file=sys.stderr)
                return 130 if stopped else 1
            viewer.screenshot(str(out_dir / "training.png"), canvas_only=False)
            train.save_model_to(out_dir / "nuclei-model.pt")
            _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
            widgets.append(predict)
            predict.set_model(model, "nuclei model")
            t1 = time.monotonic()
            if not predict.start_prediction():
                print("Prediction could not start (see the message above); the model is in "
                      f"{out_dir}/.", file=sys.stderr)
                return 1
            with tqdm(unit="window", desc="predict") as bar:
                partial = _wait(app, lambda: predict.worker is None, predict.cancel, stops,
                                bar, lambda: _predict_progress(predict))
            t_pred = time.monotonic() - t1
            viewer.screenshot(str(out_dir / "prediction.png"), canvas_only=False)
            labels = np.asarray(viewer.layers["nuclei prediction"].data)
            write_volume(out_dir / "nuclei_prediction.tif", labels)
        finally:
            _finish_workers(app, widgets)
            viewer.close()
    trained = last.iteration if last is not None else model.iteration
    print(f"Trained {trained} of {iterations} iterations in {t_train:.0f} s"
          + (" (stopped)" if stopped and trained < iterations else "")
          + f"; kept the model of iteration {model.iteration}; "
          + ("prediction stopped part way" if partial else f"predicted in {t_pred:.1f} s") + ".")
    scores = dice_scores(labels, truth, model.class_values)
    what = "Dice of the partial prediction" if partial else "Dice"
    print(f"{what} against the ground truth: " + ", ".join(
        f"{n} {d:.3f}" for n, d in zip(model.class_names, scores)) + f"; mean {np.mean(scores):.3f}")
    print(f"Screenshots, model and prediction in {out_dir}/")
    return 0


def _finish_workers(app, widgets: list) -> None:
    """Stop the widgets' workers and wait for them, so none outlives the window (Qt would
    delete its signals under it)."""
    for widget in widgets:
        for stop in ("stop_training", "cancel"):
            if widget.worker is not None and hasattr(widget, stop):
                getattr(widget, stop)()
        while widget.worker is not None:
            app.processEvents()
            time.sleep(0.01)


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
