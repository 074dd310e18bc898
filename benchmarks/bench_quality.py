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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, precision_name, table
from _strokes import add_strokes, candidates, random_starts, uncertain_starts
from _volumes import CLASS_NAMES, VOLUMES, make_volume

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config
from napari_seg3d.engine.budget import ITERATIONS_CAP
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.plan import plan_training
from napari_seg3d.engine.prediction.uncertainty import uncertainty_map
from napari_seg3d.engine.training.scribbles import simulate_scribbles

ALL_VOLUMES = ("nuclei",) + VOLUMES
METHODS = {"forest": "forest", "ours": "ours", "plain": "ours (plain)",
           "2.5d-fast": "ours 2.5D fast", "2.5d": "ours 2.5D three", "2.5d-best": "ours 2.5D best"}
PLANES_OF = {"2.5d-fast": "fast", "2.5d": "three", "2.5d-best": "best"}
FIGURE_DIR = Path(__file__).parent / "images"

NOTES = """\
Notes:
- Every method of a volume and seed learns from the same strokes; Dice against the dense truth
  over every voxel, strokes included. 'mean Dice' averages the classes.
- forest: ilastik-style pixel classifier. Image normalised to [0, 1] by its 0.5/99.5
  percentiles, skimage multiscale_basic_features (intensity, edges, texture; sigma 0.7 to 5),
  RandomForestClassifier(100 trees, n_jobs=-1) fit on the annotated voxels; time = features +
  fit + predict.
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


@dataclass(frozen=True)
class Case:
    """One volume and its strokes: ``image`` ``(Z, Y, X)``, ``truth`` ``(Z, Y, X)`` uint8 with values
    1..K, ``labels`` ``(Z, Y, X)`` strokes (0 = not annotated, else the class value)."""

    name: str
    seed: int
    image: np.ndarray
    truth: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    class_names: tuple[str, ...]

    @property
    def classes(self) -> list[int]:
        return list(range(1, len(self.class_names) + 1))

    @property
    def annotated_pct(self) -> float:
        return 100.0 * float(np.count_nonzero(self.labels)) / self.labels.size


def load_case(name: str, seed: int) -> Case:
    """The volume ``name`` with its strokes for ``seed``.

    ``nuclei``: the sample (31, 61, 57) and the strokes of ``load_nuclei`` (1 stroke per class
    per slice, 3 slices per axis, length 9; seed 0 gives exactly the sample's strokes). The
    synthetic volumes: 2 strokes per class per slice, 3 slices per axis, length 9, brush radius 1.
    """
    if name == "nuclei":
        from napari_seg3d._sample_data import load_nuclei, nuclei_scale

        image, truth, labels = load_nuclei()
        if seed != 0:
            labels = simulate_scribbles(truth - 1, slices_per_axis=3, strokes_per_class=1,
                                        length=9, seed=seed)
        return Case(name, seed, image, truth, labels, tuple(nuclei_scale()),
                    ("background", "nucleus"))
    image, truth, voxel_size = make_volume(name, seed)
    labels = simulate_scribbles(truth - 1, slices_per_axis=3, strokes_per_class=2, length=9,
                                seed=seed)
    return Case(name, seed, image, truth, labels, voxel_size, CLASS_NAMES[name])


# --- methods -------------------------------------------------------------------------------------

def forest_features(image: np.ndarray) -> np.ndarray:
    """ilastik-style features ``(Z, Y, X, F)`` float32 of a ``(Z, Y, X)`` image."""
    from skimage.feature import multiscale_basic_features

    lo, hi = np.percentile(image, (0.5, 99.5))
    x = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return multiscale_basic_features(x, intensity=True, edges=True, texture=True,
                                     sigma_min=0.7, sigma_max=5).astype(np.float32)


def run_forest(case: Case, seed: int) -> np.ndarray:
    """Random-forest labels ``(Z, Y, X)`` (the painted values) from the strokes of ``case``."""
    from sklearn.ensemble import RandomForestClassifier

    features = forest_features(case.image)
    painted = case.labels > 0
    clf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)
    clf.fit(features[painted], case.labels[painted])
    flat = features.reshape(-1, features.shape[-1])
    return clf.predict(flat).reshape(case.labels.shape).astype(case.labels.dtype)


PLAIN = {"smoothness": 0.0, "self_training": 0}  # the network on the strokes alone


def train_config(case: Case, iterations: int | None, seed: int, args, plain: bool = False,
                 dims: int = 3) -> TrainConfig:
    """The command line's training settings for ``case`` (its plan: ``iterations`` steps, or
    with None the time budget ``args.minutes``, the command line's default when that is None);
    ``plain``: the network alone."""
    settings = {"iterations": iterations, "minutes": getattr(args, "minutes", None),
                "seed": seed, "device": args.device, "amp": not args.no_amp, "dims": dims,
                "early_stop": not getattr(args, "no_early_stop", False),
                **(PLAIN if plain else {})}
    return plan_training(case.image.shape, case.labels, voxel_size=case.voxel_size,
                         settings=settings).train_config


def train(image: np.ndarray, labels: np.ndarray, cfg: TrainConfig, voxel_size, *, init=None,
          tag: str = "", dims: int = 3):
    """Run a :class:`Trainer` to the end; its best model. Progress lines go to stderr."""
    model_config = None
    if dims == 2:
        k = len(np.unique(labels[labels > 0]))
        model_config = default_model_config(1, k, cfg.patch_size, voxel_size, dims=2)
    trainer = Trainer(image, labels, cfg, voxel_size=voxel_size, init=init,
                      model_config=model_config)
    gen = trainer.run()
    t0 = time.perf_counter()
    while True:
        try:
            p = next(gen)
        except StopIteration as done:
            _RUNS.append(done.value)
            return done.value.best
        if p.val_dice is not None:
            dice = " ".join(f"{d:.3f}" for d in p.val_dice)
            log(f"  {tag} it {p.iteration}/{p.iterations} loss {p.loss:.3f} val Dice {dice} "
                f"({time.perf_counter() - t0:.0f} s)")


_RUNS: list = []  # the TrainResult of every training, for the steps it took


def run_ours(case: Case, args, seed: int, plain: bool = False) -> np.ndarray:
    """Labels ``(Z, Y, X)`` from our training on the strokes of ``case``."""
    cfg = train_config(case, args.iterations, seed, args, plain)
    model = train(case.image, case.labels, cfg, case.voxel_size,
                  tag=f"{case.name} {'plain' if plain else 'ours'}")
    return model.predict(case.image, device=args.device)


_SLICE_MODELS: dict[tuple[str, int], tuple] = {}


def slice_model(case: Case, args):
    """The 2.5D model of ``case`` and its training seconds, trained once for the three modes."""
    key = (case.name, case.seed)
    if key not in _SLICE_MODELS:
        t0 = time.perf_counter()
        cfg = train_config(case, args.iterations, case.seed, args, dims=2)
        model = train(case.image, case.labels, cfg, case.voxel_size, tag=f"{case.name} 2.5D",
                      dims=2)
        _SLICE_MODELS[key] = (model, time.perf_counter() - t0)
    return _SLICE_MODELS[key]


def run_method(method: str, case: Case, args) -> dict:
    """Dice per class, mean Dice and wall seconds of ``method`` on ``case``."""
    t0 = time.perf_counter()
    if method in PLANES_OF:
        model, train_seconds = slice_model(case, args)
        t0 = time.perf_counter() - train_seconds  # each mode: the one training + its prediction
        pred = model.predict(case.image, device=args.device, planes=PLANES_OF[method])
    elif method == "forest":
        pred = run_forest(case, case.seed)
    else:
        pred = run_ours(case, args, case.seed, plain=method == "plain")
    seconds = time.perf_counter() - t0
    dice = dice_scores(pred, case.truth, case.classes)
    record = {"dice": dice, "mean_dice": float(np.nanmean(dice)), "seconds": seconds}
    if method != "forest" and _RUNS:
        run = _RUNS[-1]
        record.update(iterations=run.last.iteration, planned=run.last.train_config.iterations,
                      ended_early=run.ended_early,
                      step_seconds=run.last.history.get("step_seconds"))
    return record


# --- active learning -----------------------------------------------------------------------------

def predict_with_uncertainty(model, image: np.ndarray, device: str):
    """Labels ``(Z, Y, X)`` and the uncertainty map ``(Z, Y, X)`` of ``model`` on ``image``."""
    probs = model.predict(image, probabilities=True, device=device)
    labels = np.asarray(model.class_values)[probs.argmax(0)]
    return labels, uncertainty_map(probs)


def active_learning(case: Case, args) -> list[dict]:
    """Rounds of strokes where the model is least sure against random strokes of the same size.

    Round 0 trains on the initial strokes (shared by both arms); each later round adds
    ``args.al_strokes`` strokes and trains again, from the previous round's model
    (``--al-scratch``: from scratch). Returns one record per arm and round.
    """
    cfg = train_config(case, args.al_iterations, case.seed, args)
    scratch = args.al_scratch
    t0 = time.perf_counter()
    model = train(case.image, case.labels, cfg, case.voxel_size, tag=f"AL {case.name} round 0")
    pred, unsure = predict_with_uncertainty(model, case.image, args.device)
    first = {"labels": case.labels, "model": model, "pred": pred, "unsure": unsure,
             "seconds": time.perf_counter() - t0}
    records = []
    for arm in ("uncertainty", "random"):
        state = dict(first)
        rng = np.random.default_rng([case.seed, 7, arm == "random"])
        for rnd in range(args.al_rounds + 1):
            if rnd > 0:
                t0 = time.perf_counter()
                allowed = candidates(state["labels"], args.al_margin)
                if arm == "uncertainty":
                    starts = uncertain_starts(state["unsure"], allowed, args.al_strokes)
                else:
                    starts = random_starts(allowed, args.al_strokes, rng)
                labels = add_strokes(state["labels"], case.truth, starts, rng,
                                     length=args.al_length)
                model = train(case.image, labels, cfg, case.voxel_size,
                              init=None if scratch else state["model"],
                              tag=f"AL {case.name} {arm} round {rnd}")
                pred, unsure = predict_with_uncertainty(model, case.image, args.device)
                state = {"labels": labels, "model": model, "pred": pred, "unsure": unsure,
                         "seconds": time.perf_counter() - t0}
            dice = dice_scores(state["pred"], case.truth, case.classes)
            records.append({"volume": case.name, "seed": case.seed, "arm": arm, "round": rnd,
                            "annotated_voxels": int(np.count_nonzero(state["labels"])),
                            "annotated_pct": 100.0 * np.count_nonzero(state["labels"])
                            / state["labels"].size,
                            "dice": dice, "mean_dice": float(np.nanmean(dice)),
                            "mean_uncertainty": float(state["unsure"].mean()),
                            "seconds": state["seconds"]})
            log(f"AL {case.name} seed {case.seed} {arm} round {rnd}: mean Dice "
                f"{records[-1]['mean_dice']:.3f}, {records[-1]['annotated_voxels']} voxels painted")
    return records


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

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
