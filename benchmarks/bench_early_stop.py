"""When to end a run early: the early-stop rule's patience and delta, scored against the truth.

Each run trains on one volume and seed of ``bench_quality.py`` with the command line's settings
and a fixed number of iterations, validating often (``--every``, default 10 steps); at every
validation the network as it is segments the whole volume, so each checkpoint has its
held-out-stroke Dice (what the rule sees) and its Dice against the truth. Validation does not
change the training, so a run validating every 20 or 40 steps sees a subset of the same
checkpoints. Each rule (where the last phase begins, how often it validates, patience, delta) is
replayed on them: the iteration it ends the run at, the truth Dice of the model the run then
keeps (the phase rule of ``selection.py`` over the checkpoints so far) against that of the whole
run at the default interval, and the steps saved.

    python benchmarks/bench_early_stop.py                       # 7 runs, 1 to 1.5 h on 2 cores
    python benchmarks/bench_early_stop.py --cases nuclei:0:300:0 --every 10
    python benchmarks/bench_early_stop.py --load runs.json       # replay saved checkpoints

The last line printed is one JSON object with every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import json_line, machine, table
from _quality_methods import load_case, train_config
from bench_selection import _TruthAtValidation

from napari_seg3d.engine import Trainer
from napari_seg3d.engine.budget import default_validate_every
from napari_seg3d.engine.training.early_stop import early_stop_iteration
from napari_seg3d.engine.training.schedule import LAST_PHASE, self_training_starts
from napari_seg3d.engine.training.selection import pick_checkpoint

# volume:seed:iterations:self-training rounds; the synthetic volumes at about the steps a
# 3-minute budget gives them on a 2-core CPU
DEFAULT_CASES = ("nuclei:0:800:2,nuclei:1:800:2,nuclei:2:800:2,neurites:0:300:2,"
                 "textures:0:300:2,nuclei:0:800:0,textures:0:300:0")
PATIENCE = (2, 3, 4, 6)
DELTA = (0.0, 0.005, 0.01)


def run_case(spec: str, args) -> dict:
    """Train one ``volume:seed:iterations:rounds`` case; its checkpoints."""
    name, seed, iterations, rounds = spec.split(":")
    case = load_case(name, int(seed))
    cfg = dataclasses.replace(train_config(case, int(iterations), int(seed), args),
                              self_training=int(rounds), validate_every=args.every,
                              early_stop=False)
    logger = _TruthAtValidation(case)
    trainer = Trainer(case.image, case.labels, cfg, voxel_size=case.voxel_size, loggers=[logger])
    t0 = time.perf_counter()
    for _ in trainer.run():
        pass
    print(f"  {spec}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {"case": spec, "iterations": int(iterations), "rounds": self_training_starts(cfg),
            "checkpoints": logger.rows}


def _start(run: dict, rule: str) -> int:
    """Where the last phase begins: after the last round (from the start without self-training),
    or as the engine does, the last quarter after the last round."""
    last_round = max(run["rounds"], default=0)
    return last_round if rule == "last round" else max(last_round, int(LAST_PHASE *
                                                                         run["iterations"]))


def replay(run: dict, rule: str, last_every: str, patience: int, delta: float) -> dict:
    """What a rule does on ``run``: validations every tenth of the run (the default interval,
    at most 50), in the last phase every ``last_every`` (``"tenth"``, or ``"fortieth"`` as the
    engine does, at the 10-step resolution of the recording: 20 for 800 steps, 10 for 300)."""
    n, start = run["iterations"], _start(run, rule)
    main = default_validate_every(n)
    last = main if last_every == "tenth" else max(10, round(n / 40 / 10) * 10)
    cps = [c for c in run["checkpoints"] if c["iteration"] % main == 0 or c["iteration"] == n
           or (c["iteration"] > start and c["iteration"] % last == 0)]
    iters, vals = [c["iteration"] for c in cps], [c["val"] for c in cps]
    truth = {c["iteration"]: c["truth"] for c in cps}
    whole = [c for c in cps if c["iteration"] % main == 0 or c["iteration"] == n]
    full = truth[pick_checkpoint([c["iteration"] for c in whole], [c["val"] for c in whole],
                                 run["rounds"])]
    stop = early_stop_iteration(iters[:-1], vals[:-1], start, patience, delta) or n
    k = iters.index(stop) + 1
    kept = truth[pick_checkpoint(iters[:k], vals[:k], run["rounds"])]
    return {"stop": stop, "saved": 1 - stop / n, "dice_change": kept - full}


RULES = [(rule, every, patience, 0.005) for rule in ("last round", "last quarter")
         for every in ("tenth", "fortieth") for patience in PATIENCE] + [
    ("last quarter", "fortieth", 4, delta) for delta in DELTA if delta != 0.005]


def summary(runs: list[dict]) -> list[list]:
    rows = []
    for rule, every, patience, delta in RULES:
        r = [replay(run, rule, every, patience, delta) for run in runs]
        change = [x["dice_change"] for x in r]
        rows.append([rule, every, patience, delta,
                     f"{100 * np.mean([x['saved'] for x in r]):.1f}", f"{np.mean(change):+.4f}",
                     f"{min(change):+.4f}", " ".join(str(x["stop"]) for x in r)])
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help="volume:seed:iterations:self-training rounds, comma-separated")
    p.add_argument("--every", type=int, default=10, help="validate every this many steps")
    p.add_argument("--load", type=Path, help="replay the runs of a JSON line written before")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_seg3d.engine.threads import set_default_threads

    set_default_threads(args.threads)
    if args.load:
        record = json.loads(args.load.read_text().strip().splitlines()[-1])
        runs = record["runs"]
        env = record["machine"]
    else:
        runs = [run_case(spec, args) for spec in args.cases.split(",")]
        env = machine(torch.device(args.device))
    print("cases: " + ", ".join(r["case"] for r in runs))
    print(table(["last phase", "its validations every", "patience", "delta", "steps saved %",
                 "Dice change (mean)", "Dice change (worst)", "stops at"], summary(runs)))
    print("Dice change: truth Dice of the model kept at the early stop minus that of the "
          "model kept by the whole run (phase rule).")
    print(json_line({"benchmark": "early_stop", "machine": env, "runs": runs}))


if __name__ == "__main__":
    main()
