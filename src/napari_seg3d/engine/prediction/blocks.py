"""Blocks of a volume for prediction that never holds the whole volume in memory.

A volume is cut into blocks (cores that tile it once). A block's prediction blends exactly the
windows of the whole volume's sliding-window grid that touch its core, read with the halo those
windows need, so predicting block by block (in any order, on any machine) gives the same result
as predicting the whole volume at once. Within a block, the windows are visited z-major, so only
the z-rows in flight are held (see :mod:`.predict`): memory depends on the block's Y and X size,
not on the volume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .windows import Window, pad_for_window, padded_shape, window_starts

Normalize = Callable[[np.ndarray], np.ndarray]

#: Block cores used by the command line and batch prediction of files: big enough that the halo
#: costs little compute, small enough that a block's buffers stay in the tens of megabytes.
DEFAULT_BLOCK_SHAPE = (256, 256, 256)


@dataclass(frozen=True)
class Block:
    """One block of a volume.

    Attributes:
        index: Position in the plan (0-based).
        core: The region of the volume this block predicts (tiles the volume with the others).
        starts: Per axis, the starts of the whole volume's windows that touch ``core``, in the
            coordinates of the volume padded to the patch (see `pad_for_window`).
        patch: The window size.
    """

    index: int
    core: Window
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    patch: tuple[int, int, int]

    @property
    def windows(self) -> list[Window]:
        """The windows of the block, z-major (made on demand: a plan stays small)."""
        return [tuple(slice(s, s + p) for s, p in zip(corner, self.patch))  # type: ignore[misc]
                for corner in itertools.product(*self.starts)]

    @property
    def n_windows(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    @property
    def read(self) -> Window:
        """The bounding box of the windows: what the block reads (padded coordinates)."""
        return tuple(slice(s[0], s[-1] + p) for s, p in zip(self.starts, self.patch))  # type: ignore


def plan_blocks(shape: Sequence[int], patch_size: Sequence[int], overlap: float,
                block_shape: Sequence[int] | None = None,
                first_region: Window | None = None) -> list[Block]:
    """Cut a spatial ``shape`` into blocks of at most ``block_shape`` (None: one block).

    Each axis is split into ``ceil(size / block)`` nearly equal parts. Blocks come z-major.

    With ``first_region`` (e.g. the slice on screen), its first z slice becomes a slab of blocks
    of its own (one slice thick: its windows are those of about two rows), and the plan is
    reordered: first that slab's blocks (nearest to the region's y/x centre first), so the
    whole slice is done before anything else, then the others nearest first. The result of the
    prediction does not depend on the cuts or the order.
    """
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch_size)
    full = padded_shape(shape, patch)
    starts = [window_starts(f, p, overlap) for f, p in zip(full, patch)]
    block = tuple(int(b) for b in (block_shape or shape))
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"block_shape must be three positive integers (z, y, x), got {block}.")
    per_axis = [_axis_parts(size, b, axis_starts, p)
                for size, b, axis_starts, p in zip(shape, block, starts, patch)]
    if first_region is not None:
        z0 = int(np.clip(first_region[0].start or 0, 0, shape[0] - 1))
        per_axis[0] = [part for lo, hi in ((0, z0), (z0, z0 + 1), (z0 + 1, shape[0])) if hi > lo
                       for part in _axis_parts(hi - lo, block[0], [s - lo for s in starts[0]],
                                               patch[0], offset=lo)]
    cells = list(itertools.product(*per_axis))
    if first_region is not None:
        cells.sort(key=lambda cell: _nearness(cell, z0, first_region, shape))
    return [Block(index, tuple(core for core, _ in parts),  # type: ignore[arg-type]
                  tuple(tuple(s) for _, s in parts), patch)  # type: ignore[arg-type]
            for index, parts in enumerate(cells)]


def _nearness(cell, z0: int, region: Window, shape) -> tuple[int, float]:
    """Sort key: the z-gap between a block's core and slice ``z0`` (0 for the blocks that
    start there), then the y/x distance from the core's centre to the region's centre."""
    core = [c for c, _ in cell]
    gap = 0 if core[0].start == z0 else (z0 - core[0].stop + 1 if core[0].stop <= z0
                                          else core[0].start - z0)
    centre = [(_start(r, 0) + _stop(r, n)) / 2 for r, n in zip(region[1:], shape[1:])]
    mid = [(c.start + c.stop) / 2 for c in core[1:]]
    return gap, float(np.hypot(mid[0] - centre[0], mid[1] - centre[1]))


def _start(s: slice, default: int) -> int:
    return default if s.start is None else int(s.start)


def _stop(s: slice, default: int) -> int:
    return default if s.stop is None else int(s.stop)


def _axis_parts(size: int, block: int, starts: list[int], patch: int,
                offset: int = 0) -> list[tuple[slice, list]]:
    """``(core, window starts touching it)`` for each part of one axis (of ``size`` voxels from
    ``offset``; ``starts`` relative to ``offset``, returned absolute)."""
    n = -(-size // block)
    edges = [round(i * size / n) for i in range(n + 1)]
    return [(slice(a + offset, b + offset), [s + offset for s in starts if s < b and s + patch > a])
            for a, b in itertools.pairwise(edges)]


def read_region(source: Any, region: Window, shape: Sequence[int], patch_size: Sequence[int],
                normalize: Normalize | None = None) -> np.ndarray:
    """Read ``region`` (padded coordinates) of a ``(C, Z, Y, X)`` array-like as float32.

    ``source`` may be a numpy array, a memmap, an h5py or zarr array: only the region is read.
    Axes shorter than the patch are read whole and padded by reflection, as `pad_for_window`
    pads the whole volume. ``normalize`` maps the ``(C, z, y, x)`` data read to float32.
    """
    clipped = tuple(slice(r.start, min(r.stop, s)) for r, s in zip(region, shape))
    data = np.asarray(source[(slice(None), *clipped)])
    data = normalize(data) if normalize is not None else data.astype(np.float32, copy=False)
    short = tuple(r.stop - r.start if s < p else 1 for r, s, p in zip(region, shape, patch_size))
    if any(s < p for s, p in zip(shape, patch_size)):
        data, _ = pad_for_window(data, short)
    return data
