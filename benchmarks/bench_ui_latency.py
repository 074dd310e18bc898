"""GUI responsiveness: event-loop lateness in a real napari viewer while the plugin works.

A 10 ms Qt timer ticks all the time; each tick's lateness is its actual interval minus 10 ms, so a
handler that blocks the GUI thread for 300 ms shows as one tick 290 ms late. The script opens a
napari viewer (on a virtual display: it starts Xvfb when DISPLAY is unset), adds a synthetic
volume with simulated brush strokes, docks the plugin's Train and Predict widgets and, in the 2D
view and then in the 3D view, measures these phases:

- idle: nothing running;
- redraw (a reference, no plugin code): a few canvas redraws, what one frame costs here;
- train: ``TrainWidget.start_training()`` (as pressing Train) until its worker finished;
- predict: ``PredictWidget.start_prediction()`` (as pressing Predict), streaming the result into
  the ``<image> prediction`` Labels layer, until its worker finished.

Targets (from the issue): p99 lateness < 50 ms and max < 200 ms in both views. It also prints the
time from pressing Predict to the first region in the layer, the GUI-thread handlers' times and
the longest stalls with the handlers that ran in them.

    python benchmarks/bench_ui_latency.py                 # 64x256x256, 60 iterations (~2.5 min)
    python benchmarks/bench_ui_latency.py --quick         # 32x128x128, 20 iterations (~1 min)
    python benchmarks/bench_ui_latency.py --trace-stalls 40   # also sample the GUI thread's stack

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from _common import LoadMonitor, json_line, synthetic_volume, table

PLUGIN = "napari-seg3d"
TICK_MS = 10
TARGET_P99_MS, TARGET_MAX_MS = 50.0, 200.0
PATCH = (16, 64, 64)
BASE_FILTERS = 8
LEAD_S, TAIL_S, SETTLE_S = 0.2, 0.5, 1.5  # measured before a press / after the end; unmeasured
STALL_MS = 50.0  # ticks later than this are listed with the handlers that ran during them
STALLS_SHOWN = 3  # per phase

NOTES = """\
Notes:
- lateness = interval between two ticks of a 10 ms QTimer (PreciseTimer) minus 10 ms; the loop
  runs Qt's own event loop (no polling with sleeps). A handler that blocks the GUI thread for T ms
  makes one tick T-10 ms late. p50/p99/max over every tick of the phase.
- redraw (reference, no plugin code): {redraws} canvas redraws one after the other, nothing else;
  its max is what one frame of this viewer costs here, the floor for any change shown on screen.
- a phase's ticks run from {lead} s before the press to {tail} s after the worker finished;
  duration is from the press to the widget's worker being None (training: start_training();
  prediction: start_prediction()). Both presses run inside the event loop, like a click.
- others %: CPU time taken by other processes during the phase, as a share of all CPUs; above
  25% the row is marked noisy (*): re-run on a quieter machine before quoting it.
- first region: from pressing Predict to the end of the first _on_region call that left non-zero
  labels in the layer (written and its refresh issued); on screen: to the first region that
  covers the displayed slice (2D: the current z; 3D: any region).
- handlers: wall time of GUI-thread calls (inclusive: napari's progress bar runs
  processEvents, so a handler can contain canvas paints and other handlers). "Qt window event
  UpdateRequest" is Qt repainting and composing the window (2 ms or longer only); canvas paints
  end with glFinish(){gl_note}, so a software renderer's work is timed in paintGL.
