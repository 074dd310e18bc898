"""Network architectures and the registry that builds them by name.

To add an architecture, import its class here and add one entry to :data:`MODELS`; its
constructor must take plain values only, so ``build_model(name, **kwargs)`` rebuilds it
from a model file.
"""

from __future__ import annotations

from typing import Any

from torch import nn

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
        The network, returning logits of shape ``(B, out_channels, *S)``.
    """
    try:
        model_class = MODELS[architecture]
    except KeyError:
        valid = ", ".join(MODELS)
        raise ValueError(f"Unknown architecture '{architecture}'; valid: {valid}.") from None
    return model_class(**kwargs)


__all__ = ["MODELS", "ResEncUNet", "UNet", "UNetPlusPlus", "anisotropic_pooling", "build_model"]
