"""Folders a write creates, and their removal when the write fails: a failed run leaves no empty
output folder behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    folder = Path(folder).expanduser().absolute()
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; never raises."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: what is left is the user's or another run's
            return


@contextlib.contextmanager
def new_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` (and its parents) for the block; on an exception remove those it
    created that are still empty."""
    created = missing_folders(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        yield Path(folder)
    except BaseException:
        remove_empty(created)
        raise
