"""Nothing a command writes may land on a file it reads.

:class:`ReadFiles` holds the files (and zarr stores) a command reads, by their resolved path and,
for those that exist, by device and inode, so that a symbolic link to an input or a hard link of
one counts as that input. :meth:`ReadFiles.hit` tells whether writing a path would change one of
them: the same file, a path inside a read store, or a store replaced whole that holds a read file.
An HDF5 dataset ``file.h5:/key`` or a zarr array ``store.zarr:/name`` counts as its file or store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import OutputError
from . import split_path


def file_of(spec: str | os.PathLike) -> Path:
    """The file or store behind a volume spec (``file.h5:/key`` -> ``file.h5``)."""
    return split_path(spec)[0].expanduser()


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symbolic link followed (as far as it exists)."""
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop of symbolic links
        return Path(os.path.abspath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class ReadFiles:
    """The files a command reads, each with the words that name it in a message.

    Args:
        named: ``{description: spec}``, e.g. ``{"the labels (--labels lab.tif)": "lab.tif"}``;
            a spec is a path or a volume spec (``file.h5:/key``); None values are left out.
    """

    def __init__(self, named: Mapping[str, str | os.PathLike | None]) -> None:
        self._paths: dict[str, tuple[str, str]] = {}  # resolved -> (words, path as given)
        self._inodes: dict[tuple[int, int], str] = {}
        self._holders: dict[str, str] = {}  # folders that hold a read file -> that file's words
        for words, spec in named.items():
            if spec is not None:
                self.add(words, spec)

    def add(self, words: str, spec: str | os.PathLike) -> None:
        """Also protect ``spec``, named ``words`` in a message."""
        path = resolved(file_of(spec))
        self._paths.setdefault(str(path), (words, os.path.abspath(file_of(spec))))
        inode = _inode(path)
        if inode is not None:
            self._inodes.setdefault(inode, words)
        for folder in path.parents:
            self._holders.setdefault(str(folder), words)

    def hit(self, written: str | os.PathLike, *, replaced_whole: bool = True) -> str | None:
        """How writing ``written`` would change a read file, as the end of a sentence that
        starts with what is written (``"would be written over the labels (--labels lab.tif)"``),
        or None when it changes none.

        Args:
            written: a file (or zarr store) about to be written; a volume spec counts as its file.
            replaced_whole: ``written`` is replaced as a whole (an output file or store), so a
                read file inside it would go too. False for a folder that only gets new files
                (a TensorBoard log folder).
        """
        path = resolved(file_of(written))
        if str(path) in self._paths:
            words, given = self._paths[str(path)]
            link = "" if os.path.abspath(file_of(written)) == given else \
                " (the same file, through a symbolic link)"
            return f"would be written over {words}{link}"
        for folder in path.parents:
            if str(folder) in self._paths:
                return f"would be written inside {self._paths[str(folder)][0]}"
        inode = _inode(path)
        if inode is not None and inode in self._inodes:
            return (f"would be written over {self._inodes[inode]} (the same file, through a hard "
                    "link)")
        if replaced_whole and str(path) in self._holders:
            return f"would replace the folder that holds {self._holders[str(path)]}"
        return None


def refuse_writing_over(read: ReadFiles, written: Iterable[tuple[str, str | os.PathLike, bool]],
                        fix: str) -> None:
    """Raise an :class:`OutputError` for the first written path that would change a read file.

    Args:
        read: the files the command reads.
        written: ``(words, path, replaced_whole)`` for each path the command will write, e.g.
            ``("the model (--out lab.tif)", "lab.tif", True)``.
        fix: what to do, e.g. ``"choose another --out"``.

    Raises:
        OutputError: "<words> <how> ...: <fix>; nothing was written."
    """
    for words, path, whole in written:
        how = read.hit(path, replaced_whole=whole)
        if how is not None:
            raise OutputError(f"{words[:1].upper()}{words[1:]} {how}: {fix}; nothing was written.")
