"""Lazy views of an image source that read only what is indexed."""

from __future__ import annotations

import numpy as np


def as_array(part) -> np.ndarray:
    """A read part of a source as numpy; a dask array is computed in the calling thread (for
    the small reads of the forest its thread pool costs more than it gives)."""
    compute = getattr(part, "compute", None)
    if compute is not None and type(part).__module__.startswith("dask"):
        return np.asarray(compute(scheduler="synchronous"))
    return np.asarray(part)


class RegionView:
    """A ``(C, z, y, x)`` view of one region of a ``(C, Z, Y, X)`` source."""

    def __init__(self, source, region: tuple[slice, slice, slice]) -> None:
        self.source, self.region = source, region
        self.shape = (source.shape[0],) + tuple(s.stop - s.start for s in region)

    def __getitem__(self, key):
        ch, *spatial = key
        inner = tuple(slice(r.start + k.start, r.start + k.stop) for r, k in zip(self.region, spatial))
        return self.source[(ch,) + inner]


class ChannelView:
    """A ``(1, Z, Y, X)`` view of a lazy 3D source, reading only what is indexed."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape = (1,) + tuple(source.shape)

    def __getitem__(self, key):
        return as_array(self.source[key[1:]])[None] if isinstance(key, tuple) else \
            as_array(self.source[:])[None][key]
