"""Network architectures and the registry that builds them by name.

To add an architecture, import its class here and add one entry to :data:`MODELS`; its
constructor must take plain values only, so ``build_model(name, **kwargs)`` rebuilds it
from a model file. Every architecture exists in 2D and 3D (``spatial_dims``); a 2D one comes
wrapped in a :class:`SliceNetwork`, which applies it to volumes slice by slice (2.5D).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .slices import PLANES, SliceNetwork
from .unet import UNet, anisotropic_pooling
from .variants import ResEncUNet, UNetPlusPlus

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "resenc_unet": ResEncUNet,
}


def build_model(architecture: str, **kwargs: Any) -> nn.Module:
    """Build a network from its registry name and plain constructor arguments.

    Args:
        architecture: A key of :data:`MODELS`, e.g. ``"unet"``.
        **kwargs: Constructor arguments of that architecture.

    Returns:
        The network, returning logits of shape ``(B, out_channels, Z, Y, X)`` for windows
        ``(B, in_channels, Z, Y, X)``; with ``spatial_dims=2`` a :class:`SliceNetwork` around
        the 2D network.
    """
    try:
        model_class = MODELS[architecture]
    except KeyError:
        valid = ", ".join(MODELS)
        raise ValueError(f"Unknown architecture '{architecture}'; valid: {valid}.") from None
    network = model_class(**kwargs)
    return SliceNetwork(network) if kwargs.get("spatial_dims", 3) == 2 else network


__all__ = ["MODELS", "PLANES", "ResEncUNet", "SliceNetwork", "UNet", "UNetPlusPlus",
           "anisotropic_pooling", "build_model"]
