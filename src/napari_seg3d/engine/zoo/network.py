"""The architecture that our bioimage.io packages name: a napari-seg3d network and its activation.

A package's ``pytorch_state_dict`` weights say ``import_from: napari_seg3d.engine.zoo.network``,
``callable: ZooNetwork`` and the network's constructor arguments, so any bioimage.io consumer
with napari-seg3d installed (bioimageio.core, ilastik) rebuilds it; the TorchScript copy needs
nothing but PyTorch (deepImageJ). This module imports torch and the model registry only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import SliceNetwork, build_model


class ZooNetwork(nn.Module):
    """A network of :data:`..models.MODELS` returning class probabilities, not logits.

    Args:
        architecture: a key of :data:`..models.MODELS`.
        planes: 2D (2.5D) networks only: how they slice a window (``"fast"``, ``"three"``,
            ``"best"``); None for 3D networks.
        **kwargs: the network's constructor arguments (``ModelConfig.kwargs``).

    ``forward`` maps windows ``(B, C, Z, Y, X)`` to the softmax over classes ``(B, K, Z, Y, X)``,
    or to the sigmoid for a one-output network (the probability of the foreground class).
    """

    def __init__(self, architecture: str = "unet", planes: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        self.net = build_model(architecture, **kwargs)
        if isinstance(self.net, SliceNetwork):
            self.net.planes = planes or "three"
        self.in_channels = self.net.in_channels
        self.out_channels = self.net.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, dim=1)


def zoo_kwargs(model) -> dict[str, Any]:
    """The ``ZooNetwork`` arguments that rebuild the network of a ``SegmentationModel``."""
    kwargs: dict[str, Any] = {"architecture": model.model_config.architecture}
    if model.dims == 2:
        kwargs["planes"] = model.network.planes
    kwargs.update(model.model_config.to_dict()["kwargs"])
    return kwargs


def zoo_network(model) -> ZooNetwork:
    """A float32 CPU ``ZooNetwork`` in eval mode holding a copy of ``model``'s weights."""
    net = ZooNetwork(**zoo_kwargs(model))
    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu()
             for k, v in model.network.state_dict().items()}
    net.net.load_state_dict(state)
    return net.eval()
