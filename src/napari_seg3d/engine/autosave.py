"""Autosave of a training session, so that its strokes and latest model survive a crash.

A session is a folder under :func:`sessions_root`, ``<started>-<pid>-<token>/``, holding::

    session.json   the image's name and shape (Z, Y, X), the annotation layer's name, the class
                   names, voxel size and offset, the image's file, the writer's pid, host, times
    strokes.npz    the annotations' painted voxels (:class:`PaintedVoxels`: the ``(Z, Y, X)``
                   shape, flat indices and label values), compressed; sessions of earlier
                   versions hold the dense array (``labels``) and are read too
    model.pt       the latest kept model (a model file as Save model writes it)
    last.pt        the final state of the last run, when it differs from the kept model

Every file is written atomically (a temporary, then a rename; see :mod:`.io._publish`), so a
crash leaves the previous complete version. Closing a session (its widget or napari closed
normally) deletes its folder. A folder that is not closed and whose process has exited is
*found* by :func:`find_sessions`; at most :data:`MAX_KEPT` found sessions are kept (the oldest go
when a new session starts). ``NAPARI_SEG3D_AUTOSAVE=0`` turns autosave off.
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
from .io._temps import STALE_AFTER_S, _writer_gone, host_tag
from .model_file import SegmentationModel, save_model, save_models

log = logging.getLogger(__name__)

ENV_DIR = "NAPARI_SEG3D_AUTOSAVE_DIR"
ENV_SWITCH = "NAPARI_SEG3D_AUTOSAVE"  # "0", "off", "no" or "false": no autosave
MAX_KEPT = 3  # found sessions (of processes that exited) kept at most
CREATING_S = 60.0  # a folder younger than this without session.json is being created
META, STROKES, MODEL, LAST = "session.json", "strokes.npz", "model.pt", "last.pt"


def sessions_root() -> Path:
    """Where sessions are kept: ``$NAPARI_SEG3D_AUTOSAVE_DIR`` if set, else
    ``$XDG_STATE_HOME/napari-seg3d/sessions`` (``~/.local/state`` by default)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "napari-seg3d" / "sessions"


def autosave_enabled() -> bool:
    """False when ``$NAPARI_SEG3D_AUTOSAVE`` is ``0``, ``off``, ``no`` or ``false``."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in ("0", "off", "no", "false")


@dataclass(frozen=True)
class SessionInfo:
    """What ``session.json`` records (``shape``, ``scale`` and ``translate`` are ``(z, y, x)``)."""

    folder: Path
    image_name: str
    shape: tuple[int, int, int]
    annotation_name: str
    class_names: dict[int, str]
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None
    source: str | None = None
    pid: int = 0
    host: str = ""
    started: float = 0.0
    saved: float = 0.0

    def describe(self) -> str:
        """Half a sentence for the user: which image, when last saved."""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved))
        return f"'{self.image_name}' {list(self.shape)}, last saved {when}"


@dataclass(frozen=True)
class Restored:
    """A found session's contents: the strokes ``(Z, Y, X)`` (None when none were saved) and its
    model files (None when no model was saved)."""

    info: SessionInfo
    strokes: np.ndarray | None
    model_path: Path | None
    last_path: Path | None


class AutosaveSession:
    """An open session: save its strokes and models as often as you like, then :meth:`close`.

    Not thread-safe: call it from one thread (the widget's writer thread)."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.folder = info.folder
        self.closed = False

    def save_strokes(self, labels: np.ndarray | PaintedVoxels) -> Path | None:
        """Write the painted voxels of ``labels`` ``(Z, Y, X)``, compressed; None once closed."""
        if self.closed:
            return None
        painted = labels if isinstance(labels, PaintedVoxels) else PaintedVoxels.of(labels)
        if painted.shape != self.info.shape:
            raise ValueError(f"The strokes have shape {painted.shape}, not the session's "
                             f"{self.info.shape}.")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, shape=np.asarray(painted.shape, np.int64),
                            index=painted.index, values=painted.values)
        path = self.folder / STROKES
        write_files([(path, buffer.getvalue())], f"Cannot autosave the strokes to {path}")
        self._touch()
        return path

    def save_model(self, model: SegmentationModel, last: SegmentationModel | None = None,
                   ) -> Path | None:
        """Write the latest kept ``model`` (and a run's ``last`` state, for Continue training)."""
        if self.closed:
            return None
        path = self.folder / MODEL
        if last is None or last is model:
            save_model(model, path)
            (self.folder / LAST).unlink(missing_ok=True)  # an older run's: not this model's
        else:
            save_models([(model, path), (last, self.folder / LAST)])
        self._touch()
        return path

    def set_class_names(self, class_names: dict[int, str]) -> None:
        """Record new class names (written with the next save)."""
        self.info = replace(self.info, class_names=_names(class_names))

    def close(self) -> None:
        """End the session normally: its folder is deleted, it will never be offered."""
        self.closed = True
        discard(self.folder)

    def _touch(self) -> None:
        self.info = replace(self.info, saved=time.time())
        _write_meta(self.info)


