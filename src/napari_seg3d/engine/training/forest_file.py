"""A fitted :class:`.forest.Forest` as plain arrays, for the model file, and back.

Each tree is kept as its node arrays (children, split feature and threshold, and the class
fractions of each node), which ``torch.load(..., weights_only=True)`` reads without running
code; loading rebuilds scikit-learn's tree structure from them (the node layout of the
scikit-learn version that loads it), so the trees predict exactly as they did when fit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..errors import SettingError
from ..normalization import Normalization
from .forest import Forest

MAX_NODES = 2_000_000  # all trees together: a file claiming more is not one we wrote


class LoadedTree:
    """A decision tree rebuilt from its arrays: ``predict_proba`` as scikit-learn's."""

    def __init__(self, tree) -> None:
        self.tree_ = tree

    def predict_proba(self, x: np.ndarray, check_input: bool = False) -> np.ndarray:
        out = self.tree_.predict(x)  # (n, K) for one output (older versions: (n, 1, K))
        return out.reshape(len(x), -1)


def forest_to_dict(forest: Forest) -> dict[str, Any]:
    """The forest's trees as tensors (class fractions in the order of ``forest.classes``)."""
    trees = []
    for t in forest.trees:
        tree = t.tree_
        values = np.asarray(tree.value[:, 0, :], np.float64)
        values = values / np.maximum(values.sum(1, keepdims=True), 1e-12)  # fractions
        # a tree fit on a bootstrap sample may lack a class: its columns into the forest's
        own = np.asarray(getattr(t, "classes_", forest.classes[:values.shape[1]]))
        full = np.zeros((tree.node_count, forest.n_classes), np.float32)
        full[:, np.searchsorted(np.asarray(forest.classes), own)] = values
        trees.append({
            "left": torch.from_numpy(np.asarray(tree.children_left, np.int32)),
            "right": torch.from_numpy(np.asarray(tree.children_right, np.int32)),
            "feature": torch.from_numpy(np.asarray(tree.feature, np.int32)),
            "threshold": torch.from_numpy(np.asarray(tree.threshold, np.float64)),
            "values": torch.from_numpy(full),
            "max_depth": int(tree.max_depth),
            "n_features": int(tree.n_features),
        })
    return {"trees": trees, "spacing": [float(s) for s in forest.spacing],
            "n_classes": int(forest.n_classes), "classes": [int(c) for c in forest.classes]}


def forest_from_dict(data: Any, normalization: Normalization, n_model_classes: int) -> Forest:
    """The :class:`.Forest` of a model file's ``"forest"`` entry, every array checked first
    (a :class:`.SettingError` names what is wrong)."""
    from sklearn.tree._tree import NODE_DTYPE, Tree

    if not isinstance(data, dict) or not isinstance(data.get("trees"), list) or not data["trees"]:
        raise SettingError("forest must hold a list of trees.")
    k = data.get("n_classes")
    if not isinstance(k, int) or not 2 <= k <= n_model_classes:
        raise SettingError(f"forest.n_classes must be 2 to {n_model_classes}, got {k!r}.")
    classes = data.get("classes")
    if (not isinstance(classes, list) or len(classes) != k
            or not all(isinstance(c, int) and 0 <= c < n_model_classes for c in classes)):
        raise SettingError("forest.classes must list the model's class indices it predicts.")
    spacing = data.get("spacing")
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(isinstance(s, float) and s > 0 for s in spacing)):
        raise SettingError("forest.spacing must be three positive voxel sizes.")
    trees, nodes_total = [], 0
    for i, t in enumerate(data["trees"]):
        arrays = _tree_arrays(t, i, k)
        n = len(arrays["left"])
        nodes_total += n
        if nodes_total > MAX_NODES:
            raise SettingError(f"forest holds more than {MAX_NODES} nodes.")
        nodes = np.zeros(n, NODE_DTYPE)
        nodes["left_child"], nodes["right_child"] = arrays["left"], arrays["right"]
        nodes["feature"], nodes["threshold"] = arrays["feature"], arrays["threshold"]
        tree = Tree(t["n_features"], np.array([k], np.intp), 1)
        tree.__setstate__({"max_depth": t["max_depth"], "node_count": n, "nodes": nodes,
                           "values": arrays["values"].astype(np.float64)[:, None, :]})
        trees.append(LoadedTree(tree))
    return Forest(trees, normalization, tuple(spacing), k, tuple(classes))


def _tree_arrays(t: Any, i: int, k: int) -> dict[str, np.ndarray]:
    """The checked arrays of tree ``i``: children inside the tree (a leaf -1 on both sides),
    features inside the feature count, thresholds finite."""
    name = f"forest.trees[{i}]"
    if not isinstance(t, dict):
        raise SettingError(f"{name} must be a mapping.")
    for key in ("max_depth", "n_features"):
        if not isinstance(t.get(key), int) or not 0 <= t[key] <= 10_000:
            raise SettingError(f"{name}.{key} must be a whole number.")
    out = {}
    for key, dtype in (("left", torch.int32), ("right", torch.int32), ("feature", torch.int32),
                       ("threshold", torch.float64), ("values", torch.float32)):
        v = t.get(key)
        if not isinstance(v, torch.Tensor) or v.dtype != dtype:
            raise SettingError(f"{name}.{key} must be a {dtype} tensor.")
        out[key] = v.numpy()
    n = len(out["left"])
    if n < 1 or any(len(out[key]) != n for key in ("right", "feature", "threshold", "values")):
        raise SettingError(f"{name}: its arrays must all have one row per node.")
    if out["values"].shape != (n, k) or not np.isfinite(out["values"]).all():
        raise SettingError(f"{name}.values must be finite class fractions, one column a class.")
    left, right, feature = out["left"], out["right"], out["feature"]
    leaf = left < 0
    inner = np.nonzero(~leaf)[0]  # children come after their parent: every path ends
    inner_ok = all(((c[inner] > inner) & (c[inner] < n)).all() for c in (left, right))
    if (not inner_ok or (right[leaf] >= 0).any()
            or ((feature[~leaf] < 0) | (feature[~leaf] >= t["n_features"])).any()
            or not np.isfinite(out["threshold"][~leaf]).all()):
        raise SettingError(f"{name}: its nodes do not form a tree.")
    return out


def with_forest(region, forest, image, keep_probabilities: bool):
    """``region`` (a :class:`.RegionDone` with the network's probabilities) with the forest's
    probabilities of the same voxels averaged in: its labels the argmax of the average (class
    indices), its probabilities the average, or None when not asked for. A one-channel
    (sigmoid) network's probability is of the second class."""
    from .forest import blocks, predict_region
    from .views import ChannelView

    source = image if len(image.shape) == 4 else ChannelView(image)
    shape = tuple(s.stop - s.start for s in region.slices)
    p_forest = np.empty((forest.n_classes,) + shape, np.float32)
    for part in blocks(shape):  # the features of one forest block at a time: memory bounded
        where = tuple(slice(r.start + p.start, r.start + p.stop)
                      for r, p in zip(region.slices, part))
        p_forest[(slice(None),) + part] = predict_region(forest, source, where)
    p_net = region.probabilities
    if p_net.shape[0] == 1:
        p = (p_net[0] + p_forest[1]) / 2
        labels, probs = (p > 0.5).astype(region.labels.dtype), p[None]
    else:
        probs = (p_net + p_forest) / 2
        labels = probs.argmax(0).astype(region.labels.dtype)
    return replace(region, labels=labels, probabilities=probs if keep_probabilities else None)
