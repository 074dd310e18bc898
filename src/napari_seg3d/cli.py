"""The ``napari-seg3d`` command: ``train``, ``predict``, ``info`` and ``demo``.

Errors a user can cause end with one line on stderr and exit code 2 (1 for anything unexpected);
``--debug`` shows the traceback. Progress goes through tqdm on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("napari_seg3d")
# --help is plain text: argparse shows it as written (the module docstring is for Sphinx)
DESCRIPTION = ("Train 3D segmentation networks on sparse annotations, predict volumes, inspect "
               "model files, run the demo.")
EPILOG = "To try it on the nuclei sample: napari-seg3d demo --write-sample sample"


def _channels(image) -> int:
    return int(image.shape[0]) if image.ndim == 4 else 1


def _train(args: argparse.Namespace) -> int:
    from ._cli_outputs import check_train_outputs, last_path, report_path
    from ._config_file import read_config, setting_names
    from .engine import Trainer, load_model, save_model
    from .engine.errors import writable_folder
    from .engine.io import read_volume
    from .engine.plan import plan_training
    from .engine.training.labels_check import refuse_implausible_labels

    check_train_outputs(args)  # nothing it writes may land on an input: refused before reading
    file = read_config(args.config) if args.config else {}
    writable_folder(Path(args.out).parent)  # fail now, not after the training

    def setting(name, default=None):  # the command line wins over the file
        value = getattr(args, name, None)
        return value if value is not None else file.get(name, default)

    image = read_volume(args.image, lazy=True)
    labels = read_volume(args.labels).data
    init = load_model(args.resume or args.fine_tune) if (args.resume or args.fine_tune) else None
    voxel = image.voxel_size
    if init is None and not args.allow_many_classes:  # labels like an image or instances
        refuse_implausible_labels(labels, "Check --labels, or add --allow-many-classes to "
                                  "train on them anyway.")
    # the command line wins over the file; what neither sets is planned (or, with --resume and
    # --fine-tune, comes from the model file)
    settings = {name: setting(name) for name in setting_names()}
    plan = plan_training(image.data.shape, labels, channels=_channels(image.data),
                         voxel_size=voxel, settings=settings, init=init, resume=bool(args.resume))
    cfg, start = plan.train_config, plan.start_iteration
    loggers = []
    if args.tensorboard:
        from .engine.training.tensorboard import TensorBoardLogger

        loggers.append(TensorBoardLogger(args.tensorboard))
    trainer = Trainer(image.data, labels, cfg, model_config=plan.model_config, voxel_size=voxel,
                      init=init, resume=bool(args.resume), loggers=loggers)
    result = _run_training(trainer, cfg.iterations, start, quiet=args.quiet)
    out = Path(args.out)
    last = last_path(out)
    with _signals_held("Saving the models: Ctrl-C takes effect once both are written..."):
        save_model(result.best, out)
        save_model(result.last, last)
    best = result.best.history.get("best_val_dice")
    print(f"Saved the best model to {out} and the last one (to resume) to {last}.")
    if not args.no_report:
        from ._report import save_report, training_report

        fig = training_report(result.best, image.data, labels, title=out.name, device=cfg.device)
        print(f"Training report: {save_report(fig, report_path(out))}")
    if best:
        names = result.best.class_names
        print("Validation Dice: " + ", ".join(f"{n} {d:.3f}" for n, d in zip(names, best)))
    if args.truth:
        _print_truth_dice(result.best, image.data, args.truth, args)
    image.close()
    return 0


@contextlib.contextmanager
def _signals_held(message: str):
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then raise KeyboardInterrupt: a
    save cut short would lose the whole run. Does nothing outside the main thread."""
    import signal

    held: list[int] = []

    def hold(signum, frame):
        if not held:
            print(message, file=sys.stderr)
        held.append(signum)

    try:
        previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        raise KeyboardInterrupt


