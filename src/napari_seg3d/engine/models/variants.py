"""Two U-Net variants that share the U-Net's arguments, so every setting (levels, filters,
per-axis pooling for anisotropic voxels, norm, dropout) works the same for all three:

- :class:`UNetPlusPlus` (Zhou et al. 2018): nested, dense skip pathways; each decoder node sees
  every earlier node of its level, which narrows the gap between encoder and decoder features.
- :class:`ResEncUNet` (the residual-encoder U-Net of nnU-Net v2, Isensee et al. 2024): more
  residual blocks in the deeper encoder stages (1, 2, 3, 4), one block per decoder stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .unet import _CONV_TRANSPOSE, UNet, _ConvBlock, _init_weights, _pad_to_multiple


class UNetPlusPlus(UNet):
    """U-Net++ returning logits; the arguments are those of :class:`UNet`."""

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 levels: int = 4, base_filters: int = 16, growth: float = 2.0,
                 residual: bool = True, norm: str = "instance", dropout: float = 0.0,
                 pooling: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, levels, base_filters, growth,
                         residual, norm, dropout, pooling)
        f, up = self.filters, _CONV_TRANSPOSE[spatial_dims]
        block = {"residual": residual, "norm": norm, "dropout": dropout}
        del self.up, self.decoder  # replaced by the nested nodes
        self.nested_up = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, levels):
            for i in range(levels - j):
                factor = self.pooling[i]
                self.nested_up[f"{i}_{j}"] = up(f[i + 1], f[i], factor, stride=factor, bias=False)
                self.nodes[f"{i}_{j}"] = _ConvBlock(spatial_dims, (j + 1) * f[i], f[i], **block)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        size = tuple(x.shape[2:])
        x, crop = _pad_to_multiple(x, self.divisor)
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for i, encode in enumerate(self.encoder):
            if i > 0:
                x = self.down[i - 1](x)
            x = encode(x)
            nodes[i, 0] = x
        levels = len(self.encoder)
        for j in range(1, levels):
            for i in range(levels - j):
                upsampled = self.nested_up[f"{i}_{j}"](nodes[i + 1, j - 1])
                inputs = [nodes[i, k] for k in range(j)] + [upsampled]
                nodes[i, j] = self.nodes[f"{i}_{j}"](torch.cat(inputs, dim=1))
        logits = self.head(nodes[0, levels - 1])
        return logits[crop] if logits.shape[2:] != size else logits


class ResEncUNet(UNet):
    """Residual-encoder U-Net returning logits.

    Args:
        blocks: residual blocks per encoder level; default ``min(level + 1, 4)`` (1, 2, 3, 4).
        The others: as :class:`UNet` (``residual`` is always on in the encoder).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 levels: int = 4, base_filters: int = 16, growth: float = 2.0,
                 residual: bool = True, norm: str = "instance", dropout: float = 0.0,
                 pooling: Sequence[Sequence[int]] | None = None,
                 blocks: Sequence[int] | None = None) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, levels, base_filters, growth,
                         residual, norm, dropout, pooling)
        blocks = list(blocks) if blocks is not None else [min(i + 1, 4) for i in range(levels)]
        if len(blocks) != levels or min(blocks) < 1:
            raise ValueError(f"blocks must give at least 1 block for each of the {levels} levels, "
                             f"got {blocks}.")
        for i, n in enumerate(blocks):
            extra = [_ConvBlock(spatial_dims, self.filters[i], self.filters[i], residual=True,
                                norm=norm, dropout=dropout) for _ in range(n - 1)]
            self.encoder[i] = nn.Sequential(self.encoder[i], *extra)
        self.apply(_init_weights)
