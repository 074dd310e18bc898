"""Intensity normalisation: robust per-channel percentiles, stored in the model file and applied
identically in training and prediction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AnnotationError


@dataclass(frozen=True)
class Normalization:
    """Per-channel robust intensity range, stored in the model file and applied identically
    at training and prediction: ``(x - low) / (high - low)``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``(C, ...)`` data to float32."""
        low = np.asarray(self.low, np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        high = np.asarray(self.high, np.float32).reshape(low.shape)
        out = (np.asarray(x, np.float32) - low) / np.maximum(high - low, 1e-6)
        if not np.isfinite(out).all():  # NaN/Inf voxels would poison the loss and predictions
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(float(v) for v in d["low"]), tuple(float(v) for v in d["high"]))


def compute_normalization(image, *, percentiles=(0.5, 99.5), max_voxels=2_000_000,
                          seed: int = 0) -> Normalization:
    """Robust percentiles of each channel of a ``(C, Z, Y, X)`` image, read from at most
    ``max_voxels`` voxels of evenly spaced z-slices (lazy sources read only those slices)."""
    c, z = image.shape[0], image.shape[1]
    per_slice = max(1, int(np.prod(image.shape[2:])))
    n_slices = int(np.clip(max_voxels // per_slice, 1, z))
    zs = np.unique(np.linspace(0, z - 1, n_slices).round().astype(int))
    lows, highs = [], []
    for ch in range(c):
        values = np.concatenate([np.asarray(image[ch, zi], np.float64).ravel() for zi in zs])
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise AnnotationError("The image holds no finite value (all NaN or Inf).")
        lo, hi = np.percentile(finite, percentiles)
        lows.append(float(lo))
        highs.append(float(hi) if hi > lo else float(lo) + 1.0)
    return Normalization(tuple(lows), tuple(highs))


def has_finite_value(image) -> bool:
    """Whether a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` image holds a finite voxel. Any array-like
    (memmap, h5py dataset) is read one z-slice at a time, up to the first slice with a finite
    voxel: one slice for a usual image, all of them only when it is all NaN or Inf."""
    shape = tuple(np.shape(image)) if not hasattr(image, "shape") else tuple(image.shape)
    if np.dtype(getattr(image, "dtype", np.float64)).kind not in "fc" or 0 in shape:
        return True
    for z in range(shape[-3]):
        if np.isfinite(np.asarray(image[(slice(None),) * (len(shape) - 3) + (z,)])).any():
            return True
    return False
