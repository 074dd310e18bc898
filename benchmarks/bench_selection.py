"""Which model of a run to keep: rules that pick from the validation checkpoints, scored against
the dense truth on the quality benchmark's volumes.

Each run trains with the command line's defaults (self-training included) on one volume and
seed of ``bench_quality.py``. At every validation the network as it is then segments the whole
volume, so each checkpoint has its held-out-stroke Dice (what the trainer sees) and its Dice
against the truth (what the user gets). The rules are then applied to the same checkpoints:

- ``margin``: the rule of napari-seg3d up to 0.1: a later checkpoint replaces the kept one
  unless its held-out Dice is 0.05 below the best so far.
- ``phase``: the same rule, restarted when a self-training round begins (the targets change,
  so held-out Dice of different rounds are not comparable); the default now.
- ``last``: the last checkpoint. ``max``: the top held-out Dice. ``oracle``: the top truth Dice
  (the best any rule could do).

    python benchmarks/bench_selection.py                 # nuclei seeds 0-2, neurites, textures
    python benchmarks/bench_selection.py --cases nuclei:0,textures:1 --iterations 400

The last line printed is one JSON object with every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch
from _common import json_line, machine, table
from _quality_methods import load_case, train_config

from napari_seg3d.engine import Trainer
from napari_seg3d.engine.metrics import dice_scores
from napari_seg3d.engine.training.schedule import self_training_starts
from napari_seg3d.engine.training.selection import RULES, pick_checkpoint

DEFAULT_CASES = "nuclei:0,nuclei:1,nuclei:2,neurites:0,textures:0"


class _TruthAtValidation:
    """A trainer logger: at each validation, the Dice against the truth of the network as is."""

    def __init__(self, case) -> None:
        self.case = case
        self.rows: list[dict] = []

    def log(self, trainer, progress) -> None:
        if progress.val_dice is None:
            return
        model = trainer.model
        net = model.network
        labels = model.predict(self.case.image, device="cpu")
        net.train()
        truth = float(np.mean(dice_scores(labels, self.case.truth, self.case.classes)))
        self.rows.append({"iteration": progress.iteration,
                          "val": float(np.nanmean(progress.val_dice)), "truth": truth})

    def close(self) -> None:
        pass


def run_case(name: str, seed: int, iterations: int, args) -> dict:
    case = load_case(name, seed)
    cfg = dataclasses.replace(train_config(case, iterations, seed, args), early_stop=False)
    logger = _TruthAtValidation(case)
    trainer = Trainer(case.image, case.labels, cfg, voxel_size=case.voxel_size, loggers=[logger])
    t0 = time.perf_counter()
    gen = trainer.run()
    while True:
        try:
            next(gen)
        except StopIteration as done:
            result = done.value
            break
    rounds = self_training_starts(cfg)
    kept = result.best.iteration
    print(f"  {name}:{seed} {time.perf_counter() - t0:.0f} s, kept it {kept}, rounds {rounds}: "
          + " ".join(f"{r['iteration']}:{r['val']:.3f}/{r['truth']:.3f}" for r in logger.rows),
          file=sys.stderr)
    return {"case": f"{name}:{seed}", "rounds": rounds, "kept": kept, "checkpoints": logger.rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="volume:seed, comma-separated")
    p.add_argument("--iterations", type=int, default=800)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_seg3d.engine.threads import set_default_threads

    set_default_threads(args.threads)
    runs = []
    for spec in args.cases.split(","):
        name, _, seed = spec.partition(":")
        runs.append(run_case(name.strip(), int(seed or 0), args.iterations, args))
    names = list(RULES) + ["last", "max", "oracle"]
    rows, means = [], {n: [] for n in names}
    for run in runs:
        cps = run["checkpoints"]
        iters = [c["iteration"] for c in cps]
        vals = [c["val"] for c in cps]
        truth = {c["iteration"]: c["truth"] for c in cps}
        picks = {rule: pick_checkpoint(iters, vals, run["rounds"], rule) for rule in RULES}
        picks["last"] = iters[-1]
        picks["max"] = iters[int(np.argmax(vals))]
        picks["oracle"] = max(truth, key=truth.get)
        row = [run["case"]]
        for n in names:
            means[n].append(truth[picks[n]])
            row.append(f"{truth[picks[n]]:.3f} (it {picks[n]})")
        rows.append(row)
    rows.append(["mean"] + [f"{np.mean(means[n]):.3f}" for n in names])
    print(table(["case (Dice vs truth of the kept model)"] + names, rows))
    print(json_line({"benchmark": "selection", "machine": machine(torch.device(args.device)),
                     "iterations": args.iterations, "runs": runs}))


if __name__ == "__main__":
    main()