def start_session(image_name: str, shape, annotation_name: str, *, class_names=None,
                  scale=None, translate=None, source: str | None = None,
                  root: str | os.PathLike | None = None) -> AutosaveSession:
    """Open a new session folder, after deleting the oldest found sessions beyond
    :data:`MAX_KEPT`. Raises an ``OSError`` with a sentence when it cannot be written."""
    root = Path(root) if root is not None else sessions_root()
    prune(root, MAX_KEPT)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    info = SessionInfo(
        folder=root / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}",
        image_name=str(image_name), shape=_shape(shape), annotation_name=str(annotation_name),
        class_names=_names(class_names or {}), scale=_floats(scale),
        translate=_floats(translate), source=None if source is None else str(source),
        pid=os.getpid(), host=host_tag(), started=now, saved=now)
    _write_meta(info)
    return AutosaveSession(info)


def find_sessions(root: str | os.PathLike | None = None) -> tuple[list[SessionInfo], list[str]]:
    """The sessions that processes which exited left open, newest first, and one sentence for
    each damaged session folder, which is skipped."""
    root = Path(root) if root is not None else sessions_root()
    found, problems = [], []
    if not root.is_dir():
        return found, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            info = read_info(folder)
        except FileNotFoundError:
            if _age(folder) >= CREATING_S:  # else another process is just creating it
                problems.append(_damaged(folder, "it has no session.json"))
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(_damaged(folder, _reason(e)))
            continue
        if _left_open(info):
            found.append(info)
    return sorted(found, key=lambda s: -s.saved), problems


def prune(root: str | os.PathLike | None = None, keep: int = MAX_KEPT) -> list[Path]:
    """Delete the oldest found sessions so that ``keep - 1`` remain (room for a new one);
    returns the folders deleted."""
    found, _ = find_sessions(root)
    old = sorted(found, key=lambda s: s.saved)[:max(0, len(found) - keep + 1)]
    for info in old:
        discard(info)
    return [info.folder for info in old]


def read_info(folder: str | os.PathLike) -> SessionInfo:
    """The :class:`SessionInfo` of ``folder``; raises ``OSError``/``ValueError`` if damaged."""
    folder = Path(folder)
    data = json.loads((folder / META).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("session.json is not an object")
    return SessionInfo(
        folder=folder, image_name=str(data["image_name"]), shape=_shape(data["shape"]),
        annotation_name=str(data["annotation_name"]),
        class_names=_names(data.get("class_names") or {}), scale=_floats(data.get("scale")),
        translate=_floats(data.get("translate")), source=data.get("source"),
        pid=int(data["pid"]), host=str(data["host"]), started=float(data["started"]),
        saved=float(data["saved"]))


@dataclass(frozen=True)
class PaintedVoxels:
    """The painted (non-zero) voxels of a ``(Z, Y, X)`` annotation array: what an autosave keeps.
    Gathering them reads the array once and copies only the strokes (at 5x10^8 voxels a dense
    copy held napari's GUI thread 1.5 s when *Train* was pressed).

    Attributes:
        shape: the array's shape.
        index: ``(N,)`` int64 flat (C-order) indices of the painted voxels, ascending.
        values: ``(N,)`` their label values, in the array's dtype.
    """

    shape: tuple[int, ...]
    index: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, labels) -> PaintedVoxels:
        flat = np.asarray(labels).reshape(-1)  # a view of a contiguous array
        index = flat_nonzero(flat)
        return cls(tuple(int(n) for n in np.shape(labels)), index, flat[index])

    def dense(self) -> np.ndarray:
        """The annotation array again."""
        out = np.zeros(self.shape, self.values.dtype)
        out.reshape(-1)[self.index] = self.values
        return out


