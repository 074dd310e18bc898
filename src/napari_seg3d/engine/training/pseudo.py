"""Self-training targets on some regions of the volume, held sparsely: memory follows the
regions predicted in a round, not the volume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_CENTRES = 50_000  # per class: patch centres drawn from pseudo-labelled voxels

Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PseudoLabels:
    """Class index + 1 where the network was sure, 0 elsewhere, on ``regions`` of the volume.

    Attributes:
        regions: where pseudo-labels were made, ``(z, y, x)`` slices of the volume.
        labels: one ``int8`` array per region, of the region's shape.
        centres: per class, ``(N, 3)`` int32 volume coordinates of (at most
            :data:`MAX_CENTRES`) pseudo-labelled voxels, where patches are centred.
    """

    regions: tuple[Region, ...]
    labels: tuple[np.ndarray, ...]
    centres: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, regions: Sequence[Region], labels: Sequence[np.ndarray], n_classes: int,
              seed: int = 0) -> PseudoLabels:
        """Pseudo-labels of ``regions``, with patch centres subsampled per class by ``seed``."""
        rng = np.random.default_rng([seed, 7])
        labels = tuple(np.asarray(lab, np.int8) for lab in labels)
        centres = []
        for k in range(n_classes):
            found = []
            for region, lab in zip(regions, labels):
                coords = np.argwhere(lab == k + 1).astype(np.int32)
                found.append(coords + np.array([r.start for r in region], np.int32))
            coords = np.concatenate(found) if found else np.zeros((0, 3), np.int32)
            if len(coords) > MAX_CENTRES:
                coords = coords[np.sort(rng.choice(len(coords), MAX_CENTRES, replace=False))]
            centres.append(coords)
        return cls(tuple(regions), labels, tuple(centres))

    @classmethod
    def from_volume(cls, pseudo: np.ndarray, n_classes: int, seed: int = 0) -> PseudoLabels:
        """One region, the whole ``(Z, Y, X)`` volume."""
        region = tuple(slice(0, n) for n in pseudo.shape)
        return cls.build([region], [pseudo], n_classes, seed)

    @property
    def voxels(self) -> int:
        return int(sum(lab.size for lab in self.labels))

    def read(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """The ``int8`` pseudo-labels of the box at ``start`` of ``size`` (0 outside the
        regions, and outside the volume)."""
        out = np.zeros(tuple(size), np.int8)
        for region, lab in zip(self.regions, self.labels):
            src, dst = [], []
            for r, s, n in zip(region, start, size):
                lo, hi = max(r.start, s), min(r.stop, s + n)
                if hi <= lo:
                    break
                src.append(slice(lo - r.start, hi - r.start))
                dst.append(slice(lo - s, hi - s))
            else:
                out[tuple(dst)] = lab[tuple(src)]
        return out

    def dense(self, shape: Sequence[int]) -> np.ndarray:
        """The pseudo-labels as one ``(Z, Y, X)`` array (for small volumes and tests)."""
        return self.read((0, 0, 0), shape)
