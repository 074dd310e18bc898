"""Feedback at any size, in a real napari window: *Train* to the random-forest preview of the
displayed slice on screen, and *Predict* to the displayed slice filled, at 10^6, 10^7 and
(with ``--big``) 10^8 voxels.

The volumes are cubes of bright touching blobs on a noisy background (PSF-like blur, noise),
written slab by slab as chunked HDF5 (cached in ``--cache``), opened lazily as napari Image
layers backed by the HDF5 dataset through dask, as a user opens a large file. The strokes are
short brush strokes of both classes on five z slices (a Labels layer in memory, as painted),
the displayed slice is the middle painted one.

- train: the Train widget with its defaults (instant first prediction on, CPU threads auto).
  Press *Train* (``start_training()``, as a click) and record when the ``<image> preview``
  layer first holds labels on the displayed slice (polled every 10 ms, the GUI thread free in
  between), when the whole view region around it is filled, when the network's first
  iteration was reported, the share of the displayed slice the first preview gets right, and
  the event loop's lateness (a 10 ms timer) meanwhile.
- predict: the Predict widget with a model trained beforehand on the 10^6 volume (the command
  line, ``--iterations``); press *Predict* and record when the first region arrived and when
  the displayed slice of ``<image> prediction`` was filled; then cancel.

Each measurement is a fresh process. Nothing asserts a time: the last line is one JSON object.

    python benchmarks/bench_feedback_scale.py               # 10^6 and 10^7
    python benchmarks/bench_feedback_scale.py --big         # and 10^8 (writes a 400 MB file)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

POLL_S = 0.01
STEPS_S = 20.0  # the network's iterations are counted this long after its first
EDGES = {"1e6": 100, "1e7": 215, "1e8": 464, "5e8": 794}
STROKE_SLICES = (0.15, 0.32, 0.5, 0.68, 0.85)


# --- the volumes ---------------------------------------------------------------------------------

def _blob_centres(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(m, 3)`` on a jittered grid and radii ``(m,)`` of blobs filling an ``n`` cube."""
    step = 14
    grid = np.stack(np.meshgrid(*[np.arange(step // 2, n, step)] * 3, indexing="ij"), -1)
    centres = grid.reshape(-1, 3) + rng.uniform(-3, 3, (grid.size // 3, 3))
    return centres, rng.uniform(3.5, 6.5, len(centres))


def _truth_slab(n: int, z0: int, z1: int, centres, radii) -> np.ndarray:
    """Bool ``(z1 - z0, n, n)``: inside a blob."""
    inside = np.zeros((z1 - z0, n, n), bool)
    for (cz, cy, cx), r in zip(centres, radii):
        lo = np.floor([cz - r, cy - r, cx - r]).astype(int)
        hi = np.ceil([cz + r, cy + r, cx + r]).astype(int) + 1
        a, b = max(lo[0], z0), min(hi[0], z1)
        if a >= b:
            continue
        ys, xs = slice(max(lo[1], 0), min(hi[1], n)), slice(max(lo[2], 0), min(hi[2], n))
        zz, yy, xx = np.ogrid[a:b, ys, xs]
        inside[a - z0:b - z0, ys, xs] |= (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return inside


def make_volume(path: Path, n: int, seed: int = 0) -> None:
    """Write ``image`` (float32), ``truth`` (uint8 1/2) and ``labels`` (strokes) of an ``n``
    cube into ``path``, slab by slab."""
    import h5py
    from scipy import ndimage as ndi

    from napari_seg3d.engine.training.scribbles import stroke

    rng = np.random.default_rng(seed)
    centres, radii = _blob_centres(n, rng)
    tmp = path.with_suffix(".part")
    with h5py.File(tmp, "w") as f:
        chunks = (min(32, n), min(64, n), min(64, n))
        image = f.create_dataset("image", (n, n, n), np.float32, chunks=chunks)
        truth = f.create_dataset("truth", (n, n, n), np.uint8, chunks=chunks)
        for z0 in range(0, n, 32):
            z1 = min(z0 + 32, n)
            a, b = max(z0 - 4, 0), min(z1 + 4, n)  # the blur's context
            inside = _truth_slab(n, a, b, centres, radii)
            blurred = ndi.gaussian_filter(np.where(inside, 0.7, 0.3).astype(np.float32),
                                          (1.5, 1.0, 1.0))
            noise = rng.normal(0, 0.1, blurred.shape).astype(np.float32)
            image[z0:z1] = (blurred + noise)[z0 - a:z1 - a]
            truth[z0:z1] = inside[z0 - a:z1 - a] + 1
        labels = f.create_dataset("labels", (n, n, n), np.uint8, chunks=chunks)
        for z in stroke_slices(n):
            plane = truth[z]
            painted = np.zeros(plane.shape, np.uint8)
            for value in (1, 2):
                for _ in range(4):
                    painted[stroke(plane == value, rng, max(n // 6, 12), 1)] = value
            labels[z] = painted
    tmp.replace(path)


def stroke_slices(n: int) -> list[int]:
    return [round(f * (n - 1)) for f in STROKE_SLICES]


def volume_path(cache: Path, size: str) -> Path:
    path = cache / f"feedback_scale_{size}.h5"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_volume(path, EDGES[size])
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


# --- in the child process ------------------------------------------------------------------------

class Lateness:
    """How late a 10 ms timer fires while the widget works: the event loop's responsiveness."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.late: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer(interval=10)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.late.append(max(0.0, now - self._last - 0.010))
        self._last = now

    def summary(self) -> dict:
        self._timer.stop()
        late = np.asarray(self.late or [0.0]) * 1e3
        return {"lateness_p99_ms": float(np.percentile(late, 99)),
                "lateness_max_ms": float(late.max())}


def _wait(app, until, timeout: float) -> float | None:
    """Process events until ``until()``; the time it became true, or None after ``timeout``."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        app.processEvents()
        if until():
            return time.perf_counter()
        time.sleep(POLL_S)
    return None


def _open(path: str):
    """A shown viewer with the volume (lazy) and its strokes, on the middle painted slice."""
    import dask.array as da
    import h5py
    import napari

    f = h5py.File(path, "r")
    ds = f["image"]
    viewer = napari.Viewer(show=True)
    viewer.add_image(da.from_array(ds, chunks=ds.chunks), name="volume")
    viewer.add_labels(f["labels"][()], name="volume annotations")
    z = stroke_slices(ds.shape[0])[2]
    viewer.dims.set_current_step(0, z)
    return viewer, f, z


def train_run(path: str, timeout: float, quick: bool = True) -> dict:
    """Press Train; when the preview of the displayed slice and of the view region appear, when
    the network's first iteration came and how many it did in the next :data:`STEPS_S`."""
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._widgets import _layers
    from napari_seg3d._widgets.train import PREVIEW_YX, TrainWidget

    viewer, f, z = _open(path)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.setCurrentText("volume")
    widget.annotation_combo.setCurrentText("volume annotations")
    widget.quick_check.setChecked(quick)
    app = QApplication.instance()
    _wait(app, lambda: "sklearn.tree" in sys.modules, 60)  # a user looks first
    _wait(app, lambda: False, 0.5)
    image = viewer.layers["volume"]
    view = _layers.view_region(image, viewer, 1, PREVIEW_YX)
    wide = _layers.view_region(image, viewer, 32, PREVIEW_YX)
    truth = f["truth"][z, view[1], view[2]]

    def shown(region):
        layers = viewer.layers
        layer = layers["volume preview"] if "volume preview" in layers else None  # noqa: SIM401
        return layer is not None and bool(np.all(np.asarray(layer.data[region]) != 0))

    lateness = Lateness()
    t0, cpu0 = time.perf_counter(), time.process_time()
    started = widget.start_training()
    pressed = time.perf_counter() - t0
    first = _wait(app, lambda: shown(view), timeout) if started and quick else None
    out = {"press_s": pressed, "first_preview_s": None if first is None else first - t0,
           "first_preview_cpu_s": None if first is None else time.process_time() - cpu0}
    if first is not None:
        got = np.asarray(viewer.layers["volume preview"].data[view])[0]
        out["first_right"] = float(np.mean(got == truth))
        done = _wait(app, lambda: shown(wide), timeout)
        out["view_region_s"] = None if done is None else done - t0
    job = widget._job
    it = _wait(app, lambda: job is None or job.latest is not None, timeout)
    out["first_iteration_s"] = None if it is None else it - t0
    if it is not None and job is not None:
        first_it = job.latest.iteration
        _wait(app, lambda: False, STEPS_S)
        out["iterations_in_20_s"] = job.latest.iteration - first_it
    out.update(lateness.summary())
    widget.stop_training()
    _wait(app, lambda: widget.worker is None, 300)
    viewer.close()
    f.close()
    return out


def predict_run(path: str, model_path: str, timeout: float) -> dict:
    """Press Predict; when the first region arrived and the displayed slice was filled."""
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._widgets.predict import PredictWidget
    from napari_seg3d.engine import load_model

    viewer, f, z = _open(path)
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(load_model(model_path), "blobs model")
    widget.image_combo.setCurrentText("volume")
    widget.large_folder_edit.setText(str(Path(model_path).parent))
    app = QApplication.instance()
    _wait(app, lambda: False, 0.5)
    marks: dict[str, float] = {}
    on_region = widget._on_region

    def timed(region):
        marks.setdefault("first", time.perf_counter())
        on_region(region)

    widget._on_region = timed
    lateness = Lateness()
    t0 = time.perf_counter()
    assert widget.start_prediction()

    def filled():
        layer = widget.layer
        return layer is not None and bool(np.all(np.asarray(layer.data[z]) != 0))

    seen = _wait(app, filled, timeout)
    out = {"first_region_s": marks["first"] - t0 if "first" in marks else None,
           "slice_filled_s": None if seen is None else seen - t0}
    out.update(lateness.summary())
    widget.cancel()
    _wait(app, lambda: widget.worker is None, 300)
    viewer.close()
    f.close()
    return out


def child(args) -> int:
    from napari_seg3d._demo import _start_xvfb

    xvfb = _start_xvfb() if "DISPLAY" not in os.environ else None
    try:
        if args.what in ("train", "train-off"):
            out = train_run(args.volume, args.timeout, quick=args.what == "train")
        else:
            out = predict_run(args.volume, args.model, args.timeout)
    finally:
        if xvfb is not None:
            xvfb.terminate()
    print(json.dumps(out))
    return 0


# --- the parent ----------------------------------------------------------------------------------

def train_model(volume: Path, out: Path, iterations: int) -> None:
    """A model of the 10^6 volume with the command line's defaults."""
    import h5py

    from napari_seg3d.cli import main
    from napari_seg3d.engine.io import write_volume

    with h5py.File(volume, "r") as f:
        write_volume(out.parent / "image.tif", f["image"][()])
        write_volume(out.parent / "labels.tif", f["labels"][()])
    code = main(["train", "--image", str(out.parent / "image.tif"), "--labels",
                 str(out.parent / "labels.tif"), "--out", str(out), "--iterations",
                 str(iterations), "--quiet", "--no-report"])
    assert code == 0


def _run_child(what: str, volume: Path, model: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--what", what, "--volume", str(volume),
           "--model", str(model), "--timeout", str(timeout)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _s(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--big", action="store_true", help="also 10^8 voxels (a 400 MB volume)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated of 1e6,1e7,1e8,5e8 (5e8 writes a 2 GB volume)")
    p.add_argument("--what", choices=("both", "train", "predict", "train-off"), default="both")
    p.add_argument("--compare-off", action="store_true",
                   help="also train with the instant preview off (the network's own pace)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "napari-seg3d-bench")
    p.add_argument("--iterations", type=int, default=30, help="training of the Predict model")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per wait")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--volume", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    import tempfile

    import torch
    from _common import LoadMonitor, json_line, machine, table

    sizes = args.sizes.split(",") if args.sizes else ["1e6", "1e7"] + (["1e8"] if args.big else [])
    whats = ("train", "predict") if args.what == "both" else (args.what,)
    if args.compare_off:
        whats += ("train-off",)
    load = LoadMonitor()
    record = {"benchmark": "feedback_scale", **machine(torch.device("cpu")), "sizes": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "blobs.pt"
        if "predict" in whats:
            train_model(volume_path(args.cache, "1e6"), model, args.iterations)
        for size in sizes:
            volume = volume_path(args.cache, size)
            record["sizes"][size] = {}
            for what in whats:
                out = _run_child(what, volume, model, args.timeout)
                record["sizes"][size][what] = out
                print(f"{size} {what}: {out}", file=sys.stderr)
            runs = record["sizes"][size]
            t, pr, off = (runs.get(w, {}) for w in ("train", "predict", "train-off"))
            rows.append([f"{EDGES[size]}^3 ({size})", _s(t.get("first_preview_s")),
                         _s(t.get("first_preview_cpu_s")), t.get("first_right"),
                         _s(t.get("view_region_s")), _s(t.get("first_iteration_s")),
                         t.get("iterations_in_20_s"), _s(off.get("first_iteration_s")),
                         off.get("iterations_in_20_s"), t.get("lateness_p99_ms"),
                         _s(pr.get("first_region_s")), _s(pr.get("slice_filled_s")),
                         pr.get("lateness_p99_ms")])
    record.update(load.summary())
    print(f"\nFeedback at scale ({record['cpu_count']} CPUs, load {record.get('load_avg_1m')} "
          "before the run; seconds from the press)")
    print(table(["volume", "Train->slice preview", "CPU s", "share right", "view region",
                 "1st iteration", f"its in {STEPS_S:.0f} s", "off: 1st it", f"its in {STEPS_S:.0f} s",
                 "p99 late ms", "Predict->1st region", "slice filled", "p99 late ms"], rows))
    note = load.note()
    if note:
        print(note)
    print(json_line(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
