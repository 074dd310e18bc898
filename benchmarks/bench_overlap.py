"""Prediction settings on bench_scale's volumes: window overlap and window size, for the models
bench_scale trained (run it first with ``--what ours``), side by side in one process.

    python benchmarks/bench_scale.py --sizes 1e7 --what ours     # volumes + models
    python benchmarks/bench_overlap.py                            # the table

Each setting predicts the whole volume (in memory) with the model's forest averaged in, as the
command line does, and is scored against the dense ground truth. The anchor is the first row:
the training patch at overlap 0.5 (the default before 0.25). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, table

from napari_seg3d.engine import PredictConfig, load_model

SETTINGS = [  # (window: None = the training patch, or the y/x edge it is widened to; overlap)
    (None, 0.5), (None, 0.25), (80, 0.25), (80, 0.33)]


def widened(patch, edge: int) -> tuple[int, int, int]:
    """The patch scaled until its y/x edge is ``edge`` (z by the same factor), multiples of 8."""
    scale = edge / max(patch[1:])
    return tuple(max(8, 8 * round(p * scale / 8)) for p in patch)


def dice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    classes = [c for c in np.unique(truth) if c > 0]
    return [float(2 * np.count_nonzero((pred == c) & (truth == c))
                  / (np.count_nonzero(pred == c) + np.count_nonzero(truth == c))) for c in classes]


def run_volume(volume: Path, model_file: Path) -> list[dict]:
    model = load_model(model_file)
    with h5py.File(volume, "r") as f:
        image, truth = f["image"][...], f["truth"][...]
    rows = []
    for edge, overlap in SETTINGS:
        window = None if edge is None else widened(model.patch_size, edge)
        config = PredictConfig(overlap=overlap, window=window, device="cpu")
        t0 = time.perf_counter()
        pred = model.predict(image, config)
        seconds = time.perf_counter() - t0
        d = dice(pred, truth)
        rows.append({"volume": volume.stem, "window": model.prediction_window(image.shape, config),
                     "overlap": overlap, "seconds": seconds, "dice": float(np.mean(d)),
                     "per_class": d})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench-scale-data"))
    args = parser.parse_args()
    monitor = LoadMonitor()
    rows = []
    for run in sorted((args.data / "runs").glob("*")):
        volume = args.data / f"{run.name}.h5"
        if (run / "model.pt").exists() and volume.exists():
            rows += run_volume(volume, run / "model.pt")
    if not rows:
        raise SystemExit(f"No trained models under {args.data}/runs: run bench_scale.py "
                         "--what ours first.")
    anchors: dict = {}
    for r in rows:  # each volume's first row: the training patch at overlap 0.5
        anchors.setdefault(r["volume"], r)
    print(table(["volume", "window", "overlap", "seconds", "x anchor", "Dice", "- anchor"],
                [[r["volume"].split("_")[0], "x".join(map(str, r["window"])), r["overlap"],
                  f"{r['seconds']:.1f}", f"{r['seconds'] / anchors[r['volume']]['seconds']:.2f}",
                  f"{r['dice']:.4f}", f"{r['dice'] - anchors[r['volume']]['dice']:+.4f}"]
                 for r in rows]))
    print(json_line({"benchmark": "overlap", "machine": machine(torch.device("cpu")), "load": monitor.summary(),
                     "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
