"""The training report: one PNG with the loss and validation Dice curves and, on the slices with
the most strokes, the image, the strokes and the model's prediction side by side.

Headless (matplotlib's Agg canvas): the command line writes it beside the model file, the Train
widget shows it. Only the slabs around the chosen slices are predicted, so it takes seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure


REPORT_SLAB = 64  # z slices of the strokes read at a time (a chunk's depth, typically)


def report_slices(labels, count: int = 3) -> list[int]:
    """The ``count`` z indices with the most painted voxels (held-out first among equals);
    ``labels`` (numpy or lazy) is read :data:`REPORT_SLAB` slices at a time."""
    n = labels.shape[0]
    painted = np.concatenate([
        np.count_nonzero(np.asarray(labels[z:z + REPORT_SLAB]).reshape(-1, *labels.shape[1:]),
                         axis=(1, 2)) for z in range(0, n, REPORT_SLAB)])
    order = np.argsort(-painted, kind="stable")
    chosen = [int(z) for z in order[:count] if painted[z] > 0]
    return sorted(chosen or [labels.shape[0] // 2])


REPORT_EDGE = 192  # largest y/x extent of a report panel (a 464^2 slab took a minute a slice)


def report_box(strokes2d: np.ndarray, edge: int = REPORT_EDGE) -> tuple[slice, slice]:
    """The ``(y, x)`` crop a report panel shows: at most ``edge`` voxels a side, centred on the
    slice's strokes (on the slice's centre without strokes), inside the slice."""
    box = []
    for axis, n in enumerate(strokes2d.shape):
        painted = np.flatnonzero(np.any(strokes2d != 0, axis=1 - axis))
        centre = (painted[0] + painted[-1] + 1) // 2 if painted.size else n // 2
        start = int(np.clip(centre - edge // 2, 0, max(n - edge, 0)))
        box.append(slice(start, min(start + edge, n)))
    return box[0], box[1]


def _predict_slice(model, image, z: int, box: tuple[slice, slice], device) -> np.ndarray:
    """The model's labels on slice ``z`` inside ``box``, predicted with the prediction's defaults
    on a slab one patch deep around it (and only inside the box: the rest is not shown)."""
    depth = model.patch_size[0]
    n = image.shape[-3]
    start = int(np.clip(z - depth // 2, 0, max(n - depth, 0)))
    stop = min(start + depth, n)
    slab = np.asarray(image[start:stop, box[0], box[1]] if image.ndim == 3
                      else image[:, start:stop, box[0], box[1]])
    return model.predict(slab, device=device)[z - start]


def _plane(image, z: int, box: tuple[slice, slice]) -> np.ndarray:
    """Slice ``z`` of the first channel inside ``box``, read alone from a lazy source."""
    return np.asarray(image[z, box[0], box[1]] if image.ndim == 3 else image[0, z, box[0], box[1]],
                      np.float32)


def class_colors(values) -> list:
    """The RGBA colour napari's Labels layers give each label value (the annotations' and the
    prediction's colours in the viewer)."""
    from napari.utils.colormaps import label_colormap

    return [tuple(c) for c in label_colormap(49, seed=0.5).map(np.asarray(values, np.int64))]


def _overlay(ax, labels2d: np.ndarray, values) -> None:
    lut = {v: i + 1 for i, v in enumerate(values)}
    index = np.zeros(labels2d.shape, int)
    for v, i in lut.items():
        index[labels2d == v] = i
    ax.imshow(np.ma.masked_equal(index, 0), cmap=ListedColormap(class_colors(values) or ["none"]),
              alpha=0.55, vmin=1, vmax=max(len(values), 1), interpolation="nearest")


def _curves(ax, history: dict, names, colors) -> None:
    loss = np.asarray(history.get("loss", []), float)
    if loss.size:
        ax.plot(np.arange(1, loss.size + 1), loss, color="0.7", lw=0.6, label="loss")
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    for i, start in enumerate(_rounds(history, loss.size)):
        ax.axvline(start, color="0.4", ls="--", lw=0.8, label="self-training" if i == 0 else None)
    if loss.size:
        ax.legend(fontsize=7, loc="upper right")
    dice = np.asarray(history.get("val_dice", []), float)
    if dice.size:
        twin = ax.twinx()
        its = history.get("val_iteration", [])
        for k in range(dice.shape[1]):
            twin.plot(its, dice[:, k], "o-", ms=3, color=colors[k % len(colors)],
                      label=f"val Dice {names[k]}")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("validation Dice")
        twin.legend(fontsize=7, loc="lower right")


def _rounds(history: dict, iterations: int) -> list[int]:
    return [r for r in history.get("self_training", []) if r <= iterations]


def training_report(model, image, labels, *, title: str = "", device=None) -> Figure:
    """A figure: curves on top, then image | strokes | prediction for each report slice.

    Args:
        model: a trained :class:`SegmentationModel` (its ``history`` gives the curves).
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array (or lazy source: only the slabs around
            the report slices are read) the model was trained on. Each slice shows at most
            :data:`REPORT_EDGE` voxels a side around its strokes, so large volumes take seconds.
        labels: ``(Z, Y, X)`` the strokes (0 = not annotated), an array or lazy source (read
            a slab at a time: a volume-sized copy is never made).
        title: first line of the figure title.
        device: where to predict (None: automatic).
    """
    slices = report_slices(labels)
    strokes = {z: np.asarray(labels[z]) for z in slices}
    fig = Figure(figsize=(10, 3 + 3 * len(slices)), dpi=90)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + len(slices), 3, height_ratios=[0.8] + [1] * len(slices))
    _curves(fig.add_subplot(grid[0, :]), model.history, model.class_names,
            class_colors(model.class_values))
    boxes = {z: report_box(strokes[z]) for z in slices}
    planes = {z: _plane(image, z, boxes[z]) for z in slices}
    lo, hi = np.percentile(np.concatenate([p.ravel() for p in planes.values()]), (0.5, 99.5))
    for row, z in enumerate(slices, start=1):
        box = boxes[z]
        pred = _predict_slice(model, image, z, box, device)
        where = f"z = {z}" + ("" if planes[z].shape == tuple(labels.shape[1:]) else
                              f", y {box[0].start}-{box[0].stop}, x {box[1].start}-{box[1].stop}")
        for col, (overlay, name) in enumerate(((None, "image"), (strokes[z][box], "strokes"),
                                               (pred, "prediction"))):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(planes[z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if overlay is not None:
                _overlay(ax, overlay, model.class_values)
            ax.set_title(f"{name}, {where}", fontsize=9)
            ax.set_axis_off()
    best = model.history.get("best_val_dice")
    subtitle = f"{model.iteration} iterations"
    if best:
        subtitle += "; validation Dice " + ", ".join(
            f"{n} {d:.3f}" for n, d in zip(model.class_names, best))
    fig.suptitle(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    fig.tight_layout()
    return fig


def save_report(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a temporary file renamed into place), after
    checking the free space; raises an :class:`.OutputError` with a sentence when it cannot."""
    from .engine.io._publish import write_files
    from .engine.io._space import cannot_write

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_files([(path, buffer.getvalue())], cannot_write("the training report", path))
    return path
