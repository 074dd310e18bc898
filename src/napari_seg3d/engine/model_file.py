"""The self-describing model file, and :class:`SegmentationModel`, the network together with
everything needed to apply it (class values, normalisation, patch size, voxel size).

The file is a ``torch.save`` archive of plain values and tensors only, loaded with
``torch.load(weights_only=True)``, which cannot run code. It is written atomically.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .call_checks import check_volume, complex_image
from .config import ModelConfig, PredictConfig, TrainConfig, predict_config
from .devices import resolve_device
from .errors import ModelFileError, SettingError
from .io._publish import write_files
from .model_schema import check_model_data
from .models import SliceNetwork, build_model
from .models.slices import with_planes
from .normalization import Normalization, has_finite_value
from .pickles import holds_code
from .schema import shown
from .training.forest_file import forest_from_dict, forest_to_dict, with_forest

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
    #: the names of the input channels, in order (e.g. the napari layers stacked); () unknown
    channel_names: tuple[str, ...] = ()
    history: dict[str, list] = field(default_factory=dict)
    optimizer_state: dict | None = None
    #: a random forest fit on the strokes at the end of training (:class:`.training.forest.Forest`),
    #: whose probabilities the prediction averages with the network's; None: the network alone
    forest: Any = None
    #: the network's copies on other devices, by device: (weights stamp, network)
    _copies: dict[str, tuple] = field(default_factory=dict, init=False, repr=False,
                                      compare=False)

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
        check_volume(image)
        shape = tuple(np.shape(image)) if not hasattr(image, "shape") else tuple(image.shape)
        if len(shape) == 3:
            shape = (1, *shape)
        if len(shape) != 4:
            raise ValueError(f"Expected a 3D image (Z, Y, X) or (C, Z, Y, X), got {len(shape)} dimensions.")
        if shape[0] != self.in_channels:
            raise ValueError(f"This model was trained on {self.in_channels}-channel images; the image "
                             f"has {shape[0]} channel(s).")
        if complex_image(image):
            raise ValueError(complex_image(image))

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

    def prediction_window(self, shape, config: PredictConfig | None = None,
                          ) -> tuple[int, int, int]:
        """The sliding window of a prediction of an image of spatial ``shape``: the config's
        window (3D models only), else :meth:`window`."""
        if config is not None and config.window is not None:
            self.check_config(config)
            return config.window
        return self.window(shape)

    def check_config(self, config: PredictConfig) -> None:
        """Raise a ValueError with a sentence when ``config`` does not apply to this model:
        planes for a 3D network, a window for a 2D one."""
        if self.dims == 3:
            with_planes(self.network, config.planes)
        elif config.window is not None:
            raise ValueError("A window applies to 3D models; this one is 2D (2.5D): it predicts "
                             "whole slices along the planes it was trained on.")

    def network_for(self, config: PredictConfig) -> torch.nn.Module:
        """The network that predicts with ``config``, never changing :attr:`network` (which the
        widgets of a session share): on ``config.device`` (a copy, made once per device, when
        the network is elsewhere) and, for a 2D network, along ``config.planes`` (None: as
        trained) through a view sharing the weights."""
        self.check_config(config)
        network = self._on_device(resolve_device(config.device or "auto"))
        if self.dims == 2:
            network = with_planes(network, config.planes or self.train_config.planes)
        return network

    def _on_device(self, device: torch.device) -> torch.nn.Module:
        """:attr:`network` when its parameters are on ``device``, else its copy there (made
        again when the network's weights changed since)."""
        if _same_device(_device_of(self.network), device):
            return self.network
        stamp = _weights_stamp(self.network)
        cached = self._copies.get(str(device))
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]
        copy = deepcopy(self.network).to(device)
        if stamp is not None:
            self._copies[str(device)] = (stamp, copy)
        return copy

    def iter_predict(self, image, config: PredictConfig | None = None, *,
                     blocks: list[int] | None = None, first_region=None,
                     **overrides: Any) -> Iterator[Any]:
        """Sliding-window prediction region by region (see :func:`.iter_predict_volume`).

        Each yielded :class:`.RegionDone`'s ``labels`` hold the **painted label values**
        (:attr:`class_values`), not class indices. ``image`` may be any array-like (numpy,
        memmap, h5py, zarr): it is read piece by piece, and with ``config.block_shape`` block by
        block, so it never needs to fit in memory; ``blocks`` picks some blocks of the plan.
        The model is not changed (see :meth:`network_for`), so predictions of one model with
        different settings may run at the same time.

        Args:
            image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array-like.
            config: The prediction settings (default ``PredictConfig()``): ``device`` None means
                ``"auto"``; ``amp`` None as the model was trained; ``planes`` (2D models only)
                None as trained.
            blocks: Predict only these blocks of the plan (indices).
            first_region: ``(z, y, x)`` slices predicted first (e.g. the slice on screen).
            **overrides: Fields of :class:`.PredictConfig` replacing those of ``config``.
        """
        from .plan import windows_per_pass
        from .prediction.sliding_window import iter_predict_volume

        config = predict_config(config, **overrides)
        self.check_image(image)
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        if not has_finite_value(image):  # else the prediction of nothing would look real
            raise ValueError("The image holds no finite value (all NaN or Inf).")
        lut = self.label_lut()
        forest = self.forest if config.forest else None
        window = self.prediction_window(image.shape[-3:], config)
        batch = config.batch_size if config.window is None else \
            windows_per_pass(config.batch_size, self.patch_size, window)
        run = replace(config, batch_size=batch,
                      probabilities=config.probabilities or forest is not None)
        for region in iter_predict_volume(self.network_for(config), image, patch_size=window,
                                          config=run, blocks=blocks,
                                          normalize=self.normalization.apply,
                                          trained_amp=self.train_config.amp,
                                          first_region=first_region):
            if forest is not None:
                region = with_forest(region, forest, image, config.needs_probabilities)
            yield replace(region, labels=lut[region.labels])

    def predict(self, image, config: PredictConfig | None = None, **overrides: Any) -> np.ndarray:
        """Segment a whole image (see :meth:`iter_predict` for the settings).

        Returns the **painted label values** (:attr:`class_values`), where
        :func:`.predict_volume` of a bare network returns class indices.

        Example:
            >>> labels = model.predict(image, device="cpu")  # doctest: +SKIP
            >>> probs = model.predict(image, PredictConfig(probabilities=True))  # doctest: +SKIP

        Returns:
            Labels ``(Z, Y, X)`` with the painted values; with ``probabilities=True`` the class
            probabilities ``(K, Z, Y, X)`` float32 instead.
        """
        config = predict_config(config, **overrides)
        check_volume(image)
        if not hasattr(image, "shape"):
            image = np.asarray(image)
        shape = tuple(image.shape[-3:])
        labels = np.zeros(shape, self.label_lut().dtype)
        probs = None
        for r in self.iter_predict(image, config):
            labels[r.slices] = r.labels
            if config.probabilities:
                if probs is None:
                    probs = np.zeros((r.probabilities.shape[0],) + shape, np.float32)
                probs[(slice(None),) + r.slices] = r.probabilities
        return probs if config.probabilities else labels

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
            "channel_names": list(self.channel_names),
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "iteration": self.iteration,
            "history": self.history,
            "optimizer_state": self.optimizer_state if include_optimizer else None,
            "forest": None if self.forest is None else forest_to_dict(self.forest),
        }


