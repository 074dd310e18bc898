"""Separated objects (instances) from one class of a prediction.

A class map says *which voxels are nuclei*; an instance map says *which nucleus each voxel
belongs to*: 0 is background and each object has its own id, 1 to n. Two methods:

- ``"components"``: every connected region of the class (face connectivity: voxels touching by a
  corner or an edge only are apart) is one object. Fast and exact for objects that never touch.
- ``"watershed"``: every connected region is split at its narrow necks by a seeded watershed,
  for objects that touch. The landscape is either the Euclidean distance to the background,
  in physical units (``seeds="distance"``: anisotropic voxels give balls, not ellipsoids), or
  the class probability smoothed by a Gaussian of a tenth of the object diameter
  (``seeds="probability"``: the network's own dips between objects count). Its seeds are the
  local maxima of the landscape, highest first, each at least a minimum distance (in physical
  space, a fraction of the object diameter, estimated from the data when not given) from the
  seeds kept; the flooding follows ``surface`` (the same landscape unless chosen otherwise).
  ``seeds="auto"`` (the default) chooses one of the two for the volume from the class map
  alone: the distance, unless the smoothed class map has far fewer tops (elongated objects,
  whose distance has several tops along one ridge; see :func:`choose_seeds`).

Every connected region is handled within its bounding box, so the distance transform and the
flooding take the memory of the largest region, on top of the labels, components and ids;
volumes above :data:`MAX_VOXELS` are refused with a sentence (see :func:`check_size`).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..errors import VolumeError

log = logging.getLogger(__name__)

METHODS = ("watershed", "components")
LANDSCAPES = ("distance", "probability")
SEEDS = ("auto",) + LANDSCAPES  # auto: one of the two, chosen by choose_seeds()
#: the largest volume handled in memory. Measured peaks (tracemalloc, 4.7 M voxels of touching
#: blobs that form one cluster): components 12 bytes a voxel, watershed 32 (the distance
#: transform and the flooding of the largest region's bounding box come on top of the labels,
#: components and ids), so 2.5 x 10^8 voxels take up to about 8 GB
MAX_VOXELS = 250_000_000
PEAK_BYTES_PER_VOXEL = 32

# Seeds and smoothing as fractions of the object diameter D, chosen on bench_instances.py's
# touching blobs of seed 1 (the table it prints uses seed 0) on the class map of a model:
# object F1 0.852 (distance, seeds 0.5 D apart; 0.4 D: 0.845, 0.6 D: 0.797) and 0.850
# (probability, 0.4 D apart, smoothed by 0.1 D; 0.25 D: 0.441). Seeds from h-maxima (maxima
# that rise 0.02 D above the neck to a higher one) did worse there (0.802 against 0.835 for
# the same spacing), at twice the time and three times the memory: seeds are local maxima.
SPACING = {"distance": 0.5, "probability": 0.4}  # seeds at least this x D apart
SMOOTHING = 0.1  # the probability is smoothed by a Gaussian of sigma 0.1 D
# "auto" (the default) seeds from the distance unless the smoothed class map has fewer than
# AUTO_RATIO x as many tops (see choose_seeds). On round objects the two agree (tops of the
# smoothed map / tops of the distance, bench_instances.py's maps, 400 iterations: touching
# blobs 0.98 on the true class map, 0.90 on a model's); where objects are elongated the
# distance puts several tops on one ridge (nuclei sample: 0.44 true, 0.51 model). Object F1
# at IoU 0.5 of auto, against distance and probability: blobs 0.975 / 0.935 (model) = the
# distance's (probability 0.986 / 0.898); nuclei 0.941 / 0.879 (distance 0.503 / 0.512,
# probability 0.941 / 0.829). Any ratio from 0.6 to 0.85 chooses the same on all four maps.
AUTO_RATIO = 0.75


def instances(prediction: np.ndarray, *, class_value: int | None = None,
              method: str = "watershed", seeds: str = "auto", surface: str | None = None,
              probability: np.ndarray | None = None, voxel_size=None,
              diameter: float | None = None, min_size: int = 0, threshold: float = 0.5,
              max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """Instance ids of one class of a prediction.

    Args:
        prediction: ``(Z, Y, X)`` (any number of dimensions works) class labels (integers: the
            class is ``prediction == class_value``), a bool mask of the class, or the class
            probability (floats in [0, 1]: the class is ``prediction > threshold``).
        class_value: the label value of the class in integer ``prediction``; None: every
            nonzero voxel.
        method: ``"watershed"`` (split touching objects) or ``"components"`` (connected regions).
        seeds: ``"auto"``, ``"distance"`` or ``"probability"``: the landscape whose maxima
            seed the watershed; ``"auto"``: one of the two, chosen for the volume from the
            class map alone by :func:`choose_seeds` (its probability is the smoothed class
            map; ``probability`` is not read).
        surface: the landscape the watershed floods; None: that of ``seeds``.
        probability: ``(Z, Y, X)`` probability of the class, needed by ``"probability"`` when
            ``prediction`` holds labels.
        voxel_size: ``(z, y, x)`` physical size of a voxel; None: 1 along every axis.
        diameter: typical object diameter in physical units; None: estimated (twice the
            voxel-weighted median of each region's largest distance to the background).
        min_size: regions of fewer voxels are removed, and a watershed piece of fewer voxels is
            merged into its neighbours.
        threshold: the class of a probability ``prediction``.
        max_voxels: larger volumes are refused (see :func:`check_size`).

    Returns:
        Ids ``0`` (background) and ``1..n`` (consecutive), in the smallest unsigned integer
        type that holds ``n`` (uint8, uint16 or uint32), the shape of ``prediction``.

    Raises:
        ValueError: an unknown method or landscape, a ``voxel_size`` of the wrong length or
            not positive, or ``"probability"`` asked for without a probability.
        VolumeError: the volume is larger than ``max_voxels``.
    """
    _check_names(method, seeds, surface)
    prediction = np.asarray(prediction)
    check_size(prediction.shape, max_voxels)
    voxel = _voxel_size(voxel_size, prediction.ndim)
    mask, probability = _class_mask(prediction, class_value, probability, threshold)
    if method == "watershed" and seeds == "auto":
        probability = None  # auto reads the class map alone, whatever the front end
    surface = surface or seeds
    if method == "watershed" and "probability" in (seeds, surface) and probability is None:
        raise ValueError("Instances from the probability need the class probability; give "
                         "'probability', or use seeds and surface 'distance'.")
    regions, count = ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, 1),
                               output=np.int32)
    del mask
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    if method == "components":
        return _components(regions, sizes, min_size)
    boxes = ndi.find_objects(regions)
    if diameter is None:
        diameter = estimate_diameter(regions, boxes, sizes, voxel, min_size)
    if seeds == "auto":
        seeds = choose_seeds(regions, boxes, sizes, voxel, diameter, min_size)
        surface = seeds if surface == "auto" else surface
    log.debug("instances: %d regions, object diameter %.3g, seeds %s", count, diameter, seeds)
    out = np.zeros(regions.shape, np.uint32)
    last = 0
    for index, box in enumerate(boxes, start=1):
        if box is None or sizes[index] < max(min_size, 1):
            continue
        inside = regions[box] == index
        prob = (inside.astype(np.float32) if probability is None and "probability" in
                (seeds, surface) else None if probability is None else probability[box])
        pieces = split_region(inside, prob, voxel, diameter, seeds=seeds, surface=surface,
                              min_size=min_size)
        out[box][inside] = pieces[inside] + np.uint32(last)
        last += int(pieces.max())
    return smallest_ids(out, last)


def check_size(shape, max_voxels: int = MAX_VOXELS) -> None:
    """Refuse (a :class:`VolumeError` with a sentence) a volume of more than ``max_voxels``.

    Args:
        shape: the volume's shape.
        max_voxels: the limit.
    """
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        gb = voxels * PEAK_BYTES_PER_VOXEL / 1e9
        raise VolumeError(
            f"Instances are computed in memory, up to {max_voxels:.3g} voxels; this volume has "
            f"{voxels:.3g} (up to {gb:.0f} GB of working memory). Crop the volume, or predict "
            "it in pieces, to get its instances.")


def split_region(inside: np.ndarray, probability: np.ndarray | None, voxel: np.ndarray,
                 diameter: float, *, seeds: str = "distance", surface: str = "distance",
                 min_size: int = 0) -> np.ndarray:
    """Split one connected region by a seeded watershed.

    Args:
        inside: bool ``(z, y, x)``, the region within its bounding box.
        probability: the class probability over the same box, or None (``"distance"`` only).
        voxel: ``(ndim,)`` voxel size.
        diameter: typical object diameter, physical units.
        seeds: the landscape whose maxima seed the watershed.
        surface: the landscape it floods.
        min_size: pieces of fewer voxels are merged into their neighbours.

    Returns:
        int32 ``(z, y, x)``: 0 outside the region, pieces ``1..m`` inside.
    """
    from skimage.segmentation import watershed

    cache: dict[str, np.ndarray] = {}

    def landscape(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = (distance_landscape(inside, voxel) if name == "distance" else
                           probability_landscape(inside, probability, voxel, diameter))
        return cache[name]

    peaks = seed_points(landscape(seeds), inside, voxel, SPACING[seeds] * diameter)
    if len(peaks) <= 1:
        return inside.astype(np.int32)
    flood = -landscape(surface)
    markers = np.zeros(inside.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    pieces = watershed(flood, markers, mask=inside)
    small = np.flatnonzero(np.bincount(pieces.ravel())[1:] < min_size) + 1
    if len(small) and len(small) < len(peaks):  # flood again without the seeds of small pieces
        markers[np.isin(markers, small)] = 0
        markers[markers > 0] = np.arange(1, len(peaks) - len(small) + 1, dtype=np.int32)
        pieces = watershed(flood, markers, mask=inside)
    elif len(small):
        return inside.astype(np.int32)
    return pieces.astype(np.int32, copy=False)


def distance_landscape(inside: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """Euclidean distance (physical units) of each voxel of ``inside`` to the nearest voxel
    outside it (the box's border counts as outside)."""
    padded = np.pad(inside, 1)
    dist = ndi.distance_transform_edt(padded, sampling=voxel)
    return dist[(slice(1, -1),) * inside.ndim]


def probability_landscape(inside: np.ndarray, probability: np.ndarray, voxel: np.ndarray,
                          diameter: float) -> np.ndarray:
    """The class probability inside the region (0 outside it), smoothed by a Gaussian of sigma
    :data:`SMOOTHING` x ``diameter`` in physical units."""
    sigma = SMOOTHING * diameter / voxel
    values = np.where(inside, probability, 0).astype(np.float32)
    return ndi.gaussian_filter(values, sigma=sigma, mode="constant", cval=0.0)


def seed_points(landscape: np.ndarray, inside: np.ndarray, voxel: np.ndarray,
                min_distance: float) -> np.ndarray:
    """The seeds of a region: its local maxima of ``landscape`` (no higher voxel among the 26
    neighbours) kept, highest first, at least ``min_distance`` (physical units) from every
    seed kept.

    Returns:
        int ``(n, ndim)`` voxel coordinates, n >= 1 for a region that is not empty.
    """
    tops = (landscape == ndi.maximum_filter(landscape, size=3, mode="constant",
                                            cval=-np.inf)) & inside
    points = np.argwhere(tops)
    if len(points) == 0:
        return np.array([np.unravel_index(np.argmax(np.where(inside, landscape, -np.inf)),
                                          inside.shape)])
    keep = spaced(points * voxel, landscape[tuple(points.T)], min_distance)
    return points[keep]


def spaced(points: np.ndarray, heights: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of ``points`` kept, highest first, so that no two lie closer than
    ``min_distance`` (a greedy non-maximum suppression).

    Args:
        points: ``(n, ndim)`` physical coordinates.
        heights: ``(n,)`` their landscape heights.
        min_distance: the least distance between two points kept.
    """
    order = np.argsort(-heights, kind="stable")
    if min_distance <= 0 or len(points) < 2:
        return order
    tree = cKDTree(points)
    gone = np.zeros(len(points), bool)
    keep = []
    for i in order:
        if gone[i]:
            continue
        keep.append(i)
        gone[tree.query_ball_point(points[i], r=min_distance * (1 - 1e-9))] = True
    return np.array(keep, dtype=np.intp)


def estimate_diameter(regions: np.ndarray, boxes, sizes: np.ndarray, voxel: np.ndarray,
                      min_size: int = 0, budget: int = 10**7) -> float:
    """Twice the voxel-weighted median of each region's largest distance to the background (a
    cluster of touching objects counts as its largest member), over regions spread through the
    volume whose bounding boxes hold ``budget`` voxels in all (at least one region); 1 voxel's
    largest extent when there is no region."""
    chosen = sample_regions(boxes, sizes, min_size, budget)
    if not chosen:
        return float(voxel.max())
    radii = np.array([distance_landscape(regions[boxes[i - 1]] == i, voxel).max()
                      for i in chosen])
    weights = sizes[chosen].astype(float)
    order = np.argsort(radii)
    cumulative = np.cumsum(weights[order])
    median = radii[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(max(2 * median, voxel.max()))


def choose_seeds(regions: np.ndarray, boxes, sizes: np.ndarray, voxel: np.ndarray,
                 diameter: float, min_size: int = 0, budget: int = 10**7) -> str:
    """``"auto"``'s landscape for a volume: ``"probability"`` (the class map smoothed, see
    :func:`probability_landscape`) when it has fewer than :data:`AUTO_RATIO` x as many seeds as
    the distance over regions spread through the volume (boxes of ``budget`` voxels in all),
    else ``"distance"``. Extra tops of the distance lie on the ridges of elongated objects."""
    tops = {"distance": 0, "probability": 0}
    for i in sample_regions(boxes, sizes, min_size, budget):
        inside = regions[boxes[i - 1]] == i
        for name in tops:
            land = (distance_landscape(inside, voxel) if name == "distance" else
                    probability_landscape(inside, inside, voxel, diameter))
            tops[name] += len(seed_points(land, inside, voxel, SPACING[name] * diameter))
    return "probability" if tops["probability"] < AUTO_RATIO * tops["distance"] else "distance"


def sample_regions(boxes, sizes: np.ndarray, min_size: int = 0, budget: int = 10**7) -> list:
    """Region indices (1-based) of at least ``min_size`` voxels, in a seeded random order, whose
    bounding boxes hold ``budget`` voxels in all (at least one region when there is one)."""
    indices = [i for i, box in enumerate(boxes, start=1)
               if box is not None and sizes[i] >= max(min_size, 1)]
    chosen, voxels = [], 0
    for k in np.random.default_rng(0).permutation(len(indices)):
        i = indices[k]
        box_voxels = int(np.prod([s.stop - s.start for s in boxes[i - 1]]))
        if chosen and voxels + box_voxels > budget:
            continue
        chosen.append(i)
        voxels += box_voxels
    return chosen


def smallest_ids(ids: np.ndarray, count: int) -> np.ndarray:
    """``ids`` in the smallest unsigned type that holds ``count``: uint8, uint16 or uint32."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if count <= np.iinfo(dtype).max:
            return ids.astype(dtype, copy=False)
    raise VolumeError(f"{count} objects do not fit 32-bit ids.")


def _components(regions: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(len(sizes), np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    count = int(keep.sum())
    return smallest_ids(lut, count)[regions]


def _class_mask(prediction: np.ndarray, class_value, probability, threshold: float):
    """The bool mask of the class and its probability (or None)."""
    if prediction.dtype == bool:
        return prediction, probability
    if np.issubdtype(prediction.dtype, np.floating):
        return prediction > threshold, prediction if probability is None else probability
    if class_value is None:
        return prediction != 0, probability
    return prediction == class_value, probability


def _voxel_size(voxel_size, ndim: int) -> np.ndarray:
    if voxel_size is None:
        return np.ones(ndim)
    voxel = np.asarray(voxel_size, float).ravel()
    if voxel.shape != (ndim,) or not np.all(voxel > 0) or not np.all(np.isfinite(voxel)):
        raise ValueError(f"The voxel size must be {ndim} positive numbers, got "
                         f"{tuple(np.ravel(voxel_size))}.")
    return voxel


def _check_names(method: str, seeds: str, surface: str | None) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown instance method {method!r}; choose one of "
                         f"{', '.join(METHODS)}.")
    for what, name, names in (("seeds", seeds, SEEDS), ("surface", surface, LANDSCAPES)):
        if name is not None and name not in names:
            raise ValueError(f"Unknown instance {what} {name!r}; choose one of "
                             f"{', '.join(names)}.")
