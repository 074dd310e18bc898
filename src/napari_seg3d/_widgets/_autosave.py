"""Autosave for the Train widget: the strokes (a few seconds after painting, and when Train
starts) and every model a run keeps go to a session folder (see :mod:`..engine.autosave`) from
one background thread; a session that a crash left behind is offered back on the widget's start
(:mod:`._autosave_offer`).

The GUI thread only gathers the painted voxels of the annotation layer (at most every
:data:`STROKES_DELAY_MS`; :class:`~..engine.autosave.PaintedVoxels`: a read of the layer and a
copy of the strokes, not of the volume); the compression and the writes run in the writer
thread, in order, and a write that is still waiting is replaced by a newer one of the same kind,
so a slow disk never piles up copies.
A session ends normally (its folder deleted) when napari's window or the widget closes, or the
Python process exits normally; only a crash leaves it behind.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import QEvent, QObject, QTimer

from ..engine.autosave import AutosaveSession, PaintedVoxels, autosave_enabled, start_session
from . import _layers

if TYPE_CHECKING:
    from ..engine import SegmentationModel

log = logging.getLogger(__name__)

STROKES_DELAY_MS = 3000  # strokes are copied and written at most this often while painting
#: above this many voxels the annotation layer is copied only when Train starts, not while
#: painting (a copy of 10^8 uint8 voxels takes the GUI thread about 0.1 s)
LIVE_MAX_VOXELS = 1 << 27

_OPEN: set[AutosaveSession] = set()  # the open sessions: closed when Python exits normally


@atexit.register
def _close_open_sessions() -> None:  # a normal exit: nothing to offer next time
    for session in list(_OPEN):
        session.close()


class Writer:
    """One background thread running the autosave's writes in order; a write still waiting is
    replaced by a newer one with the same key."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seg3d-autosave")
        self._lock = threading.Lock()
        self._waiting: dict = {}
        self._last: Future | None = None
        self._errors: list[str] = []

    def submit(self, key, fn, *args) -> None:
        with self._lock:
            queued = key in self._waiting
            self._waiting[key] = (fn, args)
            if queued:
                return
            try:
                self._last = self._pool.submit(self._run, key)
            except RuntimeError:  # shut down: Python is exiting
                self._waiting.pop(key)

    def _run(self, key) -> None:
        with self._lock:
            fn, args = self._waiting.pop(key)
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - an autosave never stops the work
            log.warning("Autosave failed: %s", e)
            with self._lock:
                self._errors.append(str(e))

    def wait(self) -> None:
        """Until every write handed over so far is done."""
        last = self._last
        if last is not None:
            last.result()

    def take_errors(self) -> list[str]:
        with self._lock:
            errors, self._errors = self._errors, []
        return errors


