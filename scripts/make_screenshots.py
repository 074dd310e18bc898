"""Make the screenshots of the user guide (docs/images/*.png) in a real napari window.

    .venv/bin/python scripts/make_screenshots.py [--out docs/images] [--iterations 150]

Without a display it starts Xvfb itself. It runs the workflow of the guide on the bundled nuclei
sample: annotate.png (annotation layer ready to paint), docked.png (the Train, Predict and Batch
predict widgets docked together, before training), training.png (live loss/Dice plot),
demo.png (sample + prediction, for the README), prediction-streaming.png (a larger volume half
predicted, seen from the side so the z-slabs that already arrived show), batch.png (the Batch
predict widget after three files, one of them corrupt). About 2.5 minutes on 2 idle CPU cores,
most of it training (150 iterations); PNGs over 400 KB are reduced to a 256-colour palette.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-seg3d"
ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 400_000


def start_xvfb() -> subprocess.Popen:
    """Start Xvfb on a free display and point DISPLAY at it (the demo's own helper)."""
    from napari_seg3d._demo import _start_xvfb

    proc = _start_xvfb()
    if proc is None:
        sys.exit("No display and no Xvfb: install xvfb (apt-get install xvfb libxcb-cursor0).")
    return proc


def pump(app, seconds: float = 0.3) -> None:
    """Let the event loop run (draws, timers, worker signals) for ``seconds``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def wait(app, done, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not done():
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} did not finish in {timeout:.0f} s.")


def dismiss_notifications(viewer) -> None:
    """Close the notification toasts (they would cover the canvas in the next screenshot)."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # moved in another napari version: keep the toasts
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()


def layout(viewer, app, docks=(), widths=()) -> None:
    """The window at 1500 x 950, and ``docks`` ``widths`` pixels wide."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.resize(1500, 950)
    if docks:
        window.resizeDocks(list(docks), list(widths), Qt.Orientation.Horizontal)
    pump(app, 0.3)


def shoot(viewer, app, path: Path, settle: float = 0.5) -> None:
    """Screenshot of the whole window; shrunk to an adaptive palette if over MAX_BYTES."""
    from PIL import Image

    dismiss_notifications(viewer)
    pump(app, settle)
    viewer.screenshot(str(path), canvas_only=False)
    if path.stat().st_size > MAX_BYTES:
        img = Image.open(path).convert("RGB")
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                     dither=Image.Dither.NONE).save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        img = Image.open(path)
        scale = 0.8
        img.resize((int(img.width * scale), int(img.height * scale)),
                   Image.Resampling.LANCZOS).save(path, optimize=True)
    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
          f"{path.stat().st_size // 1000} KB", flush=True)


def mirror_tile(image: np.ndarray, reps: tuple[int, int, int]) -> np.ndarray:
    """``image`` repeated ``reps`` times along each axis, every other copy mirrored (no seams)."""
    for axis, n in enumerate(reps):
        parts = [image if i % 2 == 0 else np.flip(image, axis) for i in range(n)]
        image = np.concatenate(parts, axis=axis)
    return np.ascontiguousarray(image)


def filled_slabs(data: np.ndarray) -> int:
    """How many z-slices of a prediction layer hold results (every predicted voxel is > 0)."""
    return int(np.count_nonzero(data[:, data.shape[1] // 2, :].any(axis=1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--iterations", type=int, default=150)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    xvfb = None if os.environ.get("DISPLAY") else start_xvfb()
    try:
        return run(args.out, args.iterations)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def run(out: Path, iterations: int) -> int:
    import napari
    import tifffile
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._sample_data import load_nuclei

    t_start = time.monotonic()
    viewer = napari.Viewer(title="napari-seg3d", show=True)
    app = QApplication.instance()
    tmp = Path(tempfile.mkdtemp(prefix="seg3d-screens-"))
    try:
        viewer.window._qt_window.resize(1500, 950)
        pump(app, 1.0)

        # --- annotate.png: the sample, the Train widget, the annotation layer in paint mode -----
        viewer.open_sample(PLUGIN, "nuclei3d")
        dock_train, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
        image = viewer.layers["nuclei"]
        ann = viewer.layers["nuclei annotations"]
        # the z-slice with the most strokes, so the screenshot shows some
        z_best = int(np.argmax((np.asarray(ann.data) > 0).sum(axis=(1, 2))))
        viewer.dims.set_current_step(0, z_best)
        viewer.layers.selection.active = ann
        ann.mode = "paint"
        ann.selected_label = 2
        ann.brush_size = 3
        layout(viewer, app, [dock_train], [440])
        viewer.reset_view()
        shoot(viewer, app, out / "annotate.png")

        # --- docked.png: the three widgets in one dock area (the class table keeps its rows,
        # the plot waits with plain axes)
        extra = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[0]
                 for name in ("Predict", "Batch predict")]
        layout(viewer, app, [dock_train], [440])
        shoot(viewer, app, out / "docked.png")
        for dock in extra:
            viewer.window.remove_dock_widget(dock)
        layout(viewer, app, [dock_train], [440])

        # --- training.png: training with the live plot and the live preview ----------------------
        train.iterations_spin.setValue(iterations)
        train.preview_interval_s = 1.0
        t0 = time.monotonic()
        if not train.start_training():
            print("Training could not start.", file=sys.stderr)
            return 1

        def iteration() -> int:
            job = train._job
            return 0 if job is None or job.latest is None else job.latest.iteration

        # the live preview costs a prediction a second on the CPU: switch it on near the end only
        wait(app, lambda: train.worker is None or iteration() >= int(iterations * 0.7),
             timeout=900, what="Training")
        train.preview_check.setChecked(True)
        print(f"  iteration {iteration()} after {time.monotonic() - t0:.0f} s", flush=True)
        # a screenshot while it runs (status line, progress, plot, preview)
        wait(app, lambda: train.worker is None or "nuclei preview" in viewer.layers,
             timeout=900, what="Training")
        pump(app, 1.0)
        viewer.layers.selection.active = ann
        shoot(viewer, app, out / "training.png")
        train.preview_check.setChecked(False)  # the rest of the run at full speed
        print(f"  iteration {iteration()} after {time.monotonic() - t0:.0f} s", flush=True)
        wait(app, lambda: train.worker is None, timeout=900, what="Training")
        print(f"  trained {iterations} iterations in {time.monotonic() - t0:.0f} s")
        model_path = tmp / "nuclei model.pt"
        if train.save_model_to(model_path) is None:
            print("Could not save the model.", file=sys.stderr)
            return 1
        if "nuclei preview" in viewer.layers:
            viewer.layers.remove("nuclei preview")

        # --- demo.png: sample + prediction; Train on the right, Predict under the layer list -----
        dock_predict, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
        viewer.window._qt_window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea,
                                               dock_predict)
        layout(viewer, app, [dock_train, dock_predict], [440, 330])
        predict.image_combo.setCurrentText("nuclei")
        predict.start_prediction()
        wait(app, lambda: predict.worker is None, timeout=300, what="Prediction")
        predict.layer.opacity = 0.5
        viewer.layers.selection.active = predict.layer
        viewer.reset_view()
        shoot(viewer, app, out / "demo.png")

        # --- prediction-streaming.png: a larger volume, half predicted ---------------------------
        big = mirror_tile(np.asarray(image.data), (3, 2, 2))  # (93, 122, 114)
        for layer in list(viewer.layers):
            layer.visible = False
        viewer.window.remove_dock_widget(dock_train)
        viewer.window._qt_window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea,
                                               dock_predict)
        viewer.window._qt_window.resizeDocks([viewer.window._qt_viewer.dockLayerList], [300],
                                             Qt.Orientation.Horizontal)
        big_layer = viewer.add_image(big, name="nuclei x12", colormap="gray")
        predict.image_combo.setCurrentText("nuclei x12")
        predict.batch_spin.setValue(2)  # smaller steps: the stream advances in more, finer slabs
        viewer.dims.order = (1, 0, 2)  # look from the side: z runs down the screen
        viewer.dims.set_current_step(1, big.shape[1] // 2)
        layout(viewer, app, [dock_predict], [440])
        viewer.reset_view()
        pump(app, 0.5)
        predict.start_prediction()
        layer = predict.layer
        layer.opacity = 0.6
        viewer.layers.selection.active = layer
        half = big.shape[0] // 2
        wait(app, lambda: predict.worker is None or filled_slabs(layer.data) >= half - 4,
             timeout=300, what="Streaming prediction")
        shoot(viewer, app, out / "prediction-streaming.png", settle=0.15)  # while it streams
        print(f"  {filled_slabs(layer.data)}/{big.shape[0]} z-slices in the screenshot")
        predict.cancel()  # what is done stays, the layer is marked (partial)
        wait(app, lambda: predict.worker is None, timeout=60, what="Cancel")

        # --- batch.png: three files, one corrupt --------------------------------------------------
        viewer.window.remove_dock_widget(dock_predict)
        viewer.layers.remove(big_layer)
        viewer.layers.remove(layer)
        viewer.dims.order = (0, 1, 2)
        for lyr in viewer.layers:
            lyr.visible = False
        vols = tmp / "volumes"
        vols.mkdir()
        raw, _, _ = load_nuclei()
        tifffile.imwrite(vols / "embryo_01.tif", raw)
        tifffile.imwrite(vols / "embryo_02.tif", np.ascontiguousarray(raw[:, ::-1]))
        good = (vols / "embryo_01.tif").read_bytes()
        (vols / "embryo_03.tif").write_bytes(good[: len(good) // 3])  # a truncated copy
        dock_batch, batch = viewer.window.add_plugin_dock_widget(PLUGIN, "Batch predict")
        batch.set_inputs([vols])
        batch.set_model_path(model_path)
        batch.set_output_dir(tmp / "results")
        batch.run()
        wait(app, lambda: batch.worker is None, timeout=300, what="Batch prediction")
        viewer.add_image(raw, name="embryo_01")
        opened = batch.open_results()
        for lyr in opened:
            lyr.opacity = 0.5
        for lyr in opened[1:]:
            lyr.visible = False
        layout(viewer, app, [dock_batch], [520])
        batch._table.resizeRowsToContents()  # the failure reason wraps instead of being cut
        shoot(viewer, app, out / "batch.png")
        print("  batch: " + ", ".join(f"{Path(r.input).name} {r.status}" for r in batch.results))
    finally:
        viewer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Screenshots in {out} ({time.monotonic() - t_start:.0f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