- the first training of a process also imports torch._dynamo in the worker (torch.optim builds
  it lazily), which holds the GIL long enough to show in the first train row."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="volume shape (default 64 256 256; --quick: 32 128 128)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations (default 60; --quick: 20)")
    p.add_argument("--quick", action="store_true", help="small volume and short phases")
    p.add_argument("--idle", type=float, default=None,
                   help="seconds of the idle phase (default 3; --quick: 1.5)")
    p.add_argument("--displays", type=int, nargs="+", choices=(2, 3), default=[2, 3],
                   help="napari views to measure in")
    p.add_argument("--redraws", type=int, default=3,
                   help="canvas redraws of the reference phase (0: no such phase)")
    p.add_argument("--no-gl-finish", action="store_true",
                   help="do not end each canvas paint with glFinish() (then a software "
                        "renderer's work shows in Qt's window composition, not in paintGL)")
    p.add_argument("--preview", action="store_true",
                   help="train with the Train widget's live preview on")
    p.add_argument("--trace-stalls", type=float, default=None, metavar="MS",
                   help="sample the GUI thread's Python stack from a watchdog thread whenever "
                        "the timer is more than MS late (adds a little load)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size is None:
        args.size = (32, 128, 128) if args.quick else (64, 256, 256)
    if args.iterations is None:
        args.iterations = 20 if args.quick else 60
    if args.idle is None:
        args.idle = 1.5 if args.quick else 3.0
    if min(args.size) < 1 or args.iterations < 1:
        p.error("--size and --iterations must be positive")
    return args


# --- measuring ------------------------------------------------------------------------------------

class Probe:
    """A 10 ms precise QTimer recording the time of every tick."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.last: float | None = None
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.last = time.perf_counter()
        self.ticks.append(self.last)

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def window(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Tick times (ends of the intervals) in ``(t0, t1]`` and the lateness of each, in ms."""
        ticks = np.asarray(self.ticks)
        i0, i1 = np.searchsorted(ticks, t0, "right"), np.searchsorted(ticks, t1, "right")
        i0 = max(i0, 1)
        ends = ticks[i0:i1]
        late = (ends - ticks[i0 - 1:i1 - 1]) * 1e3 - TICK_MS
        return ends, late


class CpuShare:
    """CPU share of other processes between construction and ``share()`` (None without psutil)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self.ps = None
            return
        self.ps = psutil
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def _busy(self) -> float:
        t = self.ps.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        t = self.ps.Process().cpu_times()
        return t.user + t.system

    def share(self) -> float | None:
        if self.ps is None:
            return None
        wall = time.perf_counter() - self.t0
        others = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


class Handlers:
    """Wall time of GUI-thread calls, patched in at class or module level (no source change)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float, int]] = []  # name, start, seconds, depth
        self.counts: collections.Counter[str] = collections.Counter()
        self._depth = 0
        self._main = threading.get_ident()

    def wrap(self, owner, attr: str, name: str | None = None) -> bool:
        """Time ``owner.attr`` (a class or a module) from now on; False when it does not exist.
        The name defaults to ``file.py:Qualified.name`` of the function."""
        fn = getattr(owner, attr, None)
        if fn is None:
            return False
        if name is None:
            code = getattr(fn, "__code__", None)
            where = Path(code.co_filename).name if code is not None else "?"
            name = f"{where}:{getattr(fn, '__qualname__', attr)}"
        calls, counts = self.calls, self.counts

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.get_ident() != self._main:
                return fn(*args, **kwargs)
            depth, self._depth = self._depth, self._depth + 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((name, t, time.perf_counter() - t, depth))
                counts[name] += 1
                self._depth = depth

        setattr(owner, attr, timed)
        return True

    def install(self) -> None:
        """The plugin's GUI-thread entry points and what they call that may be slow. Missing
        ones are skipped, so that the script survives the widgets being refactored."""
        import importlib

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from napari.layers.base.base import Layer
        from napari.utils import progress

        targets = [
            ("train", "TrainWidget", ("start_training", "_on_progress", "_render", "_on_result",
                                      "_on_finished", "_show_preview", "request_preview",
                                      "_send_labels")),
            ("_train_display", "TrainingDisplay", ("render", "finish", "show_preview")),
            ("predict", "PredictWidget", ("start_prediction", "_on_region", "_on_result",
                                          "_on_finished")),
            ("_plot", "TrainingPlot", ("set_data",)),
            ("_layers", "RegionWriter", ("flush",)),
            ("_layers", None, ("refresh_region", "output_labels_layer", "advance",
                               "update_thumbnail")),
        ]
        for module, cls, attrs in targets:
            try:
                owner = importlib.import_module(f"napari_seg3d._widgets.{module}")
            except ImportError:
                continue
            owner = getattr(owner, cls, None) if cls else owner
            if owner is not None:
                for attr in attrs:
                    self.wrap(owner, attr)
        self.wrap(progress, "update", "napari progress.update")
        self.wrap(Layer, "refresh", "napari Layer.refresh")
        self.wrap(FigureCanvasQTAgg, "draw", "matplotlib FigureCanvasQTAgg.draw")
        self.wrap(FigureCanvasQTAgg, "paintEvent", "matplotlib FigureCanvasQTAgg.paintEvent")
        self._wrap_window_events()

    def _wrap_window_events(self, min_s: float = 0.002) -> None:
        """Time napari's main-window events (its ``event`` override is Python) taking at least
        ``min_s``, by type: an UpdateRequest is Qt repainting and composing the window (the
        canvas's paintGL nests in it)."""
        from napari._qt.qt_main_window import _QtMainWindow

        original = _QtMainWindow.event
        calls, counts, handlers = self.calls, self.counts, self

        @functools.wraps(original)
        def event(window, e):
            depth, handlers._depth = handlers._depth, handlers._depth + 1
            t = time.perf_counter()
            try:
                return original(window, e)
            finally:
                dur = time.perf_counter() - t
                handlers._depth = depth
                if dur >= min_s:
                    name = f"Qt window event {getattr(e.type(), 'name', e.type())}"
                    calls.append((name, t, dur, depth))
                    counts[name] += 1

        _QtMainWindow.event = event

    def install_canvas(self, gl_finish: bool) -> None:
        """Time the canvas paints (vispy's Qt backend can only be imported by vispy: patch it once
        napari loaded it). With ``gl_finish`` each paint ends with ``glFinish()``, so that the
        rendering a software OpenGL (llvmpipe) defers to the window's composition is timed here."""
        backend = sys.modules["vispy.app.backends._qt"]
        cls = backend.CanvasBackendDesktop
        if gl_finish:
            from vispy.gloo import gl

            paint = cls.paintGL

            @functools.wraps(paint)
            def paint_and_finish(widget):
                paint(widget)
                gl.glFinish()

            cls.paintGL = paint_and_finish
        self.wrap(cls, "paintGL", "vispy canvas paintGL")


    def between(self, t0: float, t1: float) -> list[tuple[str, float, float, int]]:
        return [c for c in self.calls if t0 <= c[1] <= t1]

    @staticmethod
    def summary(calls) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, _, dur, _ in calls:
            s = out.setdefault(name, {"calls": 0, "total_ms": 0.0, "max_ms": 0.0})
            s["calls"] += 1
            s["total_ms"] += dur * 1e3
            s["max_ms"] = max(s["max_ms"], dur * 1e3)
        return out