class Autosaver(QObject):
    """The autosave of one Train widget (``widget``: a :class:`TrainWidget`).

    ``sessions`` holds one open session per (image, shape, annotation layer) painted on."""

    def __init__(self, widget) -> None:
        super().__init__(widget)
        self.widget = widget
        self.enabled = autosave_enabled()
        self.sessions: dict[tuple, AutosaveSession] = {}
        self.writer = Writer()
        self._reported: set[str] = set()
        # the main window, whose Close ends the sessions: a weak reference, as napari may keep a
        # finished worker, and so this widget, a while; the window must not stay with it
        self._watched = lambda: None
        self._timer = QTimer(self, singleShot=True, interval=STROKES_DELAY_MS)
        self._timer.timeout.connect(self.save_strokes)

    # --- sessions ---------------------------------------------------------------------------------

    def session_for(self, image_name: str, shape, annotation_name: str, *, scale=None,
                    translate=None, source=None) -> AutosaveSession | None:
        """The open session of these layers, started if there is none (None: autosave off or
        its folder cannot be written, told once)."""
        if not self.enabled:
            return None
        key = (image_name, tuple(shape), annotation_name)
        session = self.sessions.get(key)
        if session is None or session.closed:
            try:
                session = start_session(image_name, shape, annotation_name, scale=scale,
                                        translate=translate, source=source,
                                        class_names=self.widget.class_table.names)
            except (OSError, ValueError) as e:
                self._tell(str(e))
                return None
            self.sessions[key] = session
            _OPEN.add(session)
            self._watch_window()
        return session

    def current(self) -> AutosaveSession | None:
        """The session of the selected image and annotation layer (None when they do not fit)."""
        image, ann = self.widget.image_layer(), self.widget.annotation_layer()
        if image is None or ann is None or not isinstance(_layers.layer_array(ann), np.ndarray):
            return None  # a Labels layer backed by a file is saved already
        shape = _layers.layer_array(ann).shape
        if shape != _layers.spatial_shape(image):
            return None
        source = getattr(getattr(image, "source", None), "path", None)
        return self.session_for(image.name, shape, ann.name, scale=_layers.voxel_size(ann),
                                translate=_layers.spatial_translate(ann), source=source)

    # --- saving -----------------------------------------------------------------------------------

    def strokes_changed(self) -> None:
        """Write the strokes a few seconds from now (one write for a burst of strokes)."""
        if self.enabled and not self._timer.isActive() and self._small_enough():
            self._timer.start()

    def _small_enough(self) -> bool:
        layer = self.widget.annotation_layer()
        return layer is not None and int(np.prod(layer.data.shape)) <= LIVE_MAX_VOXELS

    def save_strokes(self, painted: PaintedVoxels | None = None) -> AutosaveSession | None:
        """Gather the painted voxels of the selected annotation layer now (or take ``painted``,
        gathered from it just before) and write them in the background; returns its session."""
        self._timer.stop()
        session = self.current()
        if session is not None:
            if painted is None:
                painted = PaintedVoxels.of(_layers.layer_array(self.widget.annotation_layer()))
            self.write_strokes(session, painted)
        self._tell_failures()
        return session

    def write_strokes(self, session: AutosaveSession, labels: np.ndarray | PaintedVoxels,
                      ) -> None:
        names = dict(self.widget.class_table.names)
        self.writer.submit((id(session), "strokes"), _write_strokes, session, labels, names)

    def save_model(self, session: AutosaveSession | None, model: SegmentationModel | None,
                   last: SegmentationModel | None = None) -> None:
        """Write a kept model (from any thread: the training thread calls it)."""
        _save_model(self.writer, session, model, last)

    def start_run(self, painted: PaintedVoxels | None = None):
        """At Train: the strokes now (``painted``: their painted voxels, when the caller has
        them); returns the job's ``on_kept`` callback and the session. (The callback holds no
        widget: a finished worker that napari keeps a while keeps no viewer alive.)"""
        session = self.save_strokes(painted)
        return partial(_save_model, self.writer, session), session

    def close(self) -> None:
        """End every session normally: deleted after the writes before (not waited for)."""
        with suppress(RuntimeError):  # the widget deleted already (napari closed)
            self._timer.stop()
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            self.writer.submit(object(), session.close)
            _OPEN.discard(session)

    def _tell_failures(self) -> None:
        for error in self.writer.take_errors():
            self._tell(error)

    def _tell(self, message: str) -> None:
        if message not in self._reported:  # once each: not every three seconds
            self._reported.add(message)
            show_warning(f"Autosave failed: {message}")

    def _watch_window(self) -> None:
        window = self.widget.window()
        if window is not self._watched() and window is not self.widget:
            window.installEventFilter(self)
            self._watched = weakref.ref(window)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Close and obj is self._watched():
            # after napari's own Close (it may ask); not a bound method, which Qt would drop
            # with this object if napari deletes the widget first
            QTimer.singleShot(0, lambda: self._closed_window())
        return False

    def _closed_window(self) -> None:
        """End the sessions if the window did close (not when its user chose to stay; if
        napari quits first, the normal exit ends them)."""
        try:
            window = self._watched()
            visible = window is not None and window.isVisible()
        except RuntimeError:  # deleted already: closed
            visible = False
        if not visible:
            self.close()


def _save_model(writer: Writer, session: AutosaveSession | None, model, last=None) -> None:
    if session is not None and not session.closed and model is not None:
        writer.submit((id(session), "model"), session.save_model, model, last)


def _write_strokes(session: AutosaveSession, labels: np.ndarray | PaintedVoxels,
                   names: dict) -> None:
    session.set_class_names(names)
    session.save_strokes(labels)