def _run_training(trainer, total: int, start: int, *, quiet: bool):
    """Run the training generator under a tqdm bar; the first Ctrl-C (or SIGTERM, which cluster
    schedulers send before a time limit) stops training cleanly and the models are saved; a
    second Ctrl-C interrupts."""
    import signal

    from tqdm import tqdm

    def stop(signum, frame):
        tqdm.write("Stopping now: the models of the last finished step are saved (Ctrl-C "
                   "again to abort)...", file=sys.stderr)
        trainer.request_stop()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, stop)
    previous_term = signal.signal(signal.SIGTERM, stop)
    gen = trainer.run()
    try:
        with tqdm(total=total, initial=start, unit="it", desc="train", disable=quiet) as bar:
            while True:
                try:
                    p = next(gen)
                except StopIteration as done:
                    return done.value
                bar.update(1)
                post = {"loss": f"{p.loss:.3f}", "vox/s": f"{p.voxels_per_s:.3g}",
                        "threads": p.threads}
                if p.val_dice is not None:
                    post["val_dice"] = " ".join(f"{d:.3f}" for d in p.val_dice)
                bar.set_postfix(post, refresh=False)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _print_truth_dice(model, image, truth_spec, args) -> None:
    from .engine.io import read_volume
    from .engine.metrics import dice_scores

    truth = read_volume(truth_spec).data
    pred = model.predict(np.asarray(image), device=args.device)
    scores = dice_scores(pred, truth, model.class_values)
    print("Dice against the ground truth: " + ", ".join(
        f"{n} {d:.3f}" for n, d in zip(model.class_names, scores)) + f"; mean {np.mean(scores):.3f}")


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ._cli_instances import instances_stage  # --instances (issue 15)
    from .engine import load_model
    from .engine.prediction.batch import (
        FileProgress,
        FileResult,
        expand_inputs,
        iter_predict_files,
        output_paths,
    )

    model = load_model(args.model)
    model.set_planes(args.planes)  # refuses planes for a 3D model before any file
    inputs = expand_inputs(args.inputs, args.pattern)
    if not inputs:
        raise ValueError("No input volumes found; name TIFF, HDF5, zarr or .npy files or a folder.")
    outs = output_paths(args.out, inputs, args.format, model_file=args.model,  # refused first
                        probabilities=args.probabilities, uncertainty=args.uncertainty)
    add_instances = instances_stage(args, model, inputs, outs)  # --instances: refused first too
    options = dict(fmt=args.format, overwrite=args.overwrite, overlap=args.overlap, tta=args.tta,
                   probabilities=args.probabilities, uncertainty=args.uncertainty,
                   batch_size=args.batch_size, device=args.device,
                   block_shape=tuple(args.block_size), planes=args.planes, amp=args.amp)
    if args.scheduler:
        from .engine.prediction.distributed import iter_predict_files_distributed

        gen = iter_predict_files_distributed(args.model, inputs, args.out, args.scheduler,
                                             **options)
    else:
        gen = iter_predict_files(model, inputs, args.out, model_file=args.model, **options)
    if add_instances is not None:  # --instances: <stem>_instances.<ext> after each file's labels
        gen = add_instances(gen)
    failed = done = 0
    with tqdm(total=len(inputs), unit="file", desc="predict", disable=args.quiet) as bar:
        for item in gen:  # the bar counts files, and the windows (or blocks) of the current one
            if isinstance(item, FileProgress) and item.windows_total:
                bar.n = round(done + item.windows_done / item.windows_total, 3)
                bar.update(0)  # redraws at most every mininterval
            if isinstance(item, FileResult):
                done += 1
                bar.n = done
                bar.refresh()
                failed += item.status == "failed"
                where = item.output if item.output else item.reason
                tqdm.write(f"{item.status:8s} {item.input} -> {where}", file=sys.stdout)
    if failed:
        print(f"{failed} of {len(inputs)} file(s) failed.", file=sys.stderr)
    return 3 if failed else 0


