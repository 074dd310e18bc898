"""The measuring parts of ``bench_ui_latency.py``: the settings, a 10 ms timer whose ticks'
lateness is the GUI's, the CPU share of other processes, wall times of GUI-thread calls, a
sampler of the GUI thread's stack during stalls, and the time to the first predicted region."""

from __future__ import annotations

import collections
import functools
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

PLUGIN = "napari-seg3d"
TICK_MS = 10
TARGET_P99_MS, TARGET_MAX_MS = 50.0, 200.0
PATCH = (16, 64, 64)
BASE_FILTERS = 8
LEAD_S, TAIL_S, SETTLE_S = 0.2, 0.5, 1.5  # measured before a press / after the end; unmeasured
STALL_MS = 50.0  # ticks later than this are listed with the handlers that ran during them
STALLS_SHOWN = 3  # per phase

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
