"""The volumes, strokes and methods of ``bench_quality.py``: the cases (a volume, its truth and
its strokes), the forest, our training (3D, plain, 2.5D) and the active-learning rounds."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
from _strokes import add_strokes, candidates, random_starts, uncertain_starts
from _volumes import CLASS_NAMES, make_volume

from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, run_to_end
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.plan import plan_training
from napari_seg3d.engine.prediction.uncertainty import uncertainty_map
from napari_seg3d.engine.training.scribbles import simulate_scribbles

METHODS = {"forest": "forest", "seg3d-forest": "our forest", "ours": "ours",
           "plain": "ours (plain)",
           "2.5d-fast": "ours 2.5D fast", "2.5d": "ours 2.5D three", "2.5d-best": "ours 2.5D best"}
PLANES_OF = {"2.5d-fast": "fast", "2.5d": "three", "2.5d-best": "best"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def run_seg3d_forest(case: Case, seed: int) -> np.ndarray:
    """Labels ``(Z, Y, X)`` from the plugin's own random forest on the strokes of ``case``."""
    from napari_seg3d.engine.normalization import compute_normalization
    from napari_seg3d.engine.training.forest import fit_forest, forest_predict

    image = case.image[None]
    values = np.array(case.classes)
    index = np.searchsorted(values, case.labels) + 1
    index[case.labels == 0] = 0
    forest = fit_forest(image, index.astype(np.int16), compute_normalization(image),
                        spacing=case.voxel_size, seed=seed)
    probs = forest_predict(forest, image)
    classes = np.asarray(getattr(forest, "classes", range(forest.n_classes)))
    return values[classes[probs.argmax(0)]].astype(case.labels.dtype)


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
    t0 = time.perf_counter()

    def show(p) -> None:
        if p.val_dice is not None:
            dice = " ".join(f"{d:.3f}" for d in p.val_dice)
            log(f"  {tag} it {p.iteration}/{p.iterations} loss {p.loss:.3f} val Dice {dice} "
                f"({time.perf_counter() - t0:.0f} s)")

    result = run_to_end(Trainer(image, labels, cfg, voxel_size=voxel_size, init=init,
                                model_config=model_config).run(), show)
    _RUNS.append(result)
    return result.best


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
    elif method == "seg3d-forest":
        pred = run_seg3d_forest(case, case.seed)
    else:
        pred = run_ours(case, args, case.seed, plain=method == "plain")
    seconds = time.perf_counter() - t0
    dice = dice_scores(pred, case.truth, case.classes)
    record = {"dice": dice, "mean_dice": float(np.nanmean(dice)), "seconds": seconds}
    if "forest" not in method and _RUNS:
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
