"""Autosave of a training session, so that its strokes and latest model survive a crash.

A session is a folder under :func:`sessions_root`, ``<started>-<pid>-<token>/``, holding::

    session.json   image layer name and shape, its source file, class names, scale, pid, times
    strokes.npz    the annotations, ``(Z, Y, X)`` integers, compressed
    model.pt       the latest kept model (the model file of Save model, with optimizer state)
    last.pt        the final state of the last run (written when a run ends)

Every file is written atomically (a temporary, then a rename; see :mod:`.io._publish`), so a
crash leaves the previous complete version. Closing a session (the widget or viewer closed
normally, or the model saved) deletes its folder. A folder that is not closed and whose process
has exited is *found* by :func:`find_unclosed_sessions`; at most :data:`MAX_KEPT` of them are
kept (the oldest are deleted when a new session starts).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .io._publish import write_files
from .io._temps import _writer_gone, host_tag
from .model_file import SegmentationModel, save_model, save_models

log = logging.getLogger(__name__)

ENV_DIR = "NAPARI_SEG3D_AUTOSAVE_DIR"
MAX_KEPT = 3  # unclosed sessions of crashed processes kept at most
META, STROKES, MODEL, LAST = "session.json", "strokes.npz", "model.pt", "last.pt"


def sessions_root() -> Path:
    """Where sessions are kept: ``$NAPARI_SEG3D_AUTOSAVE_DIR`` if set, else
    ``$XDG_STATE_HOME/napari-seg3d/sessions`` (``~/.local/state`` by default)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "napari-seg3d" / "sessions"


@dataclass(frozen=True)
class SessionInfo:
    """What ``session.json`` records about a session (``scale`` is ``(z, y, x)``)."""

    folder: Path
    image_name: str
    image_shape: tuple[int, ...]
    source: str | None
    class_names: dict[int, str]
    scale: tuple[float, ...] | None
    pid: int
    host: str
    started: float
    saved: float

    def describe(self) -> str:
        """One line for the user: which image, when last saved."""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved))
        return f"'{self.image_name}' {list(self.image_shape)}, last saved {when}"


@dataclass(frozen=True)
class Restored:
    """A found session's contents: the strokes ``(Z, Y, X)`` and its model files (None when no
    model was saved yet)."""

    info: SessionInfo
    strokes: np.ndarray | None
    model_path: Path | None
    last_path: Path | None


class AutosaveSession:
    """An open session: save its strokes and models as often as you like, then :meth:`close`.

    Safe to use from one thread at a time per file (strokes from one, models from another)."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.folder = info.folder
        self.closed = False

    def _touch(self) -> None:
        self.info = _replace_saved(self.info, time.time())
        _write_meta(self.info)

    def save_strokes(self, labels) -> Path | None:
        """Write ``labels`` ``(Z, Y, X)`` compressed; None once closed."""
        if self.closed:
            return None
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=np.asarray(labels))
        path = self.folder / STROKES
        write_files([(path, buffer.getvalue())], f"Cannot autosave the strokes to {path}")
        self._touch()
        return path

    def save_model(self, model: SegmentationModel, last: SegmentationModel | None = None,
                   ) -> Path | None:
        """Write the latest kept ``model`` (and a run's ``last`` state) atomically."""
        if self.closed:
            return None
        path = self.folder / MODEL
        if last is None or last is model:
            save_model(model, path)
        else:
            save_models([(model, path), (last, self.folder / LAST)])
        self._touch()
        return path

    def close(self) -> None:
        """Delete the session: it will not be offered again."""
        self.closed = True
        discard(self.folder)


def start_session(image_name: str, image_shape, *, source: str | None = None,
                  class_names: dict[int, str] | None = None, scale=None,
                  root: str | os.PathLike | None = None) -> AutosaveSession:
    """Open a new session folder (deleting the oldest found sessions beyond :data:`MAX_KEPT`)."""
    root = Path(root) if root is not None else sessions_root()
    found, _ = find_unclosed_sessions(root)
    for old in sorted(found, key=lambda s: s.started)[:max(0, len(found) - MAX_KEPT + 1)]:
        discard(old.folder)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    folder = root / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
    info = SessionInfo(folder=folder, image_name=str(image_name),
                       image_shape=tuple(int(s) for s in image_shape),
                       source=None if source is None else str(source),
                       class_names={int(k): str(v) for k, v in (class_names or {}).items()},
                       scale=None if scale is None else tuple(float(s) for s in scale),
                       pid=os.getpid(), host=host_tag(), started=now, saved=now)
    _write_meta(info)
    return AutosaveSession(info)


def find_unclosed_sessions(root: str | os.PathLike | None = None,
                           ) -> tuple[list[SessionInfo], list[str]]:
    """Sessions left by processes that have exited, newest first, and one sentence for each
    damaged session folder that was skipped."""
    root = Path(root) if root is not None else sessions_root()
    found, problems = [], []
    if not root.is_dir():
        return found, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            info = read_info(folder)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"The autosaved session in {folder} is damaged ({_reason(e)}) and "
                            "was skipped; delete that folder.")
            continue
        if info.host != host_tag() or _writer_gone(info.pid, info.started):
            found.append(info)
    return sorted(found, key=lambda s: -s.saved), problems


