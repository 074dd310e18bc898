"""Errors a user can cause, each raised with a sentence that says what was wrong and what to do."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class Seg3DError(Exception):
    """Base class of every user-facing napari-seg3d error."""


class AnnotationError(Seg3DError, ValueError):
    """The annotations (or the image they go with) cannot be used for training."""


class ModelFileError(Seg3DError, ValueError):
    """A model file is missing, truncated, foreign or unsafe."""


class VolumeError(Seg3DError, ValueError):
    """A volume file cannot be read or written; the message says why and what to do."""


class SettingError(Seg3DError, ValueError):
    """A setting (an argument, a field of a config file or of a model file) has the wrong type,
    range or length; the message names it."""


class OutputError(Seg3DError, OSError):
    """An output folder or file cannot be written. Also an ``OSError``, so code that catches
    ``OSError`` around a write keeps working."""


def writable_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created if needed, once a file could be made in it; raises an
    :class:`OutputError` otherwise (a path through a file, a read-only or full file system, no
    permission)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Cannot write to the output folder {folder}: it is a file. Choose a "
                          "folder you can write to.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"Cannot write to the output folder {folder} ({exc.strerror or exc}). "
                          "Choose a folder you can write to.") from exc
    return folder
