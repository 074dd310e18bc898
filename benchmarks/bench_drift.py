"""Load without drift: memory of a long batch prediction and of a long training run.

Two runs, each in a fresh process: (a) ``iter_predict_files`` over many small TIFF volumes with a
model loaded from its file, as ``napari-seg3d predict`` does; (b) ``Trainer.run`` for many
iterations with the default training (validation every 50 iterations with a best-model
snapshot, edge-aware smoothness, 2 self-training rounds) on the nuclei sample. The process's
resident memory (RSS, psutil) is sampled after every file / every 10 iterations. After a
warm-up (the first 10% of the files or iterations: allocator pools, lazy imports, the first
snapshot) it should stay flat: target growth < 5% from the end of the warm-up to the end.

    python benchmarks/bench_drift.py                   # 200 files, 10,000 iterations (~5 min)
    python benchmarks/bench_drift.py --quick           # 40 files, 1,000 iterations (~1 min)
    python benchmarks/bench_drift.py --only train --iterations 3000 --tracemalloc

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from _common import LoadMonitor, json_line, machine, table, triple

TARGET_PCT = 5.0
MiB = 2.0 ** 20

NOTES = """\
Notes:
- RSS: resident memory of the run's process (psutil), after gc.collect(), at the end of the
  warm-up and at the end; growth % = (end / after warm-up - 1) x 100, target < {target:g}%.
- warm-up: the first {warmup:.0%} of the files / iterations. peak: the highest RSS sampled
  after the warm-up (every file / every 10 iterations, without gc.collect()).
- slope: least-squares RSS trend over the samples after the warm-up, per 100 files or per
  1000 iterations. largest step: the largest rise between two samples after the warm-up and
  where it ended (a one-time step, e.g. a lazy import, against a steady creep).
- objects: len(gc.get_objects()) after gc.collect(), end of warm-up -> end (Python objects
  tracked by the garbage collector; a leak of Python objects shows here first).
- s/unit: wall seconds per file / per iteration over the first and the last 10% after the
  warm-up (a run that slows down as it goes drifts too).
- training: scikit-learn is imported before the run ({preload}), as
  the first self-training round would import it halfway through; --no-preload leaves that
  one-time step in the figures.{tracemalloc}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--files", type=int, default=None, help="files predicted (default 200)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations (default 10000)")
    p.add_argument("--quick", action="store_true", help="40 files and 1000 iterations")
    p.add_argument("--only", choices=("predict", "train"), default=None,
                   help="run one of the two, in this process")
    p.add_argument("--shape", type=triple, default=triple("16,64,64"),
                   help="z,y,x of each predicted uint16 volume")
    p.add_argument("--patch", type=triple, default=triple("8,16,16"),
                   help="training patch (also the prediction window)")
    p.add_argument("--base-filters", type=int, default=4, help="U-Net filters at level 1")
    p.add_argument("--levels", type=int, default=2, help="U-Net levels")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the run")
    p.add_argument("--no-preload", action="store_true",
                   help="training: do not import scikit-learn before the run (the first "
                        "self-training round then imports it mid-run, a one-time step in RSS)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also trace Python allocations (slower) and print where they grew")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.files = args.files or (40 if args.quick else 200)
    args.iterations = args.iterations or (1000 if args.quick else 10_000)
    return args