def flat_nonzero(flat: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(flat)`` (int64) for a 1-D array, read 8 bytes at a time when its items
    are 1, 2 or 4 bytes: numpy's nonzero on uint8 took 0.78 s over 5x10^8 voxels of strokes,
    on the GUI thread when *Train* was pressed; this reads the words and looks closer only
    at the few that hold a stroke."""
    per = 8 // flat.dtype.itemsize if flat.dtype.itemsize in (1, 2, 4) else 1
    if per == 1 or not flat.flags.c_contiguous or flat.size < per:
        return np.flatnonzero(flat).astype(np.int64, copy=False)
    head = flat.size - flat.size % per
    words = np.flatnonzero(flat[:head].view(np.uint64))
    near = (words[:, None] * per + np.arange(per)).ravel()
    found = near[flat[near] != 0]  # -0.0 or NaN bits count as a word's, not as a stroke's
    tail = np.flatnonzero(flat[head:]) + head
    return np.concatenate([found, tail]).astype(np.int64, copy=False)


def _read_strokes(data) -> np.ndarray | PaintedVoxels:
    """What a ``strokes.npz`` holds: the painted voxels (or, in sessions of earlier versions,
    the dense ``labels``)."""
    if "labels" in data.files:
        return np.asarray(data["labels"])
    painted = PaintedVoxels(tuple(int(n) for n in data["shape"]), np.asarray(data["index"]),
                            np.asarray(data["values"]))
    index, n = painted.index, int(np.prod(painted.shape, dtype=np.int64))
    if index.shape != painted.values.shape or index.dtype.kind not in "iu" or (
            len(index) and (index.min() < 0 or index.max() >= n)):
        raise ValueError("its painted voxels do not fit its shape")
    return painted


def restore(info: SessionInfo | str | os.PathLike) -> Restored:
    """Read a found session; raises ``ValueError`` with a sentence if its strokes are damaged.
    The model files are only located: load them with :func:`~.model_file.load_model`."""
    info = info if isinstance(info, SessionInfo) else read_info(info)
    if not (info.folder / META).is_file():
        raise ValueError(f"The autosaved session in {info.folder} is gone (restored or "
                         "discarded meanwhile).")
    path = info.folder / STROKES
    strokes = None
    if path.is_file():
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                strokes = _read_strokes(data)  # (own file: closed even when damaged)
        except Exception as e:  # noqa: BLE001 - zip, key and format errors of a damaged file
            raise ValueError(f"The autosaved strokes in {path} are damaged ({_reason(e)}).") \
                from e
        dtype = strokes.values.dtype if isinstance(strokes, PaintedVoxels) else strokes.dtype
        if strokes.shape != info.shape or dtype.kind not in "iu":
            raise ValueError(f"The autosaved strokes in {path} are {dtype} of shape "
                             f"{strokes.shape}, not integers of the image's {info.shape}.")
        if isinstance(strokes, PaintedVoxels):
            strokes = strokes.dense()
    model, last = info.folder / MODEL, info.folder / LAST
    return Restored(info, strokes, model if model.is_file() else None,
                    last if last.is_file() else None)


def discard(session: SessionInfo | str | os.PathLike) -> None:
    """Delete a session's folder (nothing if it is gone already)."""
    folder = session.folder if isinstance(session, SessionInfo) else Path(session)
    shutil.rmtree(folder, ignore_errors=True)


def _left_open(info: SessionInfo) -> bool:
    """Whether the process that wrote ``info`` has exited (on another host: not saved for a
    day, as its process cannot be looked up)."""
    if info.host != host_tag():
        return time.time() - info.saved > STALE_AFTER_S
    return _writer_gone(info.pid, info.started)


def _write_meta(info: SessionInfo) -> None:
    data = {"image_name": info.image_name, "shape": list(info.shape),
            "annotation_name": info.annotation_name,
            "class_names": {str(k): v for k, v in info.class_names.items()},
            "scale": _listed(info.scale), "translate": _listed(info.translate),
            "source": info.source, "pid": info.pid, "host": info.host,
            "started": info.started, "saved": info.saved}
    path = info.folder / META
    write_files([(path, json.dumps(data, indent=1).encode())],
                f"Cannot autosave the session to {path}")


def _shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"a session's shape is (Z, Y, X), not {shape}")
    return shape


def _names(names) -> dict[int, str]:
    return {int(k): str(v) for k, v in dict(names).items()}


def _floats(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _listed(values) -> list[float] | None:
    return None if values is None else list(values)


def _age(folder: Path) -> float:
    try:
        return time.time() - folder.stat().st_mtime
    except OSError:
        return 0.0


def _damaged(folder: Path, reason: str) -> str:
    return (f"The autosaved training session in {folder} is damaged ({reason}) and was "
            "skipped; delete that folder.")


def _reason(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160] or type(e).__name__
