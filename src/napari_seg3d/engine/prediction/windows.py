"""Sliding-window geometry: window starts, padding and blending weights.

Small pure functions on spatial shapes ``(Z, Y, X)``. Padding works on numpy arrays of shape
``(Z, Y, X)`` or ``(C, Z, Y, X)`` (any leading axes): the spatial axes are always the last
three. The windows of a volume are those of its blocks (see :func:`.blocks.plan_blocks`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

Window = tuple[slice, slice, slice]
PadWidth = tuple[tuple[int, int], ...]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start coordinates of the windows along one axis.

    Windows advance by ``max(1, int(patch * (1 - overlap)))``; the last window is flush with the
    border (it starts at ``size - patch``). An axis no longer than the patch has one window at 0.

    Args:
        size: Length of the axis.
        patch: Length of the window along the axis.
        overlap: Fraction of the window shared with the next one, in ``[0, 1)``.

    Returns:
        Increasing start coordinates, without duplicates.

    Raises:
        ValueError: If ``overlap`` is outside ``[0, 1)`` or a length is not positive.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if size < 1 or patch < 1:
        raise ValueError(f"Axis size and patch size must be positive, got {size} and {patch}.")
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    return [*range(0, size - patch, step), size - patch]


def padded_shape(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Spatial shape after padding every axis up to at least the patch.

    Args:
        shape: Spatial shape ``(Z, Y, X)``.
        patch_size: Window size ``(z, y, x)``.

    Returns:
        ``(max(Z, z), max(Y, y), max(X, x))``.
    """
    _check_patch_size(patch_size)
    if len(shape) != 3:
        raise ValueError(f"Expected a spatial shape (Z, Y, X), got {tuple(shape)}.")
    return tuple(max(int(s), int(p)) for s, p in zip(shape, patch_size))  # type: ignore[return-value]


def pad_for_window(volume: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, PadWidth]:
    """Pad the spatial axes (the last three) at their end so that each is at least the patch.

    The pad mirrors without repeating the edge (``numpy.pad`` ``"reflect"``); a length-1 axis
    repeats its single value. A volume that needs no padding is returned unchanged (not copied).

    Args:
        volume: Array of shape ``(..., Z, Y, X)``, e.g. ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        patch_size: Window size ``(z, y, x)``.

    Returns:
        The padded volume and the ``(before, after)`` pad of every axis of ``volume`` (leading
        axes get ``(0, 0)``; ``before`` is always 0).

    Raises:
        ValueError: On a volume with fewer than three axes.
    """
    if volume.ndim < 3:
        raise ValueError(f"Expected a volume (..., Z, Y, X), got shape {tuple(volume.shape)}.")
    spatial = tuple(volume.shape[-3:])
    after = [p - s for p, s in zip(padded_shape(spatial, patch_size), spatial)]
    pad_width: PadWidth = tuple([(0, 0)] * (volume.ndim - 3) + [(0, a) for a in after])
    if not any(after):
        return volume, pad_width
    return np.pad(volume, pad_width, mode="reflect"), pad_width


def gaussian_weights(
    patch_size: Sequence[int],
    sigma_scale: float = 0.125,
    min_weight: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian importance map that favours window centres when blending overlaps.

    The Gaussian is centred on the window and has ``sigma = sigma_scale * size`` per axis; it is
    normalised to a maximum of 1 and clamped below at ``min_weight`` so that no voxel has zero
    weight (border voxels are then still defined).

    Args:
        patch_size: Window size ``(z, y, x)``.
        sigma_scale: Standard deviation as a fraction of the window size.
        min_weight: Smallest weight, relative to the maximum of 1.
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        Weights of shape ``(z, y, x)``, symmetric about the window centre.
    """
    _check_patch_size(patch_size)
    axes = []
    for size in patch_size:
        coords = torch.arange(int(size), dtype=torch.float64) - (int(size) - 1) / 2.0
        sigma = max(sigma_scale * int(size), 1e-6)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = (weights / weights.max()).clamp_min(min_weight)
    return weights.to(dtype=dtype, device=device)


def constant_weights(
    patch_size: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform blending weights: overlapping windows are averaged.

    Args:
        patch_size: Window size ``(z, y, x)``.
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        Ones of shape ``(z, y, x)``.
    """
    _check_patch_size(patch_size)
    return torch.ones(tuple(int(p) for p in patch_size), dtype=dtype, device=device)


def _check_patch_size(patch_size: Sequence[int]) -> None:
    if len(patch_size) != 3 or min(int(p) for p in patch_size) < 1:
        raise ValueError(
            f"patch_size must be three positive integers (z, y, x), got {tuple(patch_size)}."
        )
