"""The files the layers of a viewer were read from, so that nothing the widgets write lands on
one of them (see :mod:`napari_seg3d.engine.io.no_overwrite`)."""

from __future__ import annotations

import os
from typing import Any

from ..engine.io.no_overwrite import ReadFiles


def opened_files(viewer: Any, *, ours: bool = True) -> dict[str, str]:
    """``{words: file}`` for each layer read from a file: napari's ``layer.source.path`` and,
    when ``ours``, the ``path`` this plugin keeps in a layer's metadata (its HDF5 reader, and
    the predictions and batch results it opened or wrote)."""
    files = {}
    for layer in viewer.layers:
        path = getattr(getattr(layer, "source", None), "path", None)
        if not path and ours:
            path = layer.metadata.get("path")
        if path:
            files[f"the file of the layer '{layer.name}' ({path})"] = str(path)
    return files


def refusal(viewer: Any, path: str | os.PathLike, what: str) -> str | None:
    """The sentence that refuses writing ``what`` to ``path`` when it would land on the file of
    a layer in ``viewer``, or None."""
    how = ReadFiles(opened_files(viewer)).hit(path)
    if how is None:
        return None
    return (f"Not saved: {what} ({path}) {how}, which would be lost. Choose another file name.")