def _device_of(network: torch.nn.Module) -> torch.device:
    param = next(network.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device (index None is the first)."""
    return (a.type, a.index or 0) == (b.type, b.index or 0)


def _weights_stamp(network: torch.nn.Module) -> tuple | None:
    """Changes whenever a weight or buffer of ``network`` is written (an optimizer step, a
    ``load_state_dict``) or replaced; None when it cannot be told (inference tensors)."""
    try:
        return (id(network),) + tuple((t.data_ptr(), t._version) for t in network.state_dict(
            keep_vars=True).values())
    except RuntimeError:
        return None


def save_model(model: SegmentationModel, path: str | os.PathLike, *,
               include_optimizer: bool = True) -> Path:
    """Write ``model`` to ``path`` atomically: a temporary file in the same folder, then a rename,
    so a crash never leaves a partial file under the final name. Raises an :class:`OutputError`
    (an ``OSError``) with a sentence when the file cannot be written (a full disk included: the
    free space is checked first).

    Example:
        >>> save_model(result.best, "model.pt")  # doctest: +SKIP
        PosixPath('model.pt')
        >>> save_model(result.best, "share.pt", include_optimizer=False)  # doctest: +SKIP
    """
    path = Path(path)
    write_files([(path, model_bytes(model, include_optimizer))],
                f"Cannot save the model to {path}")
    return path


def save_models(models: list[tuple[SegmentationModel, str | os.PathLike]]) -> list[Path]:
    """Write several models (the best and the last of a run) together: all the files are new,
    or (on any error, a full disk included) all stay as they were. Raises an
    :class:`OutputError` with a sentence."""
    files = [(Path(p), model_bytes(m)) for m, p in models]
    names = " and ".join(str(p) for p, _ in files)
    write_files(files, f"Cannot save the model{'s' if len(files) > 1 else ''} to {names}")
    return [p for p, _ in files]


def model_bytes(model: SegmentationModel, include_optimizer: bool = True) -> bytes:
    """The model file's contents (``torch.save`` of :meth:`SegmentationModel.to_dict`)."""
    buffer = io.BytesIO()
    torch.save(model.to_dict(include_optimizer=include_optimizer), buffer)
    return buffer.getvalue()


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; we raise
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        reason = "it holds code or objects that are not allowed" if holds_code(path, e) \
            else "it is truncated, corrupt or not a model file"
        raise ModelFileError(f"Cannot load {path.name}: {reason}. Only files saved by napari-seg3d "
                             "can be loaded.") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path.name} is not a napari-seg3d model file.")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ModelFileError(f"{path.name} was saved by a newer napari-seg3d "
                             f"({shown(data.get('package_version'))}); please upgrade.")
    return data


