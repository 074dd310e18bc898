"""Feedback times in the GUI on the nuclei sample: pressing *Predict* to the first region in the
layer, and a new stroke to a live preview that reflects it.

A real napari window (on Xvfb when there is no display) with the nuclei sample, as a user has it.
Each run is a fresh process, so the first press pays what a new session pays (first forward,
kernel selection); later presses in the same process show the steady state.

- predict: the Predict widget with a model trained on the sample beforehand (by this script, in
  the parent process, with the command line's defaults and ``--iterations``). Press Predict
  (``start_prediction()``, as a click) and record when the first ``_on_region`` that left labels
  in the ``nuclei prediction`` layer returned (the layer's refresh included) and when the worker
  ended. ``--presses`` presses per run.
- stroke: the Train widget with *Live preview* on, training the sample. Once the network has
  trained ``--warm-iterations`` steps, 9 voxels of the displayed slice that the last preview got
  wrong (nearest to one another) are painted with their true class by ``Labels.paint`` (the
  events of the brush); recorded: when the trainer took the new strokes
  (``Trainer.update_annotations``, in the training thread), when the first preview computed
  after at least one training step on them was shown (and how many of the painted voxels it
  got right), and when the first preview that gets at least half of them right was shown.
  ``--strokes`` strokes per run, 4 s apart.

Targets (issue 7): first region within 1 s of pressing Predict.

    python benchmarks/bench_feedback.py                 # 3 runs of each
    python benchmarks/bench_feedback.py --runs 1 --what predict
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STROKE_GAP_S = 4.0


def _viewer():
    import napari

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-seg3d", "nuclei3d")
    return viewer


def _wait(app, until, timeout: float = 120.0) -> None:
    end = time.perf_counter() + timeout
    while not until():
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.002)


def predict_run(model_path: str, device: str, presses: int) -> dict:
    """In this process: press Predict ``presses`` times; first-region and total seconds."""
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._widgets.predict import PredictWidget
    from napari_seg3d.engine import load_model

    viewer = _viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(load_model(model_path), "nuclei model")
    widget.device_combo.setCurrentText(device)
    app = QApplication.instance()
    app.processEvents()
    marks: dict[str, float] = {}
    on_region = widget._on_region

    def timed_region(region):
        on_region(region)
        layer = widget.layer
        if "first" not in marks and layer is not None and np.asarray(layer.data).any():
            marks["first"] = time.perf_counter()

    widget._on_region = timed_region
    runs = []
    for _ in range(presses):
        marks.clear()
        if "nuclei prediction" in viewer.layers:
            viewer.layers.remove("nuclei prediction")
        app.processEvents()
        t0 = time.perf_counter()
        assert widget.start_prediction()
        _wait(app, lambda: widget.worker is None)
        done = time.perf_counter()
        runs.append({"first_region_s": marks["first"] - t0, "done_s": done - t0})
    viewer.close()
    return {"presses": runs}


def _wrong_voxels(preview, truth: np.ndarray, z: int, n: int) -> np.ndarray | None:
    """Up to ``n`` voxels of slice ``z`` that ``preview`` gets wrong, nearest to one another:
    ``(n, 3)`` coordinates, or None."""
    region = preview.slices
    if not region[0].start <= z < region[0].stop:
        return None
    got = preview.labels[z - region[0].start]
    want = truth[z, region[1], region[2]]
    wrong = np.argwhere(got != want)
    if len(wrong) == 0:
        return None
    seed = wrong[len(wrong) // 2]
    near = wrong[np.argsort(np.abs(wrong - seed).sum(1))[:n]]
    return np.array([[z, y + region[1].start, x + region[2].start] for y, x in near])


def _agreement(preview, voxels: np.ndarray, values: np.ndarray) -> float:
    """Share of ``voxels`` where ``preview`` predicts ``values``."""
    offset = np.array([s.start for s in preview.slices])
    local = voxels - offset
    inside = np.all((local >= 0) & (local < preview.labels.shape), axis=1)
    got = preview.labels[tuple(local[inside].T)]
    return float(np.mean(got == values[inside])) if inside.any() else 0.0


def stroke_run(device: str, strokes: int, warm_iterations: int) -> dict:
    """In this process: train with the live preview; paint strokes where the preview is wrong
    (with the true class); time until a preview trained on them is shown, and until one gets
    at least half of the painted voxels right."""
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._sample_data import load_nuclei
    from napari_seg3d._widgets.train import TrainWidget

    truth = load_nuclei()[1]
    viewer = _viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.iterations_spin.setValue(5000)
    widget.device_combo.setCurrentText(device)
    widget.preview_check.setChecked(True)
    app = QApplication.instance()
    app.processEvents()
    taken: list[tuple[float, int]] = []  # (time, iteration) the trainer took new strokes
    shown: list[tuple[float, object]] = []  # (time, preview) of each preview shown
    show_preview = widget._show_preview

    def timed_preview(preview):
        show_preview(preview)
        if hasattr(preview, "iteration"):
            shown.append((time.perf_counter(), preview))

    widget._show_preview = timed_preview
    assert widget.start_training()
    job = widget._job
    _wait(app, lambda: job.trainer is not None and shown
          and len(job.trainer.model.history["loss"]) >= warm_iterations)
    update = job.trainer.update_annotations

    def timed_update(labels):  # in the training thread, between two steps
        update(labels)
        taken.append((time.perf_counter(), len(job.trainer.model.history["loss"])))

    job.trainer.update_annotations = timed_update
    layer = viewer.layers["nuclei annotations"]
    z = int(viewer.dims.current_step[0])
    scale = np.asarray(layer.scale)
    results = []
    for _ in range(strokes):
        n_taken = len(taken)
        voxels = _wrong_voxels(shown[-1][1], truth, z, 9)
        if voxels is None:
            break
        values = truth[tuple(voxels.T)]
        for voxel, value in zip(voxels, values):  # one brush dab per voxel, as dragging gives
            layer.brush_size = 1
            layer.paint(tuple(voxel * scale), int(value), refresh=True)
        t_stroke = time.perf_counter()
        _wait(app, lambda: len(taken) > n_taken, timeout=60)
        t_taken, it_taken = taken[n_taken]

        def after():
            return [(t, p) for t, p in shown if p.iteration > it_taken and t > t_taken]

        _wait(app, lambda: bool(after()), timeout=60)
        t_first, first = after()[0]
        end = time.perf_counter() + 30
        _wait(app, lambda: time.perf_counter() > end or any(
            _agreement(p, voxels, values) >= 0.5 for _, p in after()), timeout=60)
        right = [(t, p) for t, p in after() if _agreement(p, voxels, values) >= 0.5]
        results.append({
            "painted": len(voxels), "taken_s": t_taken - t_stroke,
            "preview_s": t_first - t_stroke, "steps_on_stroke": first.iteration - it_taken,
            "agreement_first": _agreement(first, voxels, values),
            "half_right_s": right[0][0] - t_stroke if right else None,
            "steps_to_half_right": right[0][1].iteration - it_taken if right else None})
        end = time.perf_counter() + STROKE_GAP_S
        _wait(app, lambda: time.perf_counter() > end)
    widget.stop_training()
    _wait(app, lambda: widget.worker is None)
    viewer.close()
    return {"strokes": results}


def train_model(path: Path, iterations: int) -> None:
    """A model of the sample, trained with the command line's defaults."""
    from napari_seg3d._sample_data import load_nuclei
    from napari_seg3d.cli import main
    from napari_seg3d.engine.io import write_volume

    image, _, scribbles = load_nuclei()
    write_volume(path.parent / "image.tif", image)
    write_volume(path.parent / "labels.tif", scribbles)
    code = main(["train", "--image", str(path.parent / "image.tif"), "--labels",
                 str(path.parent / "labels.tif"), "--out", str(path), "--iterations",
                 str(iterations), "--quiet", "--no-report"])
    assert code == 0