class Sampler:
    """RSS and wall time per unit of work; RSS, Python objects and (optionally) tracemalloc
    figures at the end of the warm-up and at the end."""

    def __init__(self, total: int, warmup: int, trace: bool) -> None:
        import psutil

        self.process = psutil.Process()
        self.total, self.warmup, self.trace = total, warmup, trace
        self.units: list[int] = []
        self.rss: list[float] = []
        self.times: list[float] = []
        self.marks: dict[str, dict] = {}
        self.snapshots: dict[str, tracemalloc.Snapshot] = {}
        self.start = time.perf_counter()

    def sample(self, unit: int) -> None:
        self.units.append(unit)
        self.rss.append(self.process.memory_info().rss / MiB)
        self.times.append(time.perf_counter() - self.start)
        if unit == self.warmup:
            t0 = time.perf_counter()
            self.mark("warmup")
            self.start += time.perf_counter() - t0  # the mark's own time is not the run's

    def mark(self, name: str) -> None:
        gc.collect()
        mark = {"rss_mib": self.process.memory_info().rss / MiB, "objects": len(gc.get_objects())}
        if self.trace:
            mark["traced_mib"] = tracemalloc.get_traced_memory()[0] / MiB
            self.snapshots[name] = tracemalloc.take_snapshot()
        self.marks[name] = mark

    def summary(self) -> dict:
        self.mark("end")
        units, rss, times = (np.asarray(v, float) for v in (self.units, self.rss, self.times))
        after = units >= self.warmup
        slope = float(np.polyfit(units[after], rss[after], 1)[0]) if after.sum() > 2 else 0.0
        per_unit = np.diff(times, prepend=0.0) / np.diff(units, prepend=0.0)
        tail = max(1, int(after.sum() * 0.1))
        first = per_unit[after][:tail]
        last = per_unit[after][-tail:]
        steps = np.diff(rss[after])
        big = int(np.argmax(steps)) if steps.size else 0
        warm, end = self.marks["warmup"], self.marks["end"]
        out = {
            "units": self.total, "warmup_units": self.warmup,
            "rss_warmup_mib": warm["rss_mib"], "rss_end_mib": end["rss_mib"],
            "growth_pct": 100.0 * (end["rss_mib"] / warm["rss_mib"] - 1.0),
            "growth_mib": end["rss_mib"] - warm["rss_mib"],
            "rss_first_sample_mib": float(rss[0]), "rss_peak_after_warmup_mib": float(rss[after].max()),
            "slope_mib_per_unit": slope,
            "largest_step_mib": float(steps[big]) if steps.size else 0.0,
            "largest_step_at": int(units[after][big + 1]) if steps.size else None,
            "objects_warmup": warm["objects"], "objects_end": end["objects"],
            "seconds_per_unit_first": float(first.mean()), "seconds_per_unit_last": float(last.mean()),
            "seconds": float(times[-1]),
            "rss_series_mib": [round(float(v), 2) for v in rss[:: max(1, len(rss) // 50)]],
        }
        out["pass"] = out["growth_pct"] < TARGET_PCT
        if self.trace:
            out["traced_warmup_mib"], out["traced_end_mib"] = warm["traced_mib"], end["traced_mib"]
            stats = self.snapshots["end"].compare_to(self.snapshots["warmup"], "lineno")
            out["traced_top_growth"] = [
                {"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                 "kib": s.size_diff / 1024, "count": s.count_diff} for s in stats[:10]]
        return out


# --- (a) batch prediction ---------------------------------------------------------------------

def _volume(shape, rng: np.random.Generator) -> np.ndarray:
    """A uint16 volume of a few bright balls on a noisy background."""
    z, y, x = np.indices(shape, dtype=np.float32)
    img = np.zeros(shape, np.float32)
    for _ in range(4):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        r = rng.uniform(3, 8)
        img += 600.0 * (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r)
    img += rng.normal(200, 40, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _tiny_model(args, folder: Path):
    """A model trained for 30 iterations on one volume, saved and loaded back as the CLI does."""
    from napari_seg3d.engine import (
        TrainConfig,
        Trainer,
        default_model_config,
        load_model,
        save_model,
    )
    from napari_seg3d.engine.training.scribbles import simulate_scribbles

    rng = np.random.default_rng(args.seed)
    image = _volume(args.shape, rng)
    truth = (image > 500).astype(np.uint8)
    labels = simulate_scribbles(truth, slices_per_axis=2, strokes_per_class=2, length=10,
                                seed=args.seed)
    cfg = TrainConfig(patch_size=args.patch, iterations=30, device="cpu", seed=args.seed,
                      self_training=0)
    mc = default_model_config(1, 2, args.patch, base_filters=args.base_filters, levels=args.levels)
    gen = Trainer(image, labels, cfg, model_config=mc).run()
    while True:
        try:
            next(gen)
        except StopIteration as done:
            model = done.value.best
            break
    return load_model(save_model(model, folder / "model.pt"))


def run_predict(args) -> dict:
    from napari_seg3d.engine.io import write_volume
    from napari_seg3d.engine.prediction.batch import FileResult, iter_predict_files

    with tempfile.TemporaryDirectory(prefix="seg3d-drift-") as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(args.seed + 1)
        inputs = []
        for i in range(args.files):
            path = folder / "in" / f"vol{i:04d}.tif"
            write_volume(path, _volume(args.shape, rng))
            inputs.append(str(path))
        model = _tiny_model(args, folder)
        warmup = max(1, round(args.warmup * args.files))
        sampler = Sampler(args.files, warmup, args.tracemalloc)
        done = 0
        for item in iter_predict_files(model, inputs, folder / "out", fmt="tif", overwrite=True,
                                       device="cpu", batch_size=4):
            if isinstance(item, FileResult):
                if item.status != "done":
                    raise SystemExit(f"{item.input}: {item.status} ({item.reason})")
                done += 1
                sampler.sample(done)
        result = sampler.summary()
        result["outputs"] = len(list((folder / "out").glob("*_labels.tif")))
    result.update(windows_per_file=_windows(args.shape, args.patch), unit="file")
    return result


def _windows(shape, patch, overlap: float = 0.5) -> int:
    n = 1
    for s, p in zip(shape, patch):
        step = max(1, int(p * (1 - overlap)))
        n *= 1 if s <= p else -(-(s - p) // step) + 1
    return n


# --- (b) training -----------------------------------------------------------------------------

def run_train(args) -> dict:
    from napari_seg3d._sample_data import load_nuclei
    from napari_seg3d.engine import TrainConfig, Trainer, default_model_config

    preload = None
    if not args.no_preload:  # what the first self-training round would import at mid-run
        import psutil

        before = psutil.Process().memory_info().rss
        import sklearn.ensemble  # noqa: F401

        import napari_seg3d.engine.training.forest  # noqa: F401
        gc.collect()
        preload = (psutil.Process().memory_info().rss - before) / MiB
    image, _, strokes = load_nuclei()
    cfg = TrainConfig(patch_size=args.patch, iterations=args.iterations, device="cpu",
                      seed=args.seed, early_stop=False)  # every step, for the drift
    mc = default_model_config(1, 2, args.patch, base_filters=args.base_filters, levels=args.levels)
    trainer = Trainer(image, strokes, cfg, model_config=mc)
    warmup = max(10, round(args.warmup * args.iterations) // 10 * 10)
    sampler = Sampler(args.iterations, warmup, args.tracemalloc)
    gen = trainer.run()
    while True:
        try:
            progress = next(gen)
        except StopIteration as done:
            result = done.value
            break
        if progress.iteration % 10 == 0:
            sampler.sample(progress.iteration)
    summary = sampler.summary()
    summary.update(unit="iteration", preload_mib=preload,
                   final_loss=float(np.mean(result.last.history["loss"][-50:])),
                   best_val_dice=result.best.history.get("best_val_dice"),
                   validations=len(result.last.history.get("val_dice", [])),
                   self_training=result.last.history.get("self_training", []))
    return summary


# --- the two runs, each in a fresh process ------------------------------------------------------

def run_child(args, which: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", which,
           "--files", str(args.files), "--iterations", str(args.iterations),
           "--shape", ",".join(map(str, args.shape)), "--patch", ",".join(map(str, args.patch)),
           "--base-filters", str(args.base_filters), "--levels", str(args.levels),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed)]
    cmd += ["--tracemalloc"] * args.tracemalloc + ["--no-preload"] * args.no_preload
    print(f"running {which} ...", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _row(name: str, r: dict, per: int) -> list:
    unit = r["unit"] + "s"
    return [name, f"{r['units']} {unit}", f"{r['warmup_units']} {unit}", r["rss_warmup_mib"],
            r["rss_end_mib"], round(r["growth_pct"], 2), r["rss_peak_after_warmup_mib"],
            round(r["slope_mib_per_unit"] * per, 3),
            f"{r['largest_step_mib']:.2f} at {r['largest_step_at']}",
            f"{r['objects_warmup']} -> {r['objects_end']}",
            f"{r['seconds_per_unit_first']:.3g} -> {r['seconds_per_unit_last']:.3g}",
            f"< {TARGET_PCT:g}%", "PASS" if r["pass"] else "FAIL"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only:
        if args.tracemalloc:
            tracemalloc.start()
        result = run_predict(args) if args.only == "predict" else run_train(args)
        print(json_line({"benchmark": "drift", "run": args.only, **result}))
        return 0
    load = LoadMonitor()
    env = machine(torch.device("cpu"))
    results = {"predict": run_child(args, "predict"), "train": run_child(args, "train")}
    p, t = results["predict"], results["train"]
    print(f"Load without drift: (a) iter_predict_files over {args.files} TIFF volumes "
          f"{'x'.join(map(str, args.shape))} uint16 ({p['windows_per_file']} windows of "
          f"{'x'.join(map(str, args.patch))} each); (b) Trainer.run for {args.iterations} "
          f"iterations on the nuclei sample (31x61x57), patch {'x'.join(map(str, args.patch))}, "
          f"batch 2, default training (validation every 50, smoothness, self-training at "
          f"{', '.join(map(str, t['self_training']))}). U-Net levels {args.levels} / base "
          f"{args.base_filters}; each run in a fresh process.")
    print(f"{env['device_name']}, {env['cpu_count']} CPUs, torch {torch.__version__} "
          f"({args.threads} thread{'s' * (args.threads > 1)})")
    print()
    print(table(["run", "length", "warm-up", "RSS after warm-up MiB", "RSS at end MiB",
                 "growth %", "peak MiB", "slope MiB/100 files or /1000 it", "largest step MiB",
                 "objects",
                 "s/unit first -> last", "target", "result"],
                [_row("batch prediction", p, 100), _row("training", t, 1000)]))
    print()
    trace_note = ""
    if args.tracemalloc:
        trace_note = ("\n- tracemalloc: Python-heap growth after the warm-up, largest sites first. "
                      "Its snapshots\n  add ~100 MiB to the RSS at the end of the warm-up: quote "
                      "the RSS of a run without it.")
    preload = ("not preloaded" if t["preload_mib"] is None else
               f"+{t['preload_mib']:.0f} MiB of RSS, once per process")
    print(NOTES.format(target=TARGET_PCT, warmup=args.warmup, preload=preload,
                       tracemalloc=trace_note))
    if args.tracemalloc:
        for name, r in results.items():
            print(f"\n{name}: traced {r['traced_warmup_mib']:.2f} -> {r['traced_end_mib']:.2f} MiB")
            for s in r["traced_top_growth"][:6]:
                print(f"  {s['kib']:+9.1f} KiB {s['count']:+7d}  {s['where']}")
    note = load.note()
    if note:
        print(note)
    print(json_line({"benchmark": "drift", **env, **load.summary(), "files": args.files,
                     "iterations": args.iterations, "shape": list(args.shape),
                     "patch": list(args.patch), "base_filters": args.base_filters,
                     "levels": args.levels, "target_pct": TARGET_PCT, **results}))
    return 0 if all(r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
