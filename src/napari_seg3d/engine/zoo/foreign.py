"""Another tool's bioimage.io model as a :class:`~..model_file.SegmentationModel`: its network
wrapped to take our ``(B, C, z, y, x)`` windows and return logits whose softmax (or sigmoid) is
its class probabilities, and its pre-processing as our per-channel normalisation, so the
sliding window, streaming, Batch and the widgets use it as one of ours."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..errors import OutputError
from ..model_file import SegmentationModel
from ._fit import Fit, Layout
from ._preprocess import ChannelAffine, ImageStatistics

ARCHITECTURE = "bioimage.io package"  # model_config.architecture of a PackageModel
_EPS = 1e-7


class ForeignNetwork(nn.Module):
    """A package's network seen as one of ours: ``(B, C, z, y, x)`` -> logits ``(B, K, z, y, x)``.

    Args:
        inner: the package's torch module (``pytorch_state_dict`` or TorchScript weights).
        fit: what :func:`._fit.check_fit` read from the description.
    """

    def __init__(self, inner: nn.Module, fit: Fit) -> None:
        super().__init__()
        self.inner = inner
        self.in_channels, self.out_channels = fit.in_channels, fit.out_channels
        self.spatial_dims = 3
        self.output = fit.output
        self.input_layout, self.output_layout = fit.input_layout, fit.output_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one_by_one = not self.input_layout.batch or self.input_layout.batch_of_one
        parts = [x[i:i + 1] for i in range(x.shape[0])] if one_by_one else [x]
        outputs = [_to_ours(self.inner(_to_theirs(p, self.input_layout)), self.output_layout)
                   for p in parts]
        y = torch.cat(outputs).float()
        return as_logits(y, self.output)


def _to_theirs(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    if not layout.channel:
        x = x[:, 0]
    return x if layout.batch else x[0]


def _to_ours(y, layout: Layout) -> torch.Tensor:
    if isinstance(y, (list, tuple)):
        y = y[0]
    if not layout.batch:
        y = y[None]
    return y if layout.channel else y[:, None]


def as_logits(y: torch.Tensor, output: str) -> torch.Tensor:
    """Logits whose softmax over channels (the sigmoid for one channel) gives the package's
    class probabilities, from its raw output ``y`` (see ``_fit._output_kind``)."""
    k = y.shape[1]
    if output == "probabilities":
        p = y.clamp(_EPS, 1 - _EPS)
        return torch.logit(p) if k == 1 else p.log()
    if output == "sigmoid" and k > 1:  # independent sigmoids: their normalised probabilities
        return F.logsigmoid(y)
    return y  # softmax, a one-channel sigmoid, or plain logits


@dataclass
class PackageModel(SegmentationModel):
    """A model loaded from another tool's package. Pre-processing from image statistics
    (``statistics``) is computed for each image before it is predicted."""

    statistics: ImageStatistics | None = None
    package_source: str = ""

    def for_image(self, image) -> SegmentationModel:
        """This model with the normalisation of ``image``'s statistics fixed."""
        if self.statistics is None:
            return self
        self.check_image(image)
        return replace(self, normalization=self.statistics.affine(image), statistics=None)

    def prepare(self, image):
        return SegmentationModel.prepare(self.for_image(image), image)

    def iter_predict(self, image, config=None, **kwargs):
        if not hasattr(image, "shape"):
            import numpy as np

            image = np.asarray(image)
        return SegmentationModel.iter_predict(self.for_image(image), image, config, **kwargs)

    def to_dict(self, *, include_optimizer: bool = True):
        """Refused (an ``OutputError``, as a file that cannot be written): the network is not
        one napari-seg3d can rebuild from a model file."""
        raise OutputError(f"{self.package_source} is another tool's bioimage.io package: "
                             "napari-seg3d cannot save it as a model file; use the package itself.")


def package_model(network: nn.Module, fit: Fit, source: str) -> PackageModel:
    """The :class:`PackageModel` of a package's network and :class:`._fit.Fit`. Labels are
    ``1..K`` for K > 1 output channels (channel k is label k + 1); a one-channel model labels
    ``1`` where its probability exceeds 0.5 and ``0`` elsewhere."""
    k = fit.out_channels
    if k == 1:
        values, names = (0, 1), (f"not {fit.class_names[0]}", fit.class_names[0])
    else:
        values, names = tuple(range(1, k + 1)), fit.class_names
    statistics = fit.normalization if isinstance(fit.normalization, ImageStatistics) else None
    fixed = fit.normalization if isinstance(fit.normalization, ChannelAffine) else \
        ChannelAffine((0.0,) * fit.in_channels, (1.0,) * fit.in_channels)
    batch = 1 if (not fit.input_layout.batch or fit.input_layout.batch_of_one) else 2
    return PackageModel(
        network=ForeignNetwork(network, fit).eval(),
        model_config=ModelConfig(ARCHITECTURE, {"in_channels": fit.in_channels,
                                                "out_channels": k, "package": fit.name}),
        train_config=TrainConfig(patch_size=fit.window, batch_size=batch, iterations=1,
                                 amp=False),
        class_values=values, class_names=tuple(names), normalization=fixed,  # type: ignore[arg-type]
        in_channels=fit.in_channels, voxel_size=fit.voxel_size,
        history={"best_val_dice": None}, statistics=statistics, package_source=source)