def child(args) -> int:
    from napari_seg3d._demo import _start_xvfb

    xvfb = _start_xvfb() if "DISPLAY" not in os.environ else None
    try:
        if args.what == "predict":
            out = predict_run(args.model, args.device, args.presses)
        else:
            out = stroke_run(args.device, args.strokes, args.warm_iterations)
    finally:
        if xvfb is not None:
            xvfb.terminate()
    print(json.dumps(out))
    return 0


def _fmt(values) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="fresh processes per measurement")
    p.add_argument("--what", choices=("both", "predict", "stroke"), default="both")
    p.add_argument("--presses", type=int, default=3, help="Predict presses per run")
    p.add_argument("--strokes", type=int, default=3, help="strokes per run")
    p.add_argument("--warm-iterations", type=int, default=30,
                   help="training steps before the first stroke")
    p.add_argument("--iterations", type=int, default=200,
                   help="training iterations of the model the predict runs use")
    p.add_argument("--device", default="auto")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    import torch
    from _common import json_line, machine, precision_name

    from napari_seg3d.engine import resolve_device

    device = resolve_device(args.device)
    record = {"benchmark": "feedback", **machine(device),
              "precision": precision_name(device, True)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "nuclei.pt"
        whats = ("predict", "stroke") if args.what == "both" else (args.what,)
        if "predict" in whats:
            train_model(model, args.iterations)
        for what in whats:
            runs = []
            for i in range(args.runs):
                cmd = [sys.executable, __file__, "--child", "--what", what, "--device",
                       args.device, "--model", str(model), "--presses", str(args.presses),
                       "--strokes", str(args.strokes), "--warm-iterations",
                       str(args.warm_iterations)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"{what} run {i + 1}: {runs[-1]}", file=sys.stderr)
            record[what] = runs
            if what == "predict":
                first = [r["presses"][0] for r in runs]
                later = [p for r in runs for p in r["presses"][1:]]
                rows.append(["Predict -> first region, first press", _fmt(
                    [p["first_region_s"] for p in first]), "1"])
                rows.append(["Predict -> prediction done, first press", _fmt(
                    [p["done_s"] for p in first]), ""])
                if later:
                    rows.append(["Predict -> first region, later presses", _fmt(
                        [p["first_region_s"] for p in later]), "1"])
                    rows.append(["Predict -> prediction done, later presses", _fmt(
                        [p["done_s"] for p in later]), ""])
            else:
                strokes = [s for r in runs for s in r["strokes"]]
                rows.append(["stroke -> trainer has it", _fmt([s["taken_s"] for s in strokes]),
                             ""])
                rows.append(["stroke -> first preview trained on it",
                             _fmt([s["preview_s"] for s in strokes]), ""])
                rows.append(["  (its training steps on the stroke / share of the stroke right)",
                             f"{statistics.median(s['steps_on_stroke'] for s in strokes):.0f} / "
                             f"{statistics.median(s['agreement_first'] for s in strokes):.2f}",
                             ""])
                right = [s["half_right_s"] for s in strokes if s["half_right_s"] is not None]
                rows.append([f"stroke -> preview gets half of it right ({len(right)} of "
                             f"{len(strokes)} within 30 s)", _fmt(right) if right else "-", ""])
    print(f"\nGUI feedback on the nuclei sample ({device.type}, "
          f"{record['precision']}; torch {torch.__version__}; {args.runs} runs)")
    print("| what | median / max s | target s |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(json_line(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