def model_from_dict(data: dict) -> SegmentationModel:
    """Rebuild a :class:`SegmentationModel` from the dictionary that :func:`save_model` wrote;
    every field is checked first (see :mod:`.model_schema`): a :class:`.SettingError` names the
    first that is wrong, before any network is built."""
    check_model_data(data)
    model_config = ModelConfig.from_dict(data["model_config"])
    network = build_model(model_config.architecture, **model_config.kwargs)
    network.load_state_dict(data["state_dict"])
    train_config = TrainConfig.from_dict(data["train_config"])
    if isinstance(network, SliceNetwork):  # predicts as trained when called as it is
        network.planes = train_config.planes
    vs = data.get("voxel_size")
    normalization = Normalization.from_dict(data["normalization"])
    return SegmentationModel(
        network=network,
        model_config=model_config,
        train_config=train_config,
        class_values=tuple(int(v) for v in data["class_values"]),
        class_names=tuple(str(n) for n in data.get("class_names", ())),
        normalization=normalization,
        in_channels=int(data.get("in_channels", 1)),
        channel_names=tuple(str(n) for n in data.get("channel_names", ())),
        voxel_size=None if vs is None else tuple(float(v) for v in vs),
        iteration=int(data.get("iteration", 0)),
        history=dict(data.get("history") or {}),
        optimizer_state=data.get("optimizer_state"),
        forest=None if data.get("forest") is None else forest_from_dict(
            data["forest"], normalization, len(data["class_values"])),
    )


def load_model(path: str | os.PathLike) -> SegmentationModel:
    """Load a model file safely (no code runs); raises :class:`ModelFileError` with a clear
    sentence for a missing, truncated, foreign or unsafe file. A bioimage.io package (a zip
    with an ``rdf.yaml``, or the YAML file) is loaded by :func:`.zoo.load.load_package`.

    Example:
        >>> model = load_model("model.pt")  # doctest: +SKIP
        >>> model.class_values, model.patch_size  # doctest: +SKIP
        ((1, 2), (16, 32, 32))
        >>> labels = model.predict(image, device="cpu")  # doctest: +SKIP
    """
    path = Path(path)
    from .zoo import is_package

    if is_package(path):
        from .zoo.load import load_package

        return load_package(path)  # type: ignore[return-value]
    data = _read_file(path)
    try:
        return model_from_dict(data)
    except ModelFileError:
        raise
    except SettingError as e:
        raise ModelFileError(f"{path.name} is damaged or incomplete: {e} Save the model again, "
                             "or copy the file again.") from None
    except Exception as e:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelFileError(f"{path.name} is damaged or incomplete: {text}.") from e