class StallSampler(threading.Thread):
    """Samples the GUI thread's Python stack every few ms while the probe's timer is late."""

    def __init__(self, probe: Probe, threshold_ms: float) -> None:
        super().__init__(daemon=True, name="stall-sampler")
        self.probe, self.threshold = probe, threshold_ms / 1e3 + TICK_MS / 1e3
        self.main = threading.get_ident()
        self.samples: dict[float, list[tuple[str, ...]]] = collections.defaultdict(list)
        self.others: dict[float, list[str]] = collections.defaultdict(list)  # other threads
        self.stopped = False

    @staticmethod
    def _stack(frame) -> tuple[str, ...]:
        return tuple(f"{'napari_seg3d/' if 'napari_seg3d' in f.filename else ''}"
                     f"{Path(f.filename).name}:{f.name}:{f.lineno}"
                     for f in traceback.extract_stack(frame)
                     if not (f.name == "timed" and f.filename == __file__))

    def run(self) -> None:
        me = threading.get_ident()
        names = {}
        while not self.stopped:
            time.sleep(0.004)
            last = self.probe.last
            if last is None or time.perf_counter() - last < self.threshold:
                continue
            frames = sys._current_frames()
            main = frames.pop(self.main, None)
            if main is not None:
                self.samples[last].append(self._stack(main))
            for ident, frame in frames.items():
                if ident == me:
                    continue
                if ident not in names:
                    names = {t.ident: t.name for t in threading.enumerate()}
                stack = self._stack(frame)
                if stack and not stack[-1].startswith("threading.py:wait"):
                    self.others[last].append(
                        f"[{names.get(ident, ident)}] {frames_of_interest(stack, 4)}")
            del main, frames


def frames_of_interest(stack: tuple[str, ...], depth: int = 6) -> str:
    """The innermost frames from the first napari-seg3d frame on (or the innermost ones)."""
    ours = [i for i, f in enumerate(stack) if f.startswith("napari_seg3d/")
            and "_demo.py" not in f]
    start = ours[0] if ours else max(0, len(stack) - depth)
    chosen = stack[start:]
    if len(chosen) > depth:
        chosen = chosen[:2] + ("...",) + chosen[-(depth - 2):]
    return " > ".join(chosen)


