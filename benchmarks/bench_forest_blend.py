"""How the model's random forest is averaged in: blend weights, and what held-out strokes would
choose, on bench_scale's volumes and the models bench_scale trained (run it first with
``--what ours``), side by side in one process.

    python benchmarks/bench_scale.py --sizes 1e7 --what ours     # volumes + models
    python benchmarks/bench_forest_blend.py                       # the tables

For each volume: the network's probabilities (no forest) once, then

1. weights: ``w * network + (1 - w) * forest`` for w from 0 (the forest alone) to 1 (the
   network alone), scored against the dense ground truth (0.5 is what a prediction does);
2. held-out strokes: a forest fit on the training strokes only (the held-out blocks of the run
   left out, as the run drew them), scored at each weight on the held-out stroke voxels: the
   weight they would pick, and its dense Dice with the all-stroke forest;
3. trees: the prediction as ``napari-seg3d predict`` runs it (in memory, default settings) with
   the model's forest and with one of 32 trees fit on the same strokes (100 when the model's
   has 32), alternately twice each: seconds and Dice.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, table
from bench_overlap import dice

from napari_seg3d.engine import PredictConfig, load_model
from napari_seg3d.engine.training.forest import fit_forest, forest_predict
from napari_seg3d.engine.training.sampling import make_annotations

WEIGHTS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)  # of the network


def _stroke_dice(p: np.ndarray, target: np.ndarray) -> float:
    """Mean Dice over the classes of ``argmax(p)`` (K, N) against class indices ``target``."""
    pred = p.argmax(0)
    return float(np.mean([2 * np.sum((pred == c) & (target == c))
                          / max(1, np.sum(pred == c) + np.sum(target == c))
                          for c in range(p.shape[0])]))


def run_volume(volume: Path, strokes: Path, model_file: Path, kind: str) -> dict:
    model = load_model(model_file)
    tc = model.train_config
    with h5py.File(volume, "r") as f:
        image, truth = f["image"][...], f["truth"][...]
    with h5py.File(strokes, "r") as f:
        labels = f["labels"][...]
    lut, source = model.label_lut(), image[None]
    net = model.predict(image, PredictConfig(device="cpu", probabilities=True, forest=False))
    if net.shape[0] == 1:
        net = np.concatenate([1 - net, net])
    kept = forest_predict(model.forest, source)
    weights = {w: float(np.mean(dice(lut[(w * net + (1 - w) * kept).argmax(0)], truth)))
               for w in WEIGHTS}
    index = make_annotations(labels, tuple(model.class_values), tc.validation_fraction,
                             tc.seed).index
    held = index < 0
    train_only = fit_forest(source, np.where(index > 0, index, 0), model.normalization,
                            spacing=model.voxel_size, seed=tc.seed)
    p_train = forest_predict(train_only, source)[:, held]
    target = -index[held].astype(np.int64) - 1
    strokes_say = {w: _stroke_dice(w * net[:, held] + (1 - w) * p_train, target)
                   for w in WEIGHTS}
    picked = max(WEIGHTS, key=lambda w: (strokes_say[w], -abs(w - 0.5)))
    del net, kept, p_train
    full = np.abs(index)
    other = copy.copy(model)  # 32 trees, or 100 for a model that keeps 32 already
    other.forest = fit_forest(source, full, model.normalization, spacing=model.voxel_size,
                              seed=tc.seed, n_trees=32 if len(model.forest.trees) != 32 else 100)
    trees = {len(model.forest.trees): [], len(other.forest.trees): []}
    for m in (model, other, model, other):
        t0 = time.perf_counter()
        pred = m.predict(image, PredictConfig(device="cpu"))
        trees[len(m.forest.trees)].append((time.perf_counter() - t0,
                                           float(np.mean(dice(pred, truth)))))
    row = {"volume": kind, "weights": weights, "held_out_voxels": int(held.sum()),
           "strokes_say": strokes_say, "strokes_pick": picked,
           "trees": {str(k): v for k, v in trees.items()}}
    print(json_line(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench-scale-data"))
    parser.add_argument("--kinds", default="tissue,nuclei,textures")
    args = parser.parse_args()
    monitor = LoadMonitor()
    rows = []
    for run in sorted((args.data / "runs").glob("*")):
        kind = run.name.split("_")[0]
        volume, strokes = args.data / f"{run.name}.h5", args.data / f"{run.name}_strokes.h5"
        shape = [int(n) for n in run.name.split("_")[1].split("x")]
        if (kind in args.kinds.split(",") and np.prod(shape) < 5e7
                and (run / "model.pt").exists() and volume.exists() and strokes.exists()):
            rows.append(run_volume(volume, strokes, run / "model.pt", kind))
    if not rows:
        raise SystemExit(f"No trained 10^7 models under {args.data}/runs: run bench_scale.py "
                         "--what ours first.")
    print("Dense Dice of w * network + (1 - w) * forest (w = 0.5: what a prediction does):")
    print(table(["volume"] + [f"w={w:g}" for w in WEIGHTS],
                [[r["volume"]] + [f"{r['weights'][w]:.4f}" for w in WEIGHTS] for r in rows]))
    print("Held-out strokes (a forest fit without them) at each w, the w they pick, its dense Dice:")
    print(table(["volume", "voxels"] + [f"w={w:g}" for w in WEIGHTS] + ["pick", "dense at pick"],
                [[r["volume"], r["held_out_voxels"]]
                 + [f"{r['strokes_say'][w]:.4f}" for w in WEIGHTS]
                 + [f"{r['strokes_pick']:g}", f"{r['weights'][r['strokes_pick']]:.4f}"]
                 for r in rows]))
    print("Prediction with the model's forest and the other (two runs each, alternating):")
    lines = []
    for r in rows:
        for n, runs in r["trees"].items():
            lines.append([r["volume"], n, " / ".join(f"{s:.1f}" for s, _ in runs),
                          f"{np.mean([d for _, d in runs]):.4f}"])
    print(table(["volume", "trees", "seconds", "Dice"], lines))
    print(json_line({"benchmark": "forest_blend", "machine": machine(torch.device("cpu")),
                     "load": monitor.summary(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