def read_info(folder: str | os.PathLike) -> SessionInfo:
    """The :class:`SessionInfo` of ``folder``; raises ``ValueError``/``OSError`` if damaged."""
    folder = Path(folder)
    data = json.loads((folder / META).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("session.json is not an object")
    scale = data.get("scale")
    return SessionInfo(folder=folder, image_name=str(data["image_name"]),
                       image_shape=tuple(int(s) for s in data["image_shape"]),
                       source=data.get("source"),
                       class_names={int(k): str(v) for k, v in data.get("class_names", {}).items()},
                       scale=None if scale is None else tuple(float(s) for s in scale),
                       pid=int(data["pid"]), host=str(data["host"]),
                       started=float(data["started"]), saved=float(data["saved"]))


def restore(info: SessionInfo | str | os.PathLike) -> Restored:
    """Read a found session; raises ``ValueError`` with a sentence if its strokes are damaged."""
    info = info if isinstance(info, SessionInfo) else read_info(info)
    path = info.folder / STROKES
    strokes = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                strokes = np.asarray(data["labels"])
        except Exception as e:  # noqa: BLE001 - zip, key and format errors of a damaged file
            raise ValueError(f"The autosaved strokes in {path} are damaged ({_reason(e)}).") \
                from e
        if strokes.shape != info.image_shape[-3:]:
            raise ValueError(f"The autosaved strokes in {path} have shape {strokes.shape}, not "
                             f"the image's {info.image_shape[-3:]}.")
    model, last = info.folder / MODEL, info.folder / LAST
    return Restored(info, strokes, model if model.is_file() else None,
                    last if last.is_file() else None)


def discard(session: SessionInfo | str | os.PathLike) -> None:
    """Delete a session's folder (nothing if it is gone already)."""
    folder = session.folder if isinstance(session, SessionInfo) else Path(session)
    shutil.rmtree(folder, ignore_errors=True)


def _write_meta(info: SessionInfo) -> None:
    data = {"image_name": info.image_name, "image_shape": list(info.image_shape),
            "source": info.source, "class_names": {str(k): v for k, v in info.class_names.items()},
            "scale": None if info.scale is None else list(info.scale), "pid": info.pid,
            "host": info.host, "started": info.started, "saved": info.saved}
    path = info.folder / META
    write_files([(path, json.dumps(data, indent=1).encode())],
                f"Cannot autosave the session to {path}")


def _replace_saved(info: SessionInfo, saved: float) -> SessionInfo:
    return replace(info, saved=saved)


def _reason(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160] or type(e).__name__
