"""Segmentation quality from sparse strokes: our 3D U-Net training against an ilastik-style forest.

Every method learns from the SAME strokes (well under 1% of the voxels) and is scored by Dice
against the dense ground truth, on the nuclei sample and on synthetic volumes made hard on
purpose (thin anisotropic neurites; classes told apart by texture only, see ``_volumes.py``).

    python benchmarks/bench_quality.py --threads 1                      # 3 volumes x 3 methods
    python benchmarks/bench_quality.py --iterations 800 --methods ours  # the old default
    python benchmarks/bench_quality.py --volumes neurites --iterations 100 --methods forest,ours
    python benchmarks/bench_quality.py --active-learning --methods ""   # uncertainty vs random
    python benchmarks/bench_quality.py --figures                        # PNGs of the volumes

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, precision_name, table
from _quality_methods import (
    METHODS,
    PLAIN,
    Case,
    active_learning,
    load_case,
    log,
    run_method,
)
from _volumes import VOLUMES

from napari_seg3d.engine.budget import ITERATIONS_CAP

ALL_VOLUMES = ("nuclei",) + VOLUMES
FIGURE_DIR = Path(__file__).parent / "images"

NOTES = """\
Notes:
- Every method of a volume and seed learns from the same strokes; Dice against the dense truth
  over every voxel, strokes included. 'mean Dice' averages the classes.
- forest: ilastik-style pixel classifier. Image normalised to [0, 1] by its 0.5/99.5
  percentiles, skimage multiscale_basic_features (intensity, edges, texture; sigma 0.7 to 5),
  RandomForestClassifier(100 trees, n_jobs=-1) fit on the annotated voxels; time = features +
  fit + predict.
- our forest: the plugin's own forest (engine/training/forest.py: its features, at most 20000
  voxels a class, 100 trees), what the Train widget's instant preview and self-training use.
- ours: the command line's plan (plan_training: patch, batch, network; --iterations steps, or
  else the time budget, --minutes or the default 3 minutes on a CPU and 1 on a GPU, with early
  stop), the best model of the run predicts the volume; time = training + prediction; steps =
  the iterations trained (mean over seeds; 'early' counts the runs that ended early).
  ours (plain): the same without the edge-aware smoothness loss and self-training
  (smoothness=0, self_training=0: the network on the strokes alone).
- ours 2.5D: the same defaults with --dims 2 (a 2D U-Net trained on slices along z, y and x,
  patch and batch size from propose_patch_size / default_batch_size), trained once per volume
  and seed, predicting along z (fast), z, y and x (three) or the three axes x four rotations
  (best); time = that training + that prediction.
