"""Write small files (model files, the training report) whole or not at all, several together.

Each file's bytes are made in memory first, so their size is known: the free space is checked
for all of them, each goes to a hidden temporary beside its target and is flushed to disk, and
only then are they moved into place. A failure at any point (a full disk, Ctrl-C) removes the
temporaries, and a failure while moving them puts back the files that were there: the targets
are either all new, or all as they were.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ._folders import missing_folders, remove_empty
from ._space import check_free_space, writing
from ._temps import remove_stale_temps, sync_folder, temp_path


def write_files(files: Sequence[tuple[Path, bytes]], lead: str) -> None:
    """Write each ``(path, data)`` atomically, all of them or none (see the module).

    Args:
        files: the targets and their contents.
        lead: the start of the sentence of a failure, e.g. ``"Cannot save the model to m.pt"``.

    Raises:
        OutputError: not enough space, or a write that failed, in one sentence.
        FileExistsError: a temporary's name was taken (nothing of another writer is touched).
    """
    files = [(Path(p), data) for p, data in files]
    created = sorted({f for p, _ in files for f in missing_folders(p.parent)},
                     key=lambda f: -len(f.parts))
    check_free_space(files[0][0], sum(len(data) for _, data in files), lead)
    temps: list[Path] = []
    try:
        with writing(lead):
            for path, data in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(path)  # .part files of earlier writes whose process was killed
                tmp = temp_path(path)
                with open(tmp, "xb") as fh:  # exclusive: never another writer's file
                    temps.append(tmp)
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            _move_all(list(zip(temps, (p for p, _ in files))))
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        remove_empty(created)
        raise


def _move_all(moves: list[tuple[Path, Path]]) -> None:
    """Move each temporary onto its target; if one move fails, undo those done before it (the
    earlier files are kept as hard links until all moves are done)."""
    kept: dict[Path, Path | None] = {}
    try:
        for _, path in moves:
            kept[path] = _keep(path)
        done: list[Path] = []
        try:
            for tmp, path in moves:
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in done:
                with contextlib.suppress(OSError):
                    if kept[path] is not None:
                        os.replace(kept.pop(path), path)
                    else:
                        path.unlink()
            raise
        for folder in {path.parent for _, path in moves}:
            sync_folder(folder)
    finally:
        for link in kept.values():
            if link is not None:
                link.unlink(missing_ok=True)


def _keep(path: Path) -> Path | None:
    """A hard link to the file at ``path`` under a temporary's name (None when there is no file,
    or the file system has no hard links)."""
    if not path.is_file():
        return None
    link = temp_path(path)
    try:
        os.link(path, link)
    except OSError:
        return None
    return link
