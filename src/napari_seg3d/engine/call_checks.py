"""Checks of what a Python caller passes to the engine's prediction functions, each broken in
one sentence that says what to pass instead (``predict_volume(SegmentationModel, ...)``, a path
where an array goes, a batch of 2.5 windows)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .errors import SettingError
from .schema import shown


def check_network(model: Any, function: str = "predict_volume") -> None:
    """``model`` must be a network (a ``torch.nn.Module``)."""
    if isinstance(model, nn.Module):
        return
    if hasattr(model, "network") and hasattr(model, "predict"):
        raise SettingError(f"{function} takes a network (torch.nn.Module), got a "
                           f"{type(model).__name__}: use its own method instead, "
                           "model.predict(volume) (or model.iter_predict(volume)).")
    raise SettingError(f"{function} takes a network (torch.nn.Module) as its model, got "
                       f"{shown(model)}.")


def check_volume(volume: Any) -> None:
    """``volume`` must be an array-like, not the name of a file."""
    if isinstance(volume, (str, bytes, os.PathLike)):
        raise SettingError(f"The volume {shown(os.fspath(volume))} is a file name, not an "
                           "array: read it first, e.g. napari_seg3d.engine.io.read_volume(path)"
                           ".data.")
    if not hasattr(volume, "shape") and not hasattr(volume, "__len__"):
        raise SettingError(f"The volume must be an array (Z, Y, X) or (C, Z, Y, X), got "
                           f"{shown(volume)}.")


def complex_image(image: Any) -> str | None:
    """The sentence for an image of complex numbers (whose imaginary part a cast to float would
    drop), or None."""
    kind = getattr(getattr(image, "dtype", None), "kind", None)
    if kind != "c":
        return None
    return (f"The image holds complex numbers ({image.dtype}); napari-seg3d segments real "
            "intensities: save their magnitude (numpy.abs) or their real part instead.")