- With several seeds: Dice per class and time are means over seeds, 'min' is the worst seed's
  mean Dice; the seed changes the strokes, the synthetic volume and the training seed."""


# --- figures -------------------------------------------------------------------------------------

def save_figure(case: Case, path: Path) -> None:
    """A PNG of the middle z slice of ``case``: image, truth, and the strokes on that slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    z = case.image.shape[0] // 2
    colours = ListedColormap(["#000000", "#4477aa", "#ee6677", "#ccbb44", "#66ccee"])
    k = len(case.class_names)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.7), dpi=90)
    axes[0].imshow(case.image[z], cmap="gray")
    axes[0].set_title(f"{case.name}: image, z = {z}")
    axes[1].imshow(case.truth[z], cmap=colours, vmin=0, vmax=4, interpolation="nearest")
    axes[1].set_title("truth: " + ", ".join(f"{i + 1} {n}" for i, n in enumerate(case.class_names)),
                      fontsize=8)
    strokes = np.ma.masked_equal(case.labels[z], 0)
    axes[2].imshow(case.image[z], cmap="gray")
    axes[2].imshow(strokes, cmap=colours, vmin=0, vmax=4, interpolation="nearest")
    axes[2].set_title(f"strokes on this slice ({case.annotated_pct:.2f}% of the volume)",
                      fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{case.image.shape} voxels, voxel size {case.voxel_size}, {k} classes",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------------

def names(text: str, allowed, what: str) -> list[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from "
                                         f"{', '.join(allowed)}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--volumes", default=",".join(ALL_VOLUMES),
                   type=lambda t: names(t, ALL_VOLUMES, "volume"))
    p.add_argument("--methods", default="forest,ours,plain",
                   type=lambda t: names(t, METHODS, "method"),
                   help="forest, ours, plain (ours without smoothness and self-training), "
                        "2.5d-fast, 2.5d, 2.5d-best (a 2D network on slices, by planes); "
                        "empty: none")
    p.add_argument("--seeds", default="0", type=lambda t: [int(s) for s in t.split(",")],
                   help="comma-separated; each seed changes strokes, synthetic volume, training")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations of ours (default: the command line's plan, a time "
                        "budget)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget of ours when --iterations is not given (default: the "
                        "command line's, 3 minutes on a CPU, 1 on a GPU)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="train ours to the last step (as the old 800-iteration default did)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-amp", action="store_true",
                   help="train and predict in float32 (default: mixed precision, as the command "
                        "line: float16 on CUDA, bfloat16 on a CPU with native bfloat16)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    p.add_argument("--figures", action="store_true",
                   help=f"write a PNG of each synthetic volume to {FIGURE_DIR} and exit")
    al = p.add_argument_group("active learning")
    al.add_argument("--active-learning", action="store_true",
                    help="also compare strokes where the model is least sure with random strokes")
    al.add_argument("--al-volumes", default="nuclei",
                    type=lambda t: names(t, ALL_VOLUMES, "volume"))
    al.add_argument("--al-rounds", type=int, default=3)
    al.add_argument("--al-strokes", type=int, default=6, help="strokes added per round")
    al.add_argument("--al-length", type=int, default=9, help="steps of each added stroke")
    al.add_argument("--al-iterations", type=int, default=200, help="training iterations a round")
    al.add_argument("--al-margin", type=int, default=0,
                    help="strokes of both arms start at least this many voxels inside the faces")
    al.add_argument("--al-scratch", action="store_true",
                    help="train each round from scratch (default: fine-tune the previous model)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def steps_text(args) -> str:
    if args.iterations is not None:
        return f"{args.iterations} iterations"
    minutes = args.minutes if args.minutes is not None else "the default"
    return f"time budget {minutes} minutes (at most {ITERATIONS_CAP} iterations)"


def dice_text(values) -> str:
    return " / ".join("-" if not np.isfinite(v) else f"{v:.3f}" for v in values)


def summarise(runs: list[dict]) -> dict:
    """Mean over seeds of the Dice per class, mean Dice and seconds; the worst seed's mean Dice."""
    dice = np.array([r["dice"] for r in runs], float)
    means = [r["mean_dice"] for r in runs]
    steps = [r["iterations"] for r in runs if "iterations" in r]
    return {"dice": np.nanmean(dice, axis=0).tolist(), "mean_dice": float(np.mean(means)),
            "min_mean_dice": float(np.min(means)),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "steps": float(np.mean(steps)) if steps else None,
            "ended_early": sum(r.get("ended_early") is not None for r in runs), "per_seed": runs}


def quality(args) -> tuple[list[list], dict]:
    """Run every method on every volume and seed; the table rows and the JSON figures."""
    methods = list(args.methods)
    rows, figures = [], {}
    for name in args.volumes:
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        annotated = []
        for seed in args.seeds:
            case = load_case(name, seed)
            annotated.append(case.annotated_pct)
            log(f"{name} seed {seed}: {case.image.shape}, voxel size {case.voxel_size}, "
                f"{np.count_nonzero(case.labels)} voxels annotated ({case.annotated_pct:.3f}%)")
            for method in methods:
                log(f"{name} seed {seed}: {METHODS[method]} ...")
                result = {"seed": seed, **run_method(method, case, args)}
                runs[method].append(result)
                log(f"{name} seed {seed}: {METHODS[method]} mean Dice {result['mean_dice']:.3f} "
                    f"({dice_text(result['dice'])}) in {result['seconds']:.1f} s")
        figures[name] = {"shape": list(case.image.shape), "voxel_size": list(case.voxel_size),
                         "classes": list(case.class_names),
                         "annotated_pct": float(np.mean(annotated)), "methods": {}}
        for method in methods:
            s = summarise(runs[method])
            figures[name]["methods"][METHODS[method]] = s
            row = [name, METHODS[method], dice_text(s["dice"]), s["mean_dice"]]
            if len(args.seeds) > 1:
                row.append(s["min_mean_dice"])
            steps = "-" if s["steps"] is None else f"{s['steps']:.0f}" + (
                f" ({s['ended_early']} early)" if s["ended_early"] else "")
            rows.append(row + [s["seconds"], steps, float(np.mean(annotated))])
    return rows, figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.figures:
        for name in VOLUMES:
            path = FIGURE_DIR / f"quality_{name}.png"
            save_figure(load_case(name, args.seeds[0]), path)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")
        return 0
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    load = LoadMonitor()
    t_start = time.perf_counter()
    rows, figures = quality(args) if args.methods else ([], {})
    al_records = []
    if args.active_learning:
        for name in args.al_volumes:
            for seed in args.seeds:
                al_records += active_learning(load_case(name, seed), args)
    total = time.perf_counter() - t_start

    env = machine(device)
    print(f"Segmentation quality from sparse strokes: {len(args.seeds)} seed(s) "
          f"{args.seeds}, ours {steps_text(args)}, device {device.type}, "
          f"{precision_name(device, not args.no_amp)}")
    print(f"{env['device_name']}, {env['cpu_count']} CPUs, torch {torch.__version__} "
          f"({env['torch_threads']} threads); total {total:.0f} s")
    if rows:
        print()
        headers = ["volume", "method", "Dice per class", "mean Dice"]
        if len(args.seeds) > 1:
            headers.append("min over seeds")
        print(table(headers + ["wall time s", "steps", "annotated %"], rows))
        for name, f in figures.items():
            print(f"  {name}: classes {' / '.join(f['classes'])}")
        print(NOTES)
    if al_records:
        print()
        how = "from scratch" if args.al_scratch else "fine-tuned from the previous round"
        print(f"Active learning: {args.al_rounds} rounds of {args.al_strokes} strokes (length "
              f"{args.al_length}, radius 1) at the most uncertain voxels vs at random voxels; "
              f"{args.al_iterations} iterations a round, {how}; starts at least "
              f"{args.al_margin} voxels inside the volume's faces")
        print(table(["volume", "seed", "arm", "round", "annotated voxels", "annotated %",
                     "Dice per class", "mean Dice", "seconds"],
                    [[r["volume"], r["seed"], r["arm"], r["round"], r["annotated_voxels"],
                      r["annotated_pct"], dice_text(r["dice"]), r["mean_dice"], r["seconds"]]
                     for r in al_records]))
    note = load.note()
    if note:
        print(note)
    record = {"benchmark": "quality", **env, **load.summary(), "seeds": args.seeds,
              "iterations": args.iterations, "minutes": args.minutes,
              "early_stop": not args.no_early_stop, "plain": PLAIN,
              "precision": precision_name(device, not args.no_amp),
              "total_seconds": total, "volumes": figures}
    if al_records:
        record["active_learning"] = {"rounds": args.al_rounds, "strokes": args.al_strokes,
                                     "length": args.al_length, "margin": args.al_margin,
                                     "iterations": args.al_iterations,
                                     "scratch": args.al_scratch, "records": al_records}
    line = json_line(record)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
