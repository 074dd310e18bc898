"""Random patches read lazily from numpy arrays, memmaps and h5py datasets; sparse labels;
augmentation.

Label 0 means *not annotated*. Painted values (say 1, 2, 7) are mapped to class indices
0..K-1 in sorted order; :class:`AnnotationSet` holds that mapping and the coordinates of every
annotated voxel, split into a training and a held-out validation part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import AnnotationError
from ..normalization import Normalization
from .pseudo import PseudoLabels

_VAL_BLOCK = 8  # edge of the spatial blocks that go wholly to training or to validation


MAX_CLASSES = 64  # more painted values are an image or instances, not a few classes
_SLAB = 1 << 24  # voxels read at a time when scanning large label volumes


def class_values_of(labels: np.ndarray) -> tuple[int, ...]:
    """The painted label values (all but 0), sorted; raises a user-facing error when fewer than
    two or more than :data:`MAX_CLASSES`. Large volumes are scanned slab by slab."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise AnnotationError(f"Annotations must be integer labels, got dtype {labels.dtype}.")
    values = painted_values(labels)
    if values and values[0] < 0:
        raise AnnotationError("Annotations hold negative values; use 0 for not annotated and "
                              "positive values for classes.")
    if not values:
        raise AnnotationError("There are no annotations: paint a few strokes of each class "
                              "(label 0 means not annotated).")
    if len(values) == 1:
        raise AnnotationError(f"Only one class (value {values[0]}) is painted: paint at least "
                              "two classes, for example background and the object.")
    if len(values) > MAX_CLASSES:
        raise AnnotationError(f"The annotations hold {len(values)} different values; at most "
                              f"{MAX_CLASSES} classes can be trained. They look like an instance "
                              "segmentation (one value per object) or an image: paint a few "
                              "classes (0 = not annotated), or choose the annotation layer.")
    return values


def painted_values(labels: np.ndarray) -> tuple[int, ...]:
    """The distinct values other than 0 of integer ``labels``, sorted (a table of seen values
    for 8- and 16-bit unsigned labels, else ``np.unique`` slab by slab)."""
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.size == 0:
        return ()
    small = labels.dtype.kind == "u" and labels.dtype.itemsize <= 2
    seen = np.zeros(1 << (8 * labels.dtype.itemsize), bool) if small else None
    found: set[int] = set()
    flat = labels.reshape(-1)
    for start in range(0, flat.size, _SLAB):
        part = flat[start:start + _SLAB]
        if seen is not None:
            seen[part] = True
        else:
            found.update(int(v) for v in np.unique(part))
    if seen is not None:
        found = {int(v) for v in np.flatnonzero(seen)}
    return tuple(sorted(v for v in found if v != 0))


@dataclass(frozen=True)
class AnnotationSet:
    """An immutable snapshot of sparse annotations as class indices and coordinates.

    ``train_coords[k]`` is an ``(N_k, 3)`` array of annotated voxels of class ``k`` used for
    training; ``val_coords`` likewise for the held-out part (empty when too few annotations).
    """

    class_values: tuple[int, ...]
    index: np.ndarray  # (Z, Y, X) int8: class index + 1, 0 = not annotated; -(k+1) = held out
    train_coords: tuple[np.ndarray, ...]
    val_coords: tuple[np.ndarray, ...]

    @property
    def has_validation(self) -> bool:
        return all(len(c) > 0 for c in self.val_coords)


