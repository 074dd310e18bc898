"""A 2D/3D U-Net with optional residual blocks and per-axis (anisotropic) pooling.

The network is built from plain constructor values only, so a model file that stores those
values rebuilds it. It returns logits: softmax/sigmoid belong to the loss and to inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "group", "batch", "none")
MAX_FILTERS = 320

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def anisotropic_pooling(voxel_size: Sequence[float], levels: int) -> tuple[tuple[int, ...], ...]:
    """Per-axis pooling factors for anisotropic voxels, in the manner of nnU-Net.

    At each level an axis is pooled (factor 2) iff its current spacing is below twice the
    smallest current spacing; pooling an axis doubles its spacing.

    Args:
        voxel_size: Physical voxel spacing per spatial axis, e.g. ``(Z, Y, X) = (3, 1, 1)``.
        levels: Number of resolution levels of the U-Net (at least 1).

    Returns:
        ``levels - 1`` tuples with one factor (1 or 2) per axis, e.g.
        ``((1, 2, 2), (2, 2, 2))`` for ``voxel_size=(3, 1, 1)`` and ``levels=3``.
    """
    spacing = [float(s) for s in voxel_size]
    if not spacing or min(spacing) <= 0:
        raise ValueError(
            f"voxel_size must be positive numbers, one per axis, got {tuple(voxel_size)}."
        )
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}.")
    factors = []
    for _ in range(levels - 1):
        smallest = min(spacing)
        level = tuple(2 if s < 2 * smallest else 1 for s in spacing)
        spacing = [s * f for s, f in zip(spacing, level)]
        factors.append(level)
    return tuple(factors)


def _make_norm(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """One normalisation layer for ``channels`` feature maps."""
    if norm == "instance":
        return _INSTANCE_NORM[spatial_dims](channels, affine=True)
    if norm == "group":
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "batch":
        return _BATCH_NORM[spatial_dims](channels)
    return nn.Identity()


class _ConvBlock(nn.Module):
    """Two 3x3(x3) conv + norm + LeakyReLU, optionally residual, optionally followed by dropout.

    Maps ``(B, in_channels, *S)`` to ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 residual: bool, norm: str, dropout: float) -> None:
        super().__init__()
        conv, bias = _CONV[spatial_dims], norm == "none"
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm1 = _make_norm(norm, spatial_dims, out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = _make_norm(norm, spatial_dims, out_channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.residual = residual
        self.skip = (conv(in_channels, out_channels, 1, bias=False)
                     if residual and in_channels != out_channels else nn.Identity())
        self.dropout = _DROPOUT[spatial_dims](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.residual:
            out = out + self.skip(x)
        return self.dropout(self.act(out))


class UNet(nn.Module):
    """U-Net for 2D or 3D images, returning logits.

    Args:
        spatial_dims: 2 for ``(B, C, Y, X)`` input, 3 for ``(B, C, Z, Y, X)``.
        in_channels: Channels of the input image.
        out_channels: Channels of the output logits (classes).
        levels: Number of resolution levels (at least 1; 1 means no pooling).
        base_filters: Feature maps at the first level.
        growth: Factor by which feature maps grow per level; capped at 320.
        residual: Use residual blocks (1x1 projection when channels change).
        norm: One of ``"instance"``, ``"group"``, ``"batch"``, ``"none"``.
        dropout: Channel dropout probability after each block (0 disables it).
        pooling: ``levels - 1`` per-axis factors (each 1 or 2), e.g. ``((1, 2, 2), (2, 2, 2))``
            for data coarser along Z; ``None`` pools every axis by 2 at every level.

    Any spatial size is accepted: the input is padded (replicate) to a multiple of
    :attr:`divisor` and the logits are cropped back to the input size.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 levels: int = 4, base_filters: int = 16, growth: float = 2.0,
                 residual: bool = True, norm: str = "instance", dropout: float = 0.0,
                 pooling: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        _check_arguments(spatial_dims, in_channels, out_channels, levels, base_filters, norm,
                         dropout)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pooling = _check_pooling(pooling, levels, spatial_dims)
        self.filters = tuple(min(MAX_FILTERS, max(1, round(base_filters * growth**i)))
                             for i in range(levels))
        block = dict(residual=residual, norm=norm, dropout=dropout)
        conv, up = _CONV[spatial_dims], _CONV_TRANSPOSE[spatial_dims]
        f = self.filters

        self.encoder = nn.ModuleList([_ConvBlock(spatial_dims, in_channels, f[0], **block)])
        self.down = nn.ModuleList()
        for i, factor in enumerate(self.pooling):
            self.down.append(conv(f[i], f[i + 1], factor, stride=factor, bias=False))
            self.encoder.append(_ConvBlock(spatial_dims, f[i + 1], f[i + 1], **block))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, factor in enumerate(self.pooling):
            self.up.append(up(f[i + 1], f[i], factor, stride=factor, bias=False))
            self.decoder.append(_ConvBlock(spatial_dims, 2 * f[i], f[i], **block))
        self.head = conv(f[0], out_channels, 1)
        self.apply(_init_weights)

    @property
    def divisor(self) -> tuple[int, ...]:
        """Per-axis product of the pooling factors; padded input sizes are multiples of it."""
        return tuple(math.prod(axis) for axis in zip(*self.pooling)) or (1,) * self.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images.

        Args:
            x: Images of shape ``(B, in_channels, *S)`` with ``S`` = ``(Z, Y, X)`` or ``(Y, X)``.

        Returns:
            Logits of shape ``(B, out_channels, *S)``.
        """
        self._check_input(x)
        size = tuple(x.shape[2:])
        x, crop = _pad_to_multiple(x, self.divisor)
        skips = []
        for i, encode in enumerate(self.encoder):
            if i > 0:
                x = self.down[i - 1](x)
            x = encode(x)
            skips.append(x)
        for i in reversed(range(len(self.decoder))):
            x = self.up[i](x)
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
        logits = self.head(x)
        return logits[crop] if logits.shape[2:] != size else logits

    def _check_input(self, x: torch.Tensor) -> None:
        expected = self.spatial_dims + 2
        if x.ndim != expected or x.shape[1] != self.in_channels:
            axes = "(B, C, Z, Y, X)" if self.spatial_dims == 3 else "(B, C, Y, X)"
            raise ValueError(
                f"UNet expects input of shape {axes} with C={self.in_channels}, "
                f"got shape {tuple(x.shape)}; add the batch and channel axes or check in_channels."
            )


def _pad_to_multiple(x: torch.Tensor, divisor: Sequence[int]) -> tuple[torch.Tensor, tuple]:
    """Pad the spatial axes of ``x`` (replicate, centred) up to multiples of ``divisor``.

    Args:
        x: Tensor of shape ``(B, C, *S)``.
        divisor: One positive integer per spatial axis.

    Returns:
        The padded tensor ``(B, C, *S_padded)`` and the index that crops it back to ``S``.
    """
    size = x.shape[2:]
    totals = [max(d, math.ceil(s / d) * d) - s for s, d in zip(size, divisor)]
    if not any(totals):
        return x, (Ellipsis,)
    before = [t // 2 for t in totals]
    pad = []
    for t, b in zip(reversed(totals), reversed(before)):
        pad += [b, t - b]
    crop = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(before, size))
    return F.pad(x, pad, mode="replicate"), crop


def _init_weights(module: nn.Module) -> None:
    """He initialisation for LeakyReLU networks, as in nnU-Net."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_arguments(spatial_dims: int, in_channels: int, out_channels: int, levels: int,
                     base_filters: int, norm: str, dropout: float) -> None:
    """Raise a ValueError that names the first invalid constructor argument."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if min(in_channels, out_channels, levels, base_filters) < 1:
        raise ValueError(
            "in_channels, out_channels, levels and base_filters must all be at least 1."
        )
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; valid: {', '.join(NORMS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


def _check_pooling(pooling: Sequence[Sequence[int]] | None, levels: int,
                   spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """Validate ``pooling`` (lists from a saved config are fine) and return it as tuples."""
    if pooling is None:
        return ((2,) * spatial_dims,) * (levels - 1)
    result = tuple(tuple(int(f) for f in level) for level in pooling)
    if len(result) != levels - 1:
        raise ValueError(
            f"pooling must have levels - 1 = {levels - 1} entries, got {len(result)}."
        )
    for level in result:
        if len(level) != spatial_dims or any(f not in (1, 2) for f in level):
            raise ValueError(
                f"Each pooling entry needs {spatial_dims} factors of 1 or 2, one per spatial axis; "
                f"got {level}."
            )
    return result