# --- the viewer -----------------------------------------------------------------------------------

def run_loop(app, start=None, done=None, seconds: float | None = None, timeout: float = 900.0,
             ) -> tuple[float, float | None, float]:
    """Run Qt's event loop: ``start()`` after LEAD_S, then until ``done()`` (polled every 20 ms)
    plus TAIL_S, or for ``seconds``. Returns (window start, press time, done time)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    t0 = time.perf_counter()
    state: dict[str, float | None] = {"press": None, "done": None}
    poll = QTimer()
    poll.setInterval(20)
    failure: list[BaseException] = []

    def press() -> None:
        state["press"] = time.perf_counter()
        try:
            if start is not None:
                start()
        except BaseException as e:  # noqa: BLE001 - re-raised after the loop
            failure.append(e)
            loop.quit()
            return
        if done is not None:
            poll.start()

    def check() -> None:
        now = time.perf_counter()
        if done():
            poll.stop()
            state["done"] = now
            QTimer.singleShot(int(TAIL_S * 1000), loop.quit)
        elif now - t0 > timeout:
            poll.stop()
            failure.append(TimeoutError(f"the phase did not end in {timeout:.0f} s"))
            loop.quit()

    poll.timeout.connect(check)
    if seconds is not None:
        QTimer.singleShot(int(seconds * 1000), loop.quit)
    else:
        QTimer.singleShot(int(LEAD_S * 1000), press)
    loop.exec()
    if failure:
        raise failure[0]
    return t0, state["press"], state["done"] if state["done"] is not None else time.perf_counter()


def settle(app, seconds: float = SETTLE_S) -> None:
    run_loop(app, seconds=seconds)


def redraw_phase(app, viewer, handlers: Handlers, n: int, gap_s: float = 0.3):
    """Ask the canvas for ``n`` redraws, one at a time (``gap_s`` after the previous paint): the
    lateness a single frame of the viewer costs, with no plugin code running."""
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    name = "vispy canvas paintGL"
    state = {"base": 0, "kicks": 0, "next": None}

    def kick() -> None:
        state["base"], state["kicks"] = handlers.counts[name], 1
        canvas.update()

    def done() -> bool:
        if handlers.counts[name] - state["base"] < state["kicks"]:
            return False
        if state["kicks"] >= n:
            return True
        now = time.perf_counter()
        if state["next"] is None:
            state["next"] = now + gap_s
        elif now >= state["next"]:
            state["kicks"] += 1
            state["next"] = None
            canvas.update()
        return False

    return run_loop(app, start=kick, done=done, timeout=120.0)


def build_viewer(args):
    import napari

    from napari_seg3d.engine.training.scribbles import simulate_scribbles

    image, truth = synthetic_volume(args.size, args.seed)
    scribbles = simulate_scribbles(truth, slices_per_axis=3, strokes_per_class=2, length=20,
                                   radius=1, seed=args.seed)
    viewer = napari.Viewer(title="napari-seg3d UI latency", show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.add_image(image, name="volume")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    train.image_combo.setCurrentText("volume")
    layer = train.new_annotation_layer()
    layer.data = scribbles
    layer.mode = "pan_zoom"
    for spin, p in zip(train.patch_spins, PATCH):
        spin.setValue(p)
    train.iterations_spin.setValue(args.iterations)
    train.batch_spin.setValue(2)
    train.filters_spin.setValue(BASE_FILTERS)
    train.device_combo.setCurrentText("cpu")
    train.preview_check.setChecked(args.preview)
    predict.image_combo.setCurrentText("volume")
    predict.device_combo.setCurrentText("cpu")
    painted = int(np.count_nonzero(scribbles))
    return viewer, train, predict, painted


class FirstRegion:
    """Times the first region the Predict widget puts into its layer (wraps ``_on_region``)."""

    def __init__(self) -> None:
        from napari_seg3d._widgets.predict import PredictWidget

        self.press: float | None = None
        self.in_layer: float | None = None
        self.on_screen: float | None = None
        self.z: int | None = None  # the displayed slice in 2D, None in 3D
        original = PredictWidget._on_region
        first = self

        @functools.wraps(original)
        def on_region(widget, region):
            original(widget, region)
            if first.press is None or first.on_screen is not None or widget.layer is None:
                return
            now = time.perf_counter()
            written = np.asarray(widget.layer.data[region.slices])
            if first.in_layer is None and written.any():
                first.in_layer = now - first.press
            zs = region.slices[0]
            if first.in_layer is not None and (
                    first.z is None or (zs.start <= first.z < zs.stop
                                        and written[first.z - zs.start].any())):
                first.on_screen = now - first.press

        PredictWidget._on_region = on_region

    def arm(self, press: float, z: int | None) -> None:
        self.press, self.z, self.in_layer, self.on_screen = press, z, None, None


# --- the run --------------------------------------------------------------------------------------

def stats(late: np.ndarray) -> dict[str, float]:
    if late.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(late, 50)), "p99_ms": float(np.percentile(late, 99)),
            "max_ms": float(late.max())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp(prefix="seg3d-bench-"))
                                               / "napari-settings.yaml"))
    xvfb = None
    if not os.environ.get("DISPLAY"):
        from napari_seg3d._demo import _start_xvfb
        xvfb = _start_xvfb()
        if xvfb is None:
            print("No DISPLAY and no Xvfb: install xvfb (apt-get install xvfb libxcb-cursor0).",
                  file=sys.stderr)
            return 2
    try:
        return _run(args, virtual=xvfb is not None)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def _run(args: argparse.Namespace, virtual: bool) -> int:
    import napari
    import qtpy
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_seg3d._widgets import _layers

    monitor = LoadMonitor()
    handlers = Handlers()
    handlers.install()
    first = FirstRegion()
    t_start = time.perf_counter()
    viewer, train, predict, painted = build_viewer(args)
    handlers.install_canvas(gl_finish=not args.no_gl_finish)
    app = QApplication.instance()
    probe = Probe()
    probe.start()
    sampler = None
    if args.trace_stalls is not None:
        sampler = StallSampler(probe, args.trace_stalls)
        sampler.start()
    rows: list[dict] = []
    phases: list[tuple[str, int, float, float]] = []  # phase, display, t0, t1
    first_region: dict[str, dict[str, float | None]] = {}
    start_ms: dict[str, float] = {}
    renderer = "?"
    net_info: dict = {}
    try:
        settle(app, 2 * SETTLE_S)
        try:
            from vispy.gloo import gl
            viewer.window._qt_viewer.canvas._scene_canvas.set_current()
            renderer = gl.glGetParameter(gl.GL_RENDERER)
        except Exception as e:  # noqa: BLE001 - only printed
            renderer = f"unknown ({type(e).__name__})"
        for nd in args.displays:
            viewer.dims.ndisplay = nd
            settle(app)
            label = f"{nd}D"

            def record(phase: str, t0: float, press: float | None, end: float, cpu: CpuShare,
                       nd: int = nd, label: str = label) -> None:
                t1 = end + (TAIL_S if press is not None else 0.0)
                _, late = probe.window(t0, t1)
                share = cpu.share()
                row = {"phase": phase, "display": label, **stats(late), "ticks": int(late.size),
                       "duration_s": end - (press if press is not None else t0),
                       "others_cpu_pct": None if share is None else 100 * share}
                row["pass"] = None if phase == "redraw" else bool(
                    row["p99_ms"] < TARGET_P99_MS and row["max_ms"] < TARGET_MAX_MS)
                rows.append(row)
                phases.append((phase, nd, t0, t1))

            cpu = CpuShare()
            t0, _, end = run_loop(app, seconds=args.idle)
            record("idle", t0, None, end, cpu)

            if args.redraws > 0:
                cpu = CpuShare()
                t0, press, end = redraw_phase(app, viewer, handlers, args.redraws)
                record("redraw", t0, press, end, cpu)

            cpu = CpuShare()
            t0, press, end = run_loop(app, start=lambda: _press(train.start_training, "Train"),
                                      done=lambda: train.worker is None)
            record("train", t0, press, end, cpu)
            start_ms[f"train_{label}"] = _last_ms(handlers, "start_training")
            model = train.model
            if model is not None:
                net_info = {"patch": [int(p) for p in model.patch_size],
                            "parameters": sum(p.numel() for p in model.network.parameters())}
            if model is None:
                raise RuntimeError("training ended without a model (see the messages above)")
            settle(app)

            old = _layers.find_layer(viewer, "volume prediction")
            if old is not None:  # each run creates its layer, as a first press does
                viewer.layers.remove(old)
            predict.set_model(model, f"model {label}")
            settle(app, 0.5)
            z = int(viewer.dims.current_step[0]) if nd == 2 else None

            def press_predict(z: int | None = z) -> None:
                first.arm(time.perf_counter(), z)
                _press(predict.start_prediction, "Predict")

            cpu = CpuShare()
            t0, press, end = run_loop(app, start=press_predict,
                                      done=lambda: predict.worker is None)
            record("predict", t0, press, end, cpu)
            start_ms[f"predict_{label}"] = _last_ms(handlers, "start_prediction")
            first_region[label] = {"in_layer_s": first.in_layer, "on_screen_s": first.on_screen}
            first.press = None
            settle(app)
    finally:
        probe.stop()
        if sampler is not None:
            sampler.stopped = True
        total_s = time.perf_counter() - t_start
        viewer.close()

    _report(args, rows, phases, first_region, start_ms, handlers, probe, sampler, monitor,
            painted, renderer, total_s, virtual,
            env={"napari": napari.__version__, "qt": f"{qtpy.API_NAME} {qtpy.QT_VERSION}",
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "network": net_info})
    return 0


def _press(fn, what: str) -> None:
    if not fn():
        raise RuntimeError(f"{what} did not start (see the message above)")


def _last_ms(handlers: Handlers, name: str) -> float | None:
    for n, _, dur, _ in reversed(handlers.calls):
        if n.endswith(f".{name}"):
            return dur * 1e3
    return None


def _overlapping(calls, a: float, b: float, min_s: float = 0.005, most: int = 8) -> str:
    """The calls that ran at least ``min_s`` of the interval ``(a, b)``, in order: ``name ms``,
    or ``name ms (of total)`` when the call was longer than its part of the interval."""
    out = []
    for name, start, dur, depth in sorted(calls, key=lambda c: c[1]):
        part = min(start + dur, b) - max(start, a)
        if part >= min_s:
            total = f" (of {dur * 1e3:.0f})" if dur - part > 0.002 else ""
            out.append(f"{'>' * depth}{name} {part * 1e3:.0f}{total}")
    return "; ".join(out[:most])


def _outermost(calls, a: float, b: float, min_s: float = 0.005) -> str:
    """The least nested call that ran at least ``min_s`` of ``(a, b)`` (the longest part among
    equals), or ``(none)``."""
    best = None
    for name, start, dur, depth in calls:
        part = min(start + dur, b) - max(start, a)
        if part >= min_s and (best is None or (depth, -part) < best[0]):
            best = ((depth, -part), name)
    return "(none)" if best is None else best[1]


def _report(args, rows, phases, first_region, start_ms, handlers, probe, sampler, monitor,
            painted, renderer, total_s, virtual, env) -> None:
    z, y, x = args.size
    net = env["network"]
    size = f", {net['parameters'] / 1e6:.2f}M parameters" if "parameters" in net else ""
    print(f"GUI event-loop lateness: {z}x{y}x{x} float32 volume, {painted} voxels painted; "
          f"U-Net base filters {BASE_FILTERS}{size}, patch {tuple(net.get('patch', PATCH))}, "
          f"batch 2, {args.iterations} "
          f"iterations{' with live preview' if args.preview else ''}; prediction overlap 0.5, "
          "batch 4, streamed into a Labels layer.")
    print(f"napari {env['napari']}, {env['qt']}, torch {env['torch']} "
          f"({env['torch_threads']} threads), {env['cpu_count']} CPUs, "
          f"{'Xvfb' if virtual else 'display ' + os.environ.get('DISPLAY', '')}, "
          f"OpenGL {renderer}; {TICK_MS} ms timer; whole run {total_s:.0f} s.")
    print()
    noisy = lambda r: r["others_cpu_pct"] is not None and r["others_cpu_pct"] > 25
    print(table(
        ["phase", "display", "p50 ms", "p99 ms", "max ms", "ticks", "duration s", "others %",
         f"p99<{TARGET_P99_MS:.0f} & max<{TARGET_MAX_MS:.0f}"],
        [[r["phase"], r["display"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["ticks"],
          r["duration_s"], None if r["others_cpu_pct"] is None else
          f"{r['others_cpu_pct']:.0f}{'*' if noisy(r) else ''}",
          "ref" if r["pass"] is None else "PASS" if r["pass"] else "MISS"] for r in rows]))
    print()
    for label, f in first_region.items():
        a, b = f["in_layer_s"], f["on_screen_s"]
        print(f"Predict -> first region in the layer ({label}): "
              f"{'-' if a is None else f'{a:.2f} s'}; on the displayed slice: "
              f"{'-' if b is None else f'{b:.2f} s'}.")
    print("Pressing the button (the call itself, GUI thread): " + ", ".join(
        f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.0f} ms'}" for k, v in start_ms.items()))

    # Handlers: max ms (calls) per phase.
    per_phase = {f"{p} {nd}D": Handlers.summary(handlers.between(t0, t1))
                 for p, nd, t0, t1 in phases}
    shown = {k: v for k, v in per_phase.items() if k.split()[0] in ("train", "predict")}
    names = sorted({n for s in shown.values() for n in s},
                   key=lambda n: -max(s.get(n, {"max_ms": 0})["max_ms"] for s in shown.values()))
    print()
    print("GUI-thread calls while training and predicting: max ms / total ms (calls), inclusive "
          "of nested calls")
    print(table(["call"] + list(shown), [
        [n] + [f"{s[n]['max_ms']:.0f}/{s[n]['total_ms']:.0f} ({s[n]['calls']})" if n in s else ""
               for s in shown.values()] for n in names]))

    # The longest stalls of each phase and what ran in them.
    stalls: list[tuple[float, str, float, float]] = []
    print()
    print(f"Ticks more than {STALL_MS:.0f} ms late, the {STALLS_SHOWN} longest of each phase, with "
          "the GUI-thread calls of 5 ms or more that ran in them ('>': nested in the call before):")
    for p, nd, t0, t1 in phases:
        ends, late = probe.window(t0, t1)
        found = sorted(((float(lt), f"{p} {nd}D", float(end) - (lt + TICK_MS) / 1e3, float(end))
                        for end, lt in zip(ends, late) if lt > STALL_MS), reverse=True)
        stalls += found
        if not found:
            continue
        blame = collections.Counter(_outermost(handlers.calls, a, b) for _, _, a, b in found)
        print(f"  {p} {nd}D: {len(found)} ticks; by the outermost call in them: " + ", ".join(
            f"{n} {k}" for n, k in blame.most_common()))
        press = next((c[1] for c in handlers.calls if t0 <= c[1] <= t1 and (
            c[0].endswith(".start_training") or c[0].endswith(".start_prediction"))), t0)
        for lt, _, a, b in found[:STALLS_SHOWN]:
            text = _overlapping(handlers.calls, a, b) \
                or "(no instrumented call: napari/Qt internals or the GIL)"
            print(f"    {lt:6.0f} ms at {a - press:+6.1f} s  {text}")
            if sampler is not None:
                key = max((k for k in sampler.samples if a - 1e-3 <= k <= a + 1e-3), default=None)
                for stack, n in collections.Counter(
                        frames_of_interest(s) for s in sampler.samples.get(key, [])
                ).most_common(2):
                    print(f"               {n} samples: {stack}")
                for stack, n in collections.Counter(sampler.others.get(key, [])).most_common(2):
                    print(f"               other thread, {n} samples: {stack}")
    if not stalls:
        print("  none")
    stalls.sort(reverse=True)
    print()
    print(NOTES.format(lead=LEAD_S, tail=TAIL_S, redraws=args.redraws,
                       gl_note=" (not in this run: --no-gl-finish)" if args.no_gl_finish else ""))
    note = monitor.note()
    if note:
        print(note)
    print(json_line({
        "benchmark": "ui_latency", "size": list(args.size), "iterations": args.iterations,
        "patch": list(env["network"].get("patch", PATCH)), "base_filters": BASE_FILTERS,
        "preview": args.preview,
        "gl_finish": not args.no_gl_finish,
        "tick_ms": TICK_MS, "targets_ms": {"p99": TARGET_P99_MS, "max": TARGET_MAX_MS},
        "rows": rows, "first_region": first_region, "start_call_ms": start_ms,
        "handlers": per_phase, "stalls_ms": [round(s[0], 1) for s in stalls[:20]],
        "opengl": str(renderer), **env, "load": monitor.summary(), "total_s": total_s,
    }))


if __name__ == "__main__":
    sys.exit(main())
