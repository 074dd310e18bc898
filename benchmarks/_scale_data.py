"""Files for ``bench_scale.py``: the synthetic volumes of ``_scale_volumes`` written to chunked HDF5
slab by slab (cached: made once, reused while the generator version matches), the strokes a
person would paint on them (read from the painted slices of the truth only), and Dice of a
segmentation file against the truth file, block by block.

A volume file ``<kind>_<Z>x<Y>x<X>_seed<seed>.h5`` holds ``/image`` (float32), ``/truth``
(uint8, classes 1..K) and, for ``nuclei``, ``/instances`` (uint32, 0 = background); every
dataset carries the voxel size as ``element_size_um``. Its strokes are ``<stem>_strokes.h5:/labels``
(uint8, 0 = not painted; ``<stem>_strokes_<pct>pct.h5`` for another share than 0.01 %).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
from _scale_volumes import CLASS_NAMES, GENERATORS, VOXEL_SIZE

from napari_seg3d.engine.training.scribbles import stroke

VERSION = 1  # bump when a generator or the strokes change: cached files are then made again
SLAB = 16  # z slices generated at once (the content does not depend on it)
IMAGE_CHUNKS = (32, 64, 64)
LABEL_CHUNKS = (64, 64, 64)


def volume_path(data_dir: Path, kind: str, shape, seed: int) -> Path:
    return Path(data_dir) / f"{kind}_{'x'.join(map(str, shape))}_seed{seed}.h5"


def strokes_path(volume: Path, fraction: float = 1e-4) -> Path:
    suffix = "" if fraction == 1e-4 else f"_{100 * fraction:g}pct"
    return volume.with_name(f"{volume.stem}_strokes{suffix}.h5")


def _is_current(path: Path, what: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("version") == VERSION and f.attrs.get("complete") == what
    except OSError:
        return False


def _dataset(f: h5py.File, name: str, shape, dtype, chunks, voxel, compress: bool):
    ds = f.create_dataset(name, shape=shape, dtype=dtype,
                          chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                          compression="gzip" if compress else None,
                          compression_opts=1 if compress else None, fillvalue=0)
    ds.attrs["element_size_um"] = np.asarray(voxel, np.float64)
    return ds


def write_volume(path: Path, kind: str, shape, seed: int) -> None:
    """Write the volume ``kind`` of ``shape`` and ``seed`` to ``path`` slab by slab (through a
    ``.part`` file renamed at the end, so an interrupted run leaves no half file)."""
    voxel = VOXEL_SIZE[kind]
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        image = _dataset(f, "image", shape, np.float32, IMAGE_CHUNKS, voxel, compress=False)
        truth = _dataset(f, "truth", shape, np.uint8, LABEL_CHUNKS, voxel, compress=True)
        instances = _dataset(f, "instances", shape, np.uint32, LABEL_CHUNKS, voxel,
                             compress=True) if kind == "nuclei" else None
        for z0 in range(0, shape[0], SLAB):
            slab = GENERATORS[kind](seed, shape, z0, min(z0 + SLAB, shape[0]))
            z1 = z0 + len(slab.image)
            image[z0:z1], truth[z0:z1] = slab.image, slab.truth
            if instances is not None:
                instances[z0:z1] = slab.instances
        f.attrs.update({"kind": kind, "seed": seed, "version": VERSION, "complete": "volume",
                        "class_names": list(CLASS_NAMES[kind]),
                        "generate_s": time.perf_counter() - t0})
    os.replace(tmp, path)


def ensure_volume(data_dir: Path, kind: str, shape, seed: int) -> tuple[Path, bool]:
    """The volume's file, written if missing or stale (its ``generate_s`` attribute says how
    long that took); and whether it was written now."""
    path = volume_path(data_dir, kind, shape, seed)
    if _is_current(path, "volume"):
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(path, kind, shape, seed)
    return path, True


# --- strokes -------------------------------------------------------------------------------------

def stroke_planes(shape) -> list[tuple[int, int]]:
    """``(axis, index)`` of the painted slices: 3 z slices (4 from 5e7 voxels, 5 from 3e8),
    evenly spread, then one y and one x slice through the middle."""
    n = int(np.prod(shape))
    nz = 3 if n < 5e7 else 4 if n < 3e8 else 5
    zs = np.linspace(0, shape[0] - 1, nz + 2)[1:-1].round().astype(int)
    return [(0, int(z)) for z in zs] + [(1, shape[1] // 2), (2, shape[2] // 2)]


def _plane(ds, axis: int, index: int) -> np.ndarray:
    key = [slice(None)] * 3
    key[axis] = index
    return ds[tuple(key)]


def stroke_slots(planes, classes) -> tuple[list[tuple[int, int]], int]:
    """Order of ``(plane number, class)`` strokes: every class on every z slice first, then
    round after round over the y and x slices and the z slices again; and how many strokes
    the first pass has (all of them are painted whatever the target)."""
    z = [i for i, (axis, _) in enumerate(planes) if axis == 0]
    other = [i for i in range(len(planes)) if i not in z]
    first = [(p, c) for p in z for c in classes]
    again = [(p, c) for p in other + z for c in classes]
    return first + again * 1000, len(first)


def paint_strokes(truth, seed: int, fraction: float = 1e-4) -> list:
    """Strokes as a person paints them: brush radius 1-2, random walks of 10-40 steps that stay
    inside their class, each class on each of a few slices (:func:`stroke_planes`) and then
    more, until ``fraction`` of the voxels are painted. Only those slices of ``truth`` (an h5py
    dataset or array ``(Z, Y, X)``) are read.

    Returns:
        ``[(axis, index, labels2d uint8), ...]`` (true class values, 0 = not painted; where
        two slices cross both hold the same true value).
    """
    shape = truth.shape
    planes = stroke_planes(shape)
    truths = [_plane(truth, a, i) for a, i in planes]
    classes = sorted(set(np.unique(np.concatenate([t.ravel() for t in truths]))) - {0})
    painted = [np.zeros(t.shape, np.uint8) for t in truths]
    rng = np.random.default_rng([seed, 7])
    target, count = fraction * np.prod(shape), 0
    slots, first = stroke_slots(planes, classes)
    for n, (p, value) in enumerate(slots):
        if n >= first and count >= target:
            break
        mask = truths[p] == value
        if not mask.any():
            continue
        new = stroke(mask, rng, int(rng.integers(10, 41)), int(rng.integers(1, 3)))
        new &= painted[p] == 0
        painted[p][new] = value
        count += int(new.sum())
    return [(a, i, lab) for (a, i), lab in zip(planes, painted)]


def write_strokes(path: Path, planes, shape, voxel) -> None:
    """The strokes as a full-size ``/labels`` dataset (only the painted slices are written)."""
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        labels = _dataset(f, "labels", shape, np.uint8, LABEL_CHUNKS, voxel, compress=True)
        for axis, index, lab in planes:
            key = [slice(None)] * 3
            key[axis] = index
            labels[tuple(key)] = np.maximum(labels[tuple(key)], lab)
        f.attrs.update({"version": VERSION, "complete": "strokes"})
    os.replace(tmp, path)


def ensure_strokes(volume: Path, seed: int, fraction: float = 1e-4) -> tuple[Path, int]:
    """The strokes file of ``volume`` painting about ``fraction`` of it (painted and written if
    missing or stale) and how many voxels it paints."""
    path = strokes_path(volume, fraction)
    if not _is_current(path, "strokes"):
        with h5py.File(volume, "r") as f:
            truth = f["truth"]
            planes = paint_strokes(truth, seed, fraction)
            write_strokes(path, planes, truth.shape, VOXEL_SIZE[f.attrs["kind"]])
    return path, count_painted(path)


def count_painted(path: Path) -> int:
    with h5py.File(path, "r") as f:
        ds = f["labels"]
        return sum(int(np.count_nonzero(ds[z0:z0 + 64])) for z0 in range(0, ds.shape[0], 64))


# --- scores --------------------------------------------------------------------------------------

def dice_blockwise(pred_spec: str, truth_path: Path, classes, slab: int = 32) -> list[float]:
    """Dice of each class value in ``classes`` between the labels ``pred_spec``
    (``file.h5:/key``) and ``truth_path:/truth``, read ``slab`` z slices at a time."""
    file, _, key = pred_spec.rpartition(":")
    inter = np.zeros(len(classes)), np.zeros(len(classes)), np.zeros(len(classes))
    with h5py.File(file, "r") as fp, h5py.File(truth_path, "r") as ft:
        pred, truth = fp[key], ft["truth"]
        if pred.shape != truth.shape:
            raise ValueError(f"{pred_spec} has shape {pred.shape}, the truth {truth.shape}")
        for z0 in range(0, truth.shape[0], slab):
            p, t = pred[z0:z0 + slab], truth[z0:z0 + slab]
            for i, c in enumerate(classes):
                pc, tc = p == c, t == c
                inter[0][i] += np.count_nonzero(pc & tc)
                inter[1][i] += np.count_nonzero(pc)
                inter[2][i] += np.count_nonzero(tc)
    both, n_pred, n_truth = inter
    return [float(2 * b / (p + t)) if p + t else float("nan")
            for b, p, t in zip(both, n_pred, n_truth)]
