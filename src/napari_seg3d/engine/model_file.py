"""The self-describing model file, and :class:`SegmentationModel`, the network together with
everything needed to apply it (class values, normalisation, patch size, voxel size).

The file is a ``torch.save`` archive of plain values and tensors only, loaded with
``torch.load(weights_only=True)``, which cannot run code. It is written atomically.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .config import ModelConfig, TrainConfig
from .devices import resolve_device
from .errors import ModelFileError, OutputError
from .io._temps import remove_stale_temps, temp_path
from .models import SliceNetwork, build_model
from .normalization import Normalization, has_finite_value

log = logging.getLogger(__name__)

FORMAT = "napari-seg3d-model"
FORMAT_VERSION = 1


@dataclass
class SegmentationModel:
    """A trained network and what it needs to segment a new volume.

    ``network`` maps normalised ``(B, C, z, y, x)`` patches to ``(B, K, z, y, x)`` logits
    (``K == 1`` for the binary BCE losses); ``class_values[k]`` is the label value of class ``k``.
    """

    network: torch.nn.Module
    model_config: ModelConfig
    train_config: TrainConfig
    class_values: tuple[int, ...]
    normalization: Normalization
    in_channels: int = 1
    class_names: tuple[str, ...] = ()
    voxel_size: tuple[float, float, float] | None = None
    iteration: int = 0
    history: dict[str, list] = field(default_factory=dict)
    optimizer_state: dict | None = None

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = tuple(f"class {v}" for v in self.class_values)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.train_config.patch_size

    def prepare(self, image) -> np.ndarray:
        """Check and normalise an image, ``(Z, Y, X)`` or ``(C, Z, Y, X)``, to ``(C, Z, Y, X)`` float32."""
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        self.check_image(image)
        return self.normalization.apply(image)

    def check_image(self, image) -> None:
        """Raise a clear ValueError unless ``image`` (any array-like, not read) has the shape of an
        input of this model: ``(Z, Y, X)`` for one channel, or ``(C, Z, Y, X)``."""
        shape = tuple(np.shape(image)) if not hasattr(image, "shape") else tuple(image.shape)
        if len(shape) == 3:
            shape = (1, *shape)
        if len(shape) != 4:
            raise ValueError(f"Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got {len(shape)} dimensions.")
        if shape[0] != self.in_channels:
            raise ValueError(f"This model was trained on {self.in_channels}-channel images; the image "
                             f"has {shape[0]} channel(s).")

    def label_lut(self) -> np.ndarray:
        """Class index -> painted label value."""
        return np.asarray(self.class_values, dtype=np.min_scalar_type(max(self.class_values)))

    @property
    def dims(self) -> int:
        """3 for a 3D network, 2 for a 2D network applied slice by slice (2.5D)."""
        return 2 if isinstance(self.network, SliceNetwork) else 3

    def window(self, shape) -> tuple[int, int, int]:
        """The sliding window for an image of spatial ``shape`` (see :func:`.plan.window_for`)."""
        from .plan import window_for

        return window_for(self.patch_size, self.dims, shape)

    def set_planes(self, planes: str | None) -> None:
        """How a 2D network predicts (see ``config.PLANES``); None: as it was trained."""
        if self.dims == 3:
            if planes is not None:
                raise ValueError("Planes (fast, three, best) apply to 2D (2.5D) models only; "
                                 "this model is a 3D network.")
            return
        self.network.planes = planes or self.train_config.planes

    def iter_predict(self, image, *, overlap: float = 0.5, tta: bool = False, batch_size: int = 4,
                     device: str | torch.device | None = None, probabilities: bool = False,
                     block_shape: tuple[int, int, int] | None = None,
                     blocks: list[int] | None = None, planes: str | None = None,
                     amp: bool | None = None, first_region=None) -> Iterator[Any]:
        """Sliding-window prediction region by region (see ``iter_predict_volume``); each yielded
        region's ``labels`` hold the painted label values. ``image`` may be any array-like
        (numpy, memmap, h5py, zarr): it is read piece by piece, and with ``block_shape`` block by
        block, so it never needs to fit in memory; ``blocks`` picks some blocks of the plan.
        ``planes`` (2D models only): ``"fast"``, ``"three"`` or ``"best"``; None: as trained.
        ``amp``: mixed precision where the device runs it natively (see :mod:`.precision`);
        None: as the model was trained (``train_config.amp``). ``first_region``: ``(z, y, x)``
        slices predicted first (e.g. the slice on screen)."""
        from .prediction.sliding_window import iter_predict_volume

        self.set_planes(planes)
        self.check_image(image)
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        if not has_finite_value(image):  # else the prediction of nothing would look real
            raise ValueError("The image holds no finite value (all NaN or Inf).")
        lut = self.label_lut()
        self.network.to(resolve_device(device or "auto"))
        for region in iter_predict_volume(self.network, image,
                                          patch_size=self.window(image.shape[-3:]),
                                          overlap=overlap, batch_size=batch_size,
                                          probabilities=probabilities, tta=tta,
                                          block_shape=block_shape, blocks=blocks,
                                          normalize=self.normalization.apply,
                                          amp=self.train_config.amp if amp is None else amp,
                                          first_region=first_region):
            yield replace(region, labels=lut[region.labels])

    def predict(self, image, **kwargs) -> np.ndarray:
        """Labels ``(Z, Y, X)`` with the painted values; with ``probabilities=True`` a
        ``(K, Z, Y, X)`` float32 array instead."""
        want_probs = kwargs.get("probabilities", False)
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        shape = tuple(image.shape[-3:])
        labels = np.zeros(shape, self.label_lut().dtype)
        probs = None
        for r in self.iter_predict(image, **kwargs):
            labels[r.slices] = r.labels
            if want_probs:
                if probs is None:
                    probs = np.zeros((r.probabilities.shape[0],) + shape, np.float32)
                probs[(slice(None),) + r.slices] = r.probabilities
        return probs if want_probs else labels

    def to_dict(self, *, include_optimizer: bool = True) -> dict[str, Any]:
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "state_dict": state,
            "class_values": list(self.class_values),
            "class_names": list(self.class_names),
            "normalization": self.normalization.to_dict(),
            "in_channels": self.in_channels,
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "iteration": self.iteration,
            "history": self.history,
            "optimizer_state": self.optimizer_state if include_optimizer else None,
        }


def save_model(model: SegmentationModel, path: str | os.PathLike, *,
               include_optimizer: bool = True) -> Path:
    """Write ``model`` to ``path`` atomically: a temporary file in the same folder, then a rename,
    so a crash never leaves a partial file under the final name. Raises an :class:`OutputError`
    (an ``OSError``) with a sentence when the file cannot be written."""
    path = Path(path)
    try:
        return _write_model(model, path, include_optimizer)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"Cannot save the model to {path} ({e.strerror or e}). Choose a "
                          "folder you can write to, with enough free space.") from e


def _write_model(model: SegmentationModel, path: Path, include_optimizer: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)  # .part files of earlier saves whose process was killed
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as f:  # exclusive: never another writer's file
            torch.save(model.to_dict(include_optimizer=include_optimizer), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except FileExistsError:  # the name was taken (not ours to delete); nothing was written
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; we raise
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        # every weights-only failure mentions weights_only; only a refused global means code
        reason = "it holds code or objects that are not allowed" if "Unsupported global" in str(e) \
            else "it is truncated, corrupt or not a model file"
        raise ModelFileError(f"Cannot load {path.name}: {reason}. Only files saved by napari-seg3d "
                             "can be loaded.") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path.name} is not a napari-seg3d model file.")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path.name} was saved by a newer napari-seg3d "
                             f"({data.get('package_version')}); please upgrade.")
    return data


def model_from_dict(data: dict) -> SegmentationModel:
    """Rebuild a :class:`SegmentationModel` from the dictionary that :func:`save_model` wrote."""
    model_config = ModelConfig.from_dict(data["model_config"])
    network = build_model(model_config.architecture, **model_config.kwargs)
    network.load_state_dict(data["state_dict"])
    vs = data.get("voxel_size")
    return SegmentationModel(
        network=network,
        model_config=model_config,
        train_config=TrainConfig.from_dict(data["train_config"]),
        class_values=tuple(int(v) for v in data["class_values"]),
        class_names=tuple(str(n) for n in data.get("class_names", ())),
        normalization=Normalization.from_dict(data["normalization"]),
        in_channels=int(data.get("in_channels", 1)),
        voxel_size=None if vs is None else tuple(float(v) for v in vs),
        iteration=int(data.get("iteration", 0)),
        history=dict(data.get("history") or {}),
        optimizer_state=data.get("optimizer_state"),
    )


def load_model(path: str | os.PathLike) -> SegmentationModel:
    """Load a model file safely (no code runs); raises :class:`ModelFileError` with a clear
    sentence for a missing, truncated, foreign or unsafe file."""
    path = Path(path)
    data = _read_file(path)
    try:
        return model_from_dict(data)
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(f"{path.name} is damaged or incomplete: {e}") from e


def describe(model: SegmentationModel) -> dict[str, Any]:
    """What a model file holds, as plain values (for ``napari-seg3d info``)."""
    n_params = sum(p.numel() for p in model.network.parameters())
    hist = model.history
    return {
        "architecture": model.model_config.architecture,
        "dims": model.dims,
        "network": model.model_config.kwargs,
        "parameters": n_params,
        "classes": dict(zip(model.class_values, model.class_names)),
        "in_channels": model.in_channels,
        "patch_size": list(model.patch_size),
        "voxel_size": model.voxel_size,
        "normalization": model.normalization.to_dict(),
        "iterations_trained": model.iteration,
        "best_validation_dice": hist.get("best_val_dice"),
        "optimizer_state": model.optimizer_state is not None,
        "training": model.train_config.to_dict(),
    }
