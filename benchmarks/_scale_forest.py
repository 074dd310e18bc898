"""The reference of ``bench_scale.py``: an ilastik-style pixel classifier run out of core.

Features per voxel (ilastik's default families): the intensity and, at sigmas 0.7, 1.0, 1.6,
3.5 and 5.0 voxels (scaled per axis by the voxel size, so filters are round in um), the
Gaussian-smoothed intensity, the gradient magnitude and the three Hessian eigenvalues (26
features), of the image normalised by its 0.5 / 99.5 percentiles. A scikit-learn
``RandomForestClassifier(n_estimators=100, n_jobs=-1)`` is fit on every painted voxel (features
computed on a box around each stroke plus a halo, so only the painted slices' surroundings are
read), then predicts the volume block by block (each block read with a halo of 4 sigma, so every
voxel gets exactly the features a whole-volume pass would give) into ``OUT:/labels``.

It is independent of ``napari_seg3d``: the reference does not move when the engine does.

    python benchmarks/_scale_forest.py IMAGE.h5 STROKES.h5 OUT.h5 [--seed 0]

Prints one JSON line: seconds of the fit (features and forest) and of the prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
from scipy import ndimage as ndi

SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)
BLOCK = (96, 160, 160)
THREADS = 2


def axis_sigmas(sigma: float, spacing) -> tuple[float, ...]:
    return tuple(sigma * min(spacing) / s for s in spacing)


def halo_of(spacing) -> tuple[int, ...]:
    """Context each feature needs per axis (ndimage truncates its kernels at 4 sigma)."""
    return tuple(int(4 * s + 0.5) + 1 for s in axis_sigmas(max(SIGMAS), spacing))


def _eigenvalues(h: dict) -> list[np.ndarray]:
    """Closed-form eigenvalues (descending) of symmetric 3x3 matrices ``h[i, j]`` (i <= j)."""
    q = (h[0, 0] + h[1, 1] + h[2, 2]) / 3
    d0, d1, d2 = h[0, 0] - q, h[1, 1] - q, h[2, 2] - q
    p = np.sqrt((d0 ** 2 + d1 ** 2 + d2 ** 2
                 + 2 * (h[0, 1] ** 2 + h[0, 2] ** 2 + h[1, 2] ** 2)) / 6)
    det = (d0 * (d1 * d2 - h[1, 2] ** 2) - h[0, 1] * (h[0, 1] * d2 - h[1, 2] * h[0, 2])
           + h[0, 2] * (h[0, 1] * h[1, 2] - d1 * h[0, 2]))
    phi = np.arccos(np.clip(det / (2 * np.where(p > 0, p, 1) ** 3), -1, 1)) / 3
    e1, e3 = q + 2 * p * np.cos(phi), q + 2 * p * np.cos(phi + 2 * np.pi / 3)
    return [e1, 3 * q - e1 - e3, e3]


def _scale_features(x: np.ndarray, sigmas) -> list[np.ndarray]:
    out = [ndi.gaussian_filter(x, sigmas), ndi.gaussian_gradient_magnitude(x, sigmas)]
    h = {}
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            h[i, j] = ndi.gaussian_filter(x, sigmas, order=order)
    return out + _eigenvalues(h)


def features(x: np.ndarray, spacing) -> np.ndarray:
    """``(F, Z, Y, X)`` float32 features of a normalised ``(Z, Y, X)`` block (the scales in
    parallel threads: ndimage releases the GIL)."""
    with ThreadPoolExecutor(THREADS) as pool:
        parts = pool.map(lambda s: _scale_features(x, axis_sigmas(s, spacing)), SIGMAS)
        return np.stack([x] + [f for part in parts for f in part]).astype(np.float32, copy=False)


def normalisation(image) -> tuple[float, float]:
    """0.5 and 99.5 percentiles of about 2 M voxels from evenly spaced z slices."""
    per_slice = image.shape[1] * image.shape[2]
    zs = np.linspace(0, image.shape[0] - 1, max(1, min(image.shape[0], 2_000_000 // per_slice)))
    values = np.concatenate([image[int(z)].ravel() for z in np.unique(zs.round())])
    lo, hi = np.percentile(values, (0.5, 99.5))
    return float(lo), float(hi)


def region_features(image, region, spacing, norm) -> np.ndarray:
    """``(F, z, y, x)`` features of ``region`` (three slices), read with a halo."""
    halo = halo_of(spacing)
    outer = tuple(slice(max(r.start - h, 0), min(r.stop + h, n))
                  for r, h, n in zip(region, halo, image.shape))
    lo, hi = norm
    x = (image[outer].astype(np.float32) - lo) / max(hi - lo, 1e-6)
    inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))
    return features(x, spacing)[(slice(None),) + inner]


def stroke_boxes(labels) -> list[tuple[slice, slice, slice]]:
    """Bounding boxes of the painted strokes (connected within 3 voxels), found slab by slab."""
    boxes = []
    for z0 in range(0, labels.shape[0], 64):
        painted = labels[z0:z0 + 64] > 0
        if not painted.any():
            continue
        grown = ndi.binary_dilation(painted, np.ones((1, 7, 7), bool))
        grown |= ndi.binary_dilation(painted, np.ones((7, 1, 1), bool))
        for box in ndi.find_objects(ndi.label(grown)[0]):
            boxes.append((slice(box[0].start + z0, box[0].stop + z0), box[1], box[2]))
    return boxes


def fit(image, labels, spacing, norm, seed: int):
    """A random forest fit on every painted voxel."""
    from sklearn.ensemble import RandomForestClassifier

    xs, ys = [], []
    for box in stroke_boxes(labels):
        lab = labels[box]
        where = lab > 0
        if where.any():
            xs.append(region_features(image, box, spacing, norm)[:, where].T)
            ys.append(lab[where])
    clf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)
    clf.fit(np.concatenate(xs), np.concatenate(ys))
    return clf, sum(len(y) for y in ys)


def blocks(shape, block=BLOCK):
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                yield tuple(slice(s, min(s + b, n)) for s, b, n in zip((z, y, x), block, shape))


def predict(clf, image, out, spacing, norm) -> int:
    """Labels of every block of ``image`` into the dataset ``out``; the number of blocks."""
    n = 0
    for region in blocks(image.shape):
        f = region_features(image, region, spacing, norm)
        flat = np.ascontiguousarray(f.reshape(f.shape[0], -1).T)
        out[region] = clf.classes_[clf.predict_proba(flat).argmax(1)].reshape(f.shape[1:])
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="volume file (its /image dataset)")
    p.add_argument("strokes", help="strokes file (its /labels dataset)")
    p.add_argument("out", help="output file (its /labels dataset is written)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with h5py.File(args.image, "r") as fi, h5py.File(args.strokes, "r") as fs, \
            h5py.File(args.out, "w") as fo:
        image, labels = fi["image"], fs["labels"]
        spacing = tuple(float(v) for v in image.attrs.get("element_size_um", (1, 1, 1)))
        t0 = time.perf_counter()
        norm = normalisation(image)
        clf, n_train = fit(image, labels, spacing, norm, args.seed)
        t1 = time.perf_counter()
        out = fo.create_dataset("labels", shape=image.shape, dtype=np.uint8,
                                chunks=tuple(min(64, n) for n in image.shape), compression="gzip", compression_opts=1)
        n_blocks = predict(clf, image, out, spacing, norm)
        t2 = time.perf_counter()
    print(json.dumps({"fit_s": t1 - t0, "predict_s": t2 - t1, "train_voxels": n_train,
                      "blocks": n_blocks, "halo": halo_of(spacing),
                      "features": 1 + 5 * len(SIGMAS)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