def make_annotations(labels: np.ndarray, class_values: tuple[int, ...],
                     validation_fraction: float, seed: int) -> AnnotationSet:
    """Map painted values to class indices and hold out whole blocks for validation.

    Validation takes blocks of :data:`_VAL_BLOCK`^3 voxels so held-out voxels are not next to
    training voxels of the same stroke. Each class keeps most of its voxels for training; when a
    class has too few blocks, no validation set is made. Works from the painted voxels only:
    besides the ``int8`` index, nothing the size of the volume is made.
    """
    labels = np.asarray(labels)
    flat = labels.reshape(-1)
    painted = np.concatenate([start + np.flatnonzero(flat[start:start + _SLAB])
                              for start in range(0, flat.size, _SLAB)] or [np.zeros(0, np.int64)])
    values = flat[painted]
    lut_keys = np.asarray(class_values)
    unknown = np.setdiff1d(np.unique(values), lut_keys)
    if unknown.size:
        raise AnnotationError(f"Annotations hold values {unknown.tolist()} that the model does not "
                              f"know (its classes are {list(class_values)}).")
    klass = np.searchsorted(lut_keys, values)  # class index of each painted voxel
    coords = np.stack(np.unravel_index(painted, labels.shape), 1).astype(np.int32)
    held = np.zeros(len(painted), bool)
    if validation_fraction > 0:
        rng = np.random.default_rng(seed)
        blocks = tuple(-(-s // _VAL_BLOCK) for s in labels.shape)
        chosen = rng.random(blocks) < validation_fraction
        held = chosen[tuple((coords // _VAL_BLOCK).T)] if len(coords) else held
    train = [coords[(klass == k) & ~held] for k in range(len(class_values))]
    val = [coords[(klass == k) & held] for k in range(len(class_values))]
    if any(len(t) < max(1, len(v)) for t, v in zip(train, val)) or not all(len(v) for v in val):
        train = [np.concatenate([t, v]) for t, v in zip(train, val)]
        val = [np.zeros((0, 3), np.int32) for _ in val]
    index = np.zeros(labels.shape, np.int8)  # class index + 1; -(k + 1) held out
    for k, (t, v) in enumerate(zip(train, val)):
        index[tuple(t.T)] = k + 1
        if len(v):
            index[tuple(v.T)] = -(k + 1)
    return AnnotationSet(tuple(class_values), index, tuple(train), tuple(val))


def read_patch(source, start: tuple[int, int, int], size: tuple[int, int, int],
               has_channels: bool) -> np.ndarray:
    """Read one patch, reading only that region of a lazy ``source``; pads with zeros where the
    patch passes the border (volumes smaller than the patch)."""
    shape = source.shape[-3:]
    sl = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape))
    block = np.asarray(source[(slice(None),) + sl] if has_channels else source[sl])
    if block.shape[-3:] == tuple(size):
        return block
    out = np.zeros(block.shape[:-3] + tuple(size), block.dtype)
    dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(sl, start))
    out[(Ellipsis,) + dst] = block
    return out


def patch_start(center: np.ndarray, size: tuple[int, int, int], shape: tuple[int, ...],
                rng: np.random.Generator) -> tuple[int, int, int]:
    """A patch corner that contains ``center`` at a random offset and stays inside the volume
    where the volume is large enough."""
    starts = []
    for c, n, d in zip(center, size, shape):
        lo, hi = int(c) - n + 1, int(c)
        s = int(rng.integers(lo, hi + 1))
        starts.append(int(np.clip(s, 0, d - n)) if d >= n else 0)
    return tuple(starts)


@dataclass(frozen=True)
class Batch:
    """A training batch: ``image (B, C, z, y, x)`` float32 normalised, ``target (B, z, y, x)``
    int64 class indices, ``mask (B, z, y, x)`` bool (True where annotated for training)."""

    image: np.ndarray
    target: np.ndarray
    mask: np.ndarray


class PatchSampler:
    """Draws random patches around annotated voxels, balanced over classes, plus a share of
    uniformly random patches. Reads only each patch from ``image``.

    Args:
        image: ``(C, Z, Y, X)`` array, memmap or h5py dataset (``has_channels=True``), or
            ``(Z, Y, X)`` (``has_channels=False``).
        annotations: an :class:`AnnotationSet` snapshot; replace it with :meth:`set_annotations`.
        normalization: applied to every patch.
        patch_size: ``(z, y, x)``.
        random_fraction: share of patches drawn uniformly from the whole volume.
    """

    def __init__(self, image, annotations: AnnotationSet, normalization: Normalization,
                 patch_size: tuple[int, int, int], *, has_channels: bool,
                 random_fraction: float = 0.1) -> None:
        self.image = image
        self.has_channels = has_channels
        self.normalization = normalization
        self.patch_size = tuple(int(p) for p in patch_size)
        self.random_fraction = random_fraction
        self.shape = tuple(image.shape[-3:])
        self._annotations = annotations
        self._pseudo: PseudoLabels | None = None

    def set_pseudo_labels(self, pseudo: PseudoLabels | np.ndarray | None, seed: int = 0) -> None:
        """Targets for voxels without strokes (self-training): :class:`PseudoLabels` of some
        regions (or one ``(Z, Y, X)`` array: class index + 1 where the network was sure, 0
        elsewhere); None removes them. Strokes and held-out voxels always win over
        pseudo-labels. Half the patches are then centred on pseudo-labelled voxels."""
        if isinstance(pseudo, np.ndarray):
            pseudo = PseudoLabels.from_volume(pseudo, len(self._annotations.class_values), seed)
        self._pseudo = pseudo  # one assignment: safe across threads

    def set_annotations(self, annotations: AnnotationSet) -> None:
        """Swap in a new snapshot (one reference assignment, safe across threads)."""
        self._annotations = annotations

    @property
    def annotations(self) -> AnnotationSet:
        return self._annotations

    def _read(self, start, size) -> np.ndarray:
        patch = read_patch(self.image, start, size, self.has_channels)
        if not self.has_channels:
            patch = patch[None]
        patch = self.normalization.apply(patch)
        inside = tuple(slice(max(-s, 0), min(d - s, n)) for s, n, d in zip(start, size, self.shape))
        if any(sl.stop - sl.start < n for sl, n in zip(inside, size)):
            padded = np.zeros_like(patch)  # pad with 0 after normalisation, not normalise(0)
            padded[(slice(None),) + inside] = patch[(slice(None),) + inside]
            patch = padded
        return patch

    def _train_target(self, ann: AnnotationSet, start, size, pseudo) -> tuple[np.ndarray, np.ndarray]:
        idx = read_patch(ann.index, start, size, False)
        mask = idx > 0
        target = np.where(mask, idx - 1, 0).astype(np.int64)
        if pseudo is not None:
            p = pseudo.read(start, size)
            fill = (idx == 0) & (p > 0)
            target[fill] = p[fill] - 1
            mask |= fill
        return target, mask

    def _centre(self, ann: AnnotationSet, pseudo, rng: np.random.Generator) -> np.ndarray:
        """Class-balanced on strokes (or, with pseudo-labels, on them half of the time), or
        anywhere for a ``random_fraction`` of the patches."""
        classes = [k for k, c in enumerate(ann.train_coords) if len(c)]
        if not classes or rng.random() < self.random_fraction:
            return np.array([rng.integers(0, d) for d in self.shape])
        if pseudo is not None and rng.random() < 0.5:
            sure = [c for c in pseudo.centres if len(c)]
            if sure:
                coords = sure[int(rng.integers(len(sure)))]
                return coords[int(rng.integers(len(coords)))]
        coords = ann.train_coords[classes[int(rng.integers(len(classes)))]]
        return coords[int(rng.integers(len(coords)))]

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Draw ``batch_size`` patches; class-balanced centres on annotated voxels."""
        ann, pseudo = self._annotations, self._pseudo
        images, targets, masks = [], [], []
        for _ in range(batch_size):
            center = self._centre(ann, pseudo, rng)
            image, target, mask = self._patch(ann, pseudo, center, rng)
            images.append(image)
            targets.append(target)
            masks.append(mask)
        return Batch(np.stack(images), np.stack(targets), np.stack(masks))

    def _patch(self, ann: AnnotationSet, pseudo, center, rng) -> tuple[np.ndarray, ...]:
        """One training patch ``(image (C, z, y, x), target, mask)`` containing ``center``."""
        start = patch_start(center, self.patch_size, self.shape, rng)
        return (self._read(start, self.patch_size),
                *self._train_target(ann, start, self.patch_size, pseudo))

    def _validation_patch(self, ann: AnnotationSet, center, rng) -> tuple[np.ndarray, ...]:
        start = patch_start(center, self.patch_size, self.shape, rng)
        idx = read_patch(ann.index, start, self.patch_size, False)
        mask = idx < 0
        return self._read(start, self.patch_size), np.where(mask, -idx - 1, 0).astype(np.int64), mask

    def validation_patches(self, max_patches: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Fixed patches around held-out voxels: ``(image (C, z, y, x), target, mask)`` where the
        mask covers held-out voxels only."""
        ann = self._annotations
        if not ann.has_validation:
            return []
        rng = np.random.default_rng(seed)
        out = []
        per_class = max(1, max_patches // len(ann.val_coords))
        for coords in ann.val_coords:
            for i in rng.choice(len(coords), min(per_class, len(coords)), replace=False):
                out.append(self._validation_patch(ann, coords[i], rng))
        return out


class SliceSampler(PatchSampler):
    """2D training slices for a 2D network (2.5D, as volume-segmantics): each patch is a
    ``patch_size[1] x patch_size[2]`` slice along z, y or x (chosen at random per patch) through
    an annotated voxel, so every slice drawn around the strokes holds annotations. Slices come
    in their own frame, ``(C, 1, h, w)``: z-slices as ``(y, x)``, y-slices as ``(z, x)``,
    x-slices as ``(z, y)``. Same arguments as :class:`PatchSampler`."""

    def _slice_size(self, axis: int) -> tuple[int, int, int]:
        size = list(self.patch_size[1:])
        size.insert(axis, 1)
        return tuple(size)

    def _patch(self, ann: AnnotationSet, pseudo, center, rng) -> tuple[np.ndarray, ...]:
        axis = int(rng.integers(3))
        size = self._slice_size(axis)
        start = patch_start(center, size, self.shape, rng)
        image = self._read(start, size)
        target, mask = self._train_target(ann, start, size, pseudo)
        return to_slice_frame(image, target, mask, axis)

    def _validation_patch(self, ann: AnnotationSet, center, rng) -> tuple[np.ndarray, ...]:
        axis = int(rng.integers(3))
        size = self._slice_size(axis)
        start = patch_start(center, size, self.shape, rng)
        idx = read_patch(ann.index, start, size, False)
        mask = idx < 0
        target = np.where(mask, -idx - 1, 0).astype(np.int64)
        return to_slice_frame(self._read(start, size), target, mask, axis)


def to_slice_frame(image: np.ndarray, target: np.ndarray, mask: np.ndarray,
                   axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move the one-voxel ``axis`` (0 = z, 1 = y, 2 = x) of a slice to the front:
    ``image (C, z, y, x)`` and ``target``, ``mask`` ``(z, y, x)`` become ``(C, 1, h, w)`` and
    ``(1, h, w)``, contiguous."""
    return (np.ascontiguousarray(np.moveaxis(image, 1 + axis, 1)),
            np.ascontiguousarray(np.moveaxis(target, axis, 0)),
            np.ascontiguousarray(np.moveaxis(mask, axis, 0)))


def augment(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
            generator: torch.Generator, *, rotate_yx: bool) -> tuple[torch.Tensor, ...]:
    """Random flips on each axis, 90-degree rotations in the (y, x) plane when it is isotropic
    (``rotate_yx``), intensity scale and shift, and Gaussian noise; per batch, on any device.

    Args:
        image: ``(B, C, z, y, x)``; target, mask: ``(B, z, y, x)``.
    """
    def coin() -> bool:
        return bool(torch.rand((), generator=generator) < 0.5)

    for axis in range(3):
        if coin():
            image, target, mask = (image.flip(axis + 2), target.flip(axis + 1), mask.flip(axis + 1))
    if rotate_yx and image.shape[-1] == image.shape[-2]:
        k = int(torch.randint(0, 4, (), generator=generator))
        if k:
            image = torch.rot90(image, k, (3, 4))
            target, mask = torch.rot90(target, k, (2, 3)), torch.rot90(mask, k, (2, 3))
    b, c = image.shape[:2]
    scale = 1.0 + 0.2 * (torch.rand((b, c, 1, 1, 1), generator=generator) - 0.5)
    shift = 0.2 * (torch.rand((b, c, 1, 1, 1), generator=generator) - 0.5)
    sigma = 0.05 * torch.rand((b, 1, 1, 1, 1), generator=generator)
    noise = torch.randn(image.shape, generator=generator) * sigma
    image = image * scale.to(image.device) + shift.to(image.device) + noise.to(image.device)
    return image.contiguous(), target.contiguous(), mask.contiguous()
