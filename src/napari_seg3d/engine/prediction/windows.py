"""Sliding-window geometry: window starts, padding and blending weights.

Small pure functions on spatial shapes ``(Z, Y, X)``. Padding works on numpy arrays and torch
tensors of shape ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (any leading axes): the spatial axes are always
the last three.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Window = tuple[slice, slice, slice]
PadWidth = tuple[tuple[int, int], ...]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

PAD_MODES = ("reflect", "constant")


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


def window_positions(
    shape: Sequence[int], patch_size: Sequence[int], overlap: float
) -> list[Window]:
    """All windows covering a spatial shape, z-major (sorted by z, then y, then x start).

    Axes shorter than the patch are taken as padded to the patch (see `pad_for_window`).

    Args:
        shape: Spatial shape ``(Z, Y, X)`` of the volume.
        patch_size: Window size ``(z, y, x)``.
        overlap: Fraction of overlap between neighbouring windows, in ``[0, 1)``.

    Returns:
        One ``(slice_z, slice_y, slice_x)`` per window, in the padded volume's coordinates.
    """
    full = padded_shape(shape, patch_size)
    starts = [window_starts(s, int(p), overlap) for s, p in zip(full, patch_size)]
    return [
        tuple(slice(s, s + int(p)) for s, p in zip(corner, patch_size))  # type: ignore[misc]
        for corner in itertools.product(*starts)
    ]


def pad_for_window(
    volume: ArrayT, patch_size: Sequence[int], mode: str = "reflect"
) -> tuple[ArrayT, PadWidth]:
    """Pad the spatial axes (the last three) at their end so that each is at least the patch.

    ``"reflect"`` mirrors without repeating the edge, like `numpy.pad`; a length-1 axis repeats
    its single value. ``"constant"`` pads with zeros. A volume that needs no padding is returned
    unchanged (not copied).

    Args:
        volume: Array or tensor of shape ``(..., Z, Y, X)``, e.g. ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        patch_size: Window size ``(z, y, x)``.
        mode: ``"reflect"`` or ``"constant"``.

    Returns:
        The padded volume (same type, dtype and device) and the ``(before, after)`` pad of every
        axis of ``volume`` (leading axes get ``(0, 0)``), to pass to `crop_padding`.

    Raises:
        ValueError: On an unknown mode or a volume with fewer than three axes.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"Unknown padding mode {mode!r}; choose one of {', '.join(PAD_MODES)}.")
    if volume.ndim < 3:
        raise ValueError(f"Expected a volume (..., Z, Y, X), got shape {tuple(volume.shape)}.")
    spatial = tuple(volume.shape[-3:])
    after = [p - s for p, s in zip(padded_shape(spatial, patch_size), spatial)]
    pad_width: PadWidth = tuple([(0, 0)] * (volume.ndim - 3) + [(0, a) for a in after])
    if not any(after):
        return volume, pad_width
    if isinstance(volume, torch.Tensor):
        return _pad_tensor(volume, after, mode), pad_width
    if mode == "constant":
        return np.pad(volume, pad_width, mode="constant"), pad_width
    return np.pad(volume, pad_width, mode="reflect"), pad_width


def crop_padding(array: ArrayT, pad_width: Sequence[tuple[int, int]]) -> ArrayT:
    """Undo `pad_for_window`: cut the pads off.

    Args:
        array: Padded array or tensor. ``pad_width`` applies to its last ``len(pad_width)`` axes,
            so the pads of a ``(C, Z, Y, X)`` volume also crop its ``(K, Z, Y, X)`` prediction.
        pad_width: ``(before, after)`` per axis, as returned by `pad_for_window`.

    Returns:
        A view of ``array`` without the padding.
    """
    if len(pad_width) > array.ndim:
        raise ValueError(f"pad_width has {len(pad_width)} axes but the array only {array.ndim}.")
    lead = (slice(None),) * (array.ndim - len(pad_width))
    crop = tuple(slice(b, n - a) for (b, a), n in zip(pad_width, array.shape[-len(pad_width):]))
    return array[lead + crop]


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


def _pad_tensor(volume: torch.Tensor, after: Sequence[int], mode: str) -> torch.Tensor:
    """Pad the last three axes of a tensor at their end (``F.pad`` where it can)."""
    pads = (0, after[2], 0, after[1], 0, after[0])  # F.pad lists the last axis first
    if mode == "constant":
        return F.pad(volume, pads, mode="constant", value=0)
    spatial = volume.shape[-3:]
    if volume.is_floating_point() and all(a < s for a, s in zip(after, spatial)):
        flat = volume.reshape(1, -1, *spatial)  # (N, C, Z, Y, X) for the 3D reflection pad
        padded = F.pad(flat, pads, mode="reflect")
        return padded.reshape(*volume.shape[:-3], *padded.shape[-3:])
    # Pads at least as long as the axis (or integer dtypes): reflect repeatedly, as numpy does.
    for axis, (a, s) in enumerate(zip(after, spatial)):
        if a:
            index = _reflect_index(s, a, volume.device)
            volume = volume.index_select(volume.ndim - 3 + axis, index)
    return volume


def _reflect_index(size: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices ``0..size+after-1`` folded back into ``[0, size)`` by repeated reflection."""
    index = torch.arange(size + after, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index % period
    return torch.where(index < size, index, period - index)