def _info(args: argparse.Namespace) -> int:
    from .engine import describe, load_model

    model = load_model(args.model)
    if args.config:
        from ._config_file import model_config_yaml

        print(model_config_yaml(model), end="")
        return 0
    print(json.dumps(describe(model), indent=2, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.write_sample:
        from ._sample_data import write_sample

        paths = write_sample(args.write_sample)
        print(f"Wrote the nuclei sample (StarDist, BSD 3-Clause: see {paths[-1].name}) to "
              f"{paths[0].parent}: " + ", ".join(p.name for p in paths[:-1]) + ".")
        return 0
    from ._demo import run_demo

    return run_demo(out_dir=Path(args.out), iterations=args.iterations, headless=args.headless,
                    device=args.device)


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with its one-line summary (plain text, no markup)."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    from ._cli_instances import add_instance_arguments  # --instances (issue 15)
    from .engine.config import LOSSES, PLANES, TrainConfig
    from .engine.models import MODELS
    from .engine.prediction.blocks import DEFAULT_BLOCK_SHAPE

    p = argparse.ArgumentParser(prog="napari-seg3d", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = _command(sub, "train", "train a model on an image and sparse annotations")
    t.add_argument("--image", required=True, help="TIFF, HDF5 (file.h5:/key) or .npy volume")
    t.add_argument("--labels", required=True,
                   help="annotations: 0 = not annotated, 1, 2, ... = classes")
    t.add_argument("--out", required=True, help="model file to write (the best model)")
    t.add_argument("--config", metavar="FILE.yaml",
                   help="training settings from a YAML file (options given here win over it)")
    t.add_argument("--iterations", type=int, help=f"default {TrainConfig().iterations}")
    t.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    t.add_argument("--batch-size", type=int, help="default 2 (3D), 8 (2D slices)")
    t.add_argument("--learning-rate", type=float, help="default 0.003")
    t.add_argument("--loss", help=f"{', '.join(LOSSES)} (default ce_dice)")
    t.add_argument("--architecture", choices=sorted(MODELS),
                   help="network of a new model: unet (default), unetpp (U-Net++), resenc_unet "
                        "(residual encoder, as nnU-Net's ResEnc)")
    t.add_argument("--dims", type=int, choices=[2, 3],
                   help="3: a 3D network on 3D patches (default); 2: a 2D network trained on "
                        "slices along z, y and x (2.5D, as volume-segmantics)")
    t.add_argument("--planes", choices=PLANES,
                   help="how a 2D network predicts: fast (along z), three (z, y and x, averaged; "
                        "default), best (three axes x four in-plane rotations)")
    t.add_argument("--base-filters", type=int, help="default 16")
    t.add_argument("--levels", type=int, default=None)
    t.add_argument("--validation-fraction", type=float, help="default 0.15")
    t.add_argument("--smoothness", type=float,
                   help="weight of the edge-aware smoothness loss that spreads strokes along "
                        f"regions up to image edges (0 = off; default {TrainConfig().smoothness:g})")
    t.add_argument("--self-training", type=int, metavar="ROUNDS",
                   help="rounds in the second half of the run in which the network also learns "
                        "from the voxels it is sure of (0 = off; default "
                        f"{TrainConfig().self_training})")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="compute in float32 (default: mixed precision, float16 on a GPU and "
                        "bfloat16 on CPUs with AVX512-BF16/AMX; the model then also predicts "
                        "in float32)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="MODEL", help="continue a run exactly from its model file")
    g.add_argument("--fine-tune", metavar="MODEL", help="start from a model, fresh optimizer")
    t.add_argument("--no-report", action="store_true",
                   help="do not write the training report (<out>.report.png)")
    t.add_argument("--allow-many-classes", action="store_true",
                   help="train even if the labels look like an image or an instance "
                        "segmentation (more than 16 values, or more than 10 that are dense)")
    t.add_argument("--truth", help="dense ground truth to report Dice against after training")
    t.add_argument("--tensorboard", metavar="DIR",
                   help="log loss, Dice and image slices to TensorBoard in DIR (needs the "
                        "tensorboard package: pip install \"napari-seg3d[tensorboard]\")")
    t.set_defaults(func=_train)

    r = _command(sub, "predict", "apply a model to volumes, writing DIR/<stem>_labels.<ext>")
    r.add_argument("inputs", nargs="+", metavar="IMG", help="volumes or folders")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--pattern", default="*", help="file pattern inside input folders")
    r.add_argument("--overlap", type=float, default=0.5)
    r.add_argument("--tta", action="store_true", help="average mirrored predictions")
    r.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    r.add_argument("--uncertainty", action="store_true",
                   help="also write DIR/<stem>_uncertainty.<ext>: 0 = sure, 1 = least sure")
    r.add_argument("--format", default="tif", choices=["tif", "h5", "zarr", "npy"],
                   help="output format; h5, zarr and npy are written block by block (for volumes "
                        "larger than memory), tif is assembled in memory")
    r.add_argument("--block-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   default=list(DEFAULT_BLOCK_SHAPE),
                   help="largest block predicted at once; memory depends on Y x X "
                        f"(default {' '.join(map(str, DEFAULT_BLOCK_SHAPE))})")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask distributed cluster (e.g. tcp://host:8786): whole files, "
                        "or the blocks of a single large volume, go to its workers")
    r.add_argument("--planes", choices=PLANES,
                   help="2D (2.5D) models: fast (along z), three (z, y and x), best (three axes "
                        "x four rotations); default: as trained")
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="predict in float32 (default: as the model was trained, mixed precision "
                        "unless trained with --no-amp)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_instance_arguments(r)  # --instances CLASS and its options (issue 15)
    r.set_defaults(func=_predict)

    i = _command(sub, "info", "print what a model file holds")
    i.add_argument("model")
    i.add_argument("--config", action="store_true",
                   help="print the training settings as a YAML file for train --config")
    i.set_defaults(func=_info)

    d = _command(sub, "demo", "the whole workflow on the bundled nuclei sample")
    d.add_argument("--out", default="demo-output", help="folder for the screenshot, model, prediction")
    d.add_argument("--iterations", type=int, default=TrainConfig().iterations)
    d.add_argument("--headless", action="store_true", help="scripted run, even with a display")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--write-sample", metavar="DIR",
                   help="only write the sample as files for the command-line examples: "
                        "DIR/image.tif, DIR/scribbles.tif (the strokes of the napari sample), "
                        "DIR/truth.tif, with its licence notice")
    d.set_defaults(func=_demo)
    for sp in (t, r):
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
    for sp in (t, r, d):
        sp.add_argument("--threads", metavar="N", default=None,
                        help="CPU threads: auto (default: the cores that other jobs leave free, "
                             "measured again every few seconds) or a number; also "
                             "NAPARI_SEG3D_THREADS")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:  # failures are reported once, as the command's own line
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
        logging.getLogger("napari_seg3d.engine.prediction.batch").setLevel(logging.ERROR)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # a lost scheduler: one line
    from .engine.errors import Seg3DError

    try:
        from .engine.threads import set_default_threads

        set_default_threads(getattr(args, "threads", None))
        return args.func(args)
    except (Seg3DError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"napari-seg3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-seg3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"napari-seg3d {args.command}: unexpected error ({type(e).__name__}): {e}. "
              "Run again with --debug for details.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
