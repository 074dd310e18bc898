"""The pre-processing of another tool's package as napari-seg3d applies it: one affine map per
channel, ``x -> (x - center) / scale``, fixed (``scale_linear``,
``fixed_zero_mean_unit_variance``) or computed from each image before it is predicted
(``zero_mean_unit_variance``, ``scale_range``), so the sliding window normalises every window
of an image alike, as bioimage.io normalises the whole image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelFileError

SUPPORTED = ("scale_linear", "fixed_zero_mean_unit_variance", "zero_mean_unit_variance",
             "scale_range")
MAX_VOXELS = 2**24  # statistics of larger images come from evenly spaced z-slices


@dataclass(frozen=True)
class ChannelAffine:
    """Per-channel ``x -> (x - center) / scale``; applied like :class:`..normalization.Normalization`."""

    center: tuple[float, ...]
    scale: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``(C, ...)`` data to float32 (NaN and Inf voxels become 0)."""
        shape = (-1,) + (1,) * (np.ndim(x) - 1)
        center = np.asarray(self.center, np.float32).reshape(shape)
        scale = np.asarray(self.scale, np.float32).reshape(shape)
        out = (np.asarray(x, np.float32) - center) / scale
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def to_dict(self) -> dict:
        return {"center": list(self.center), "scale": list(self.scale)}


@dataclass(frozen=True)
class ImageStatistics:
    """Pre-processing from statistics of the image itself: ``"mean_std"``
    (``(x - mean) / (std + eps)``) or ``"percentiles"``
    (``(x - p_low) / (p_high - p_low + eps)``), per channel or over all channels (``joint``)."""

    kind: str
    channels: int
    joint: bool = False
    eps: float = 1e-6
    percentiles: tuple[float, float] = (0.0, 100.0)

    def affine(self, image) -> ChannelAffine:
        """The map for one image ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (any array-like; larger than
        :data:`MAX_VOXELS` a channel, read from evenly spaced z-slices)."""
        groups = [_values(image, range(self.channels))] if self.joint else [
            _values(image, [c]) for c in range(self.channels)]
        centers, scales = [], []
        for values in groups:
            if self.kind == "mean_std":
                low, spread = float(values.mean()), float(values.std())
            else:
                low, high = np.percentile(values, self.percentiles)
                low, spread = float(low), float(high - low)
            centers.append(low)
            scales.append(spread + self.eps)
        if self.joint:
            centers, scales = centers * self.channels, scales * self.channels
        return ChannelAffine(tuple(centers), tuple(scales))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "joint": self.joint, "eps": self.eps,
                "percentiles": list(self.percentiles)}


def _values(image, channels) -> np.ndarray:
    """The finite float64 values of ``channels`` of ``image``."""
    shape = tuple(image.shape)
    z = shape[-3]
    per_slice = max(1, int(np.prod(shape[-2:])))
    n = int(np.clip(MAX_VOXELS // per_slice, 1, z))
    zs = np.unique(np.linspace(0, z - 1, n).round().astype(int))
    parts = []
    for c in channels:
        for zi in zs:
            index = (zi,) if len(shape) == 3 else (c, zi)
            parts.append(np.asarray(image[index], np.float64).ravel())
    values = np.concatenate(parts)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("The image holds no finite value (all NaN or Inf).")
    return values


def normalization_of(ops, channels: int, name: str):
    """The :class:`ChannelAffine` or :class:`ImageStatistics` of a package input's
    pre-processing ``ops`` (bioimage.io 0.5 descriptions), or raise a sentence for steps
    napari-seg3d does not apply. ``ensure_dtype`` to a float type is allowed anywhere."""
    steps = [op for op in ops if op.id != "ensure_dtype"]
    for op in ops:
        if op.id == "ensure_dtype" and op.kwargs.dtype not in ("float32", "float64"):
            raise _unfit(name, f"its pre-processing casts the image to {op.kwargs.dtype}")
    unknown = [op.id for op in steps if op.id not in SUPPORTED]
    if unknown:
        raise _unfit(name, f"its pre-processing '{unknown[0]}' is not one napari-seg3d applies "
                     f"({', '.join(SUPPORTED)})")
    if len(steps) > 1:
        raise _unfit(name, f"its pre-processing has {len(steps)} steps "
                     f"({', '.join(op.id for op in steps)}); napari-seg3d applies one")
    if not steps:
        return ChannelAffine((0.0,) * channels, (1.0,) * channels)
    op = steps[0]
    if op.id in ("scale_linear", "fixed_zero_mean_unit_variance"):
        return _fixed(op, channels, name)
    kw = op.kwargs
    axes = None if kw.axes is None else {str(a) for a in kw.axes}
    if axes is not None and not {"z", "y", "x"} <= axes:
        raise _unfit(name, f"its {op.id} normalises along {sorted(axes)} only, not over "
                     "the whole volume")
    if op.id == "scale_range" and kw.reference_tensor is not None:
        raise _unfit(name, "its scale_range takes its range from another tensor")
    joint = axes is None or "channel" in axes
    if op.id == "zero_mean_unit_variance":
        return ImageStatistics("mean_std", channels, joint, float(kw.eps))
    return ImageStatistics("percentiles", channels, joint, float(kw.eps),
                           (float(kw.min_percentile), float(kw.max_percentile)))


def _fixed(op, channels: int, name: str) -> ChannelAffine:
    kw = op.kwargs
    axis = getattr(kw, "axis", None)
    if axis is not None and str(axis) != "channel":
        raise _unfit(name, f"its {op.id} varies along the axis '{axis}', not the channels")
    if op.id == "scale_linear":
        gain, offset = _per_channel(kw.gain, channels, name), _per_channel(kw.offset, channels, name)
        if any(g == 0 for g in gain):
            raise _unfit(name, "its scale_linear multiplies the image by 0")
        return ChannelAffine(tuple(-o / g for g, o in zip(gain, offset)),
                             tuple(1.0 / g for g in gain))
    mean, std = _per_channel(kw.mean, channels, name), _per_channel(kw.std, channels, name)
    return ChannelAffine(tuple(mean), tuple(s + 1e-6 for s in std))  # bioimageio.core's eps


def _per_channel(value, channels: int, name: str) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise _unfit(name, f"its pre-processing has {len(values)} values for {channels} channels")
    return values


def _unfit(name: str, reason: str) -> ModelFileError:
    return ModelFileError(f"{name} does not fit napari-seg3d: {reason}.")
