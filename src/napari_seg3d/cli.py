"""The ``napari-seg3d`` command: ``train``, ``predict``, ``info``, ``demo`` and ``export``.

Errors a user can cause end with one line on stderr and exit code 2 (1 for anything unexpected);
``--debug`` shows the traceback. Progress goes through tqdm on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from ._cli_parser import build_parser

__all__ = ["build_parser", "main"]

log = logging.getLogger("napari_seg3d")


def _channels(image) -> int:
    return int(image.shape[0]) if image.ndim == 4 else 1


def _train(args: argparse.Namespace) -> int:
    from ._cli_checks import check_device, check_options
    from ._cli_outputs import check_train_outputs
    from ._config_file import read_config, setting_names
    from .engine.errors import writable_folder
    from .engine.io import missing_folders, remove_empty

    check_train_outputs(args)  # nothing it writes may land on an input: refused before reading
    check_options(args, setting_names())  # types and ranges, --out, before anything is read
    file = read_config(args.config) if args.config else {}
    check_device(args.device or file.get("device"))
    created = missing_folders(Path(args.out).parent)
    writable_folder(Path(args.out).parent)  # fail now, not after the training
    try:
        return _train_checked(args, file)
    finally:
        remove_empty(created)  # a failed run leaves no empty folder behind


def _train_checked(args: argparse.Namespace, file: dict) -> int:
    from ._cli_checks import check_room, check_truth
    from ._cli_outputs import last_path, report_path
    from ._cli_training import plan_line, run_training, signals_held
    from ._config_file import setting_names
    from .engine import Trainer, load_model
    from .engine.io import read_volume
    from .engine.model_file import save_models
    from .engine.plan import plan_training
    from .engine.training.labels_check import refuse_implausible_labels

    def setting(name, default=None):  # the command line wins over the file
        value = getattr(args, name, None)
        return value if value is not None else file.get(name, default)

    image = read_volume(args.image, lazy=True)
    check_truth(args.truth, image.data.shape)  # before training, not after it
    labels = read_volume(args.labels).data
    init = load_model(args.resume or args.fine_tune) if (args.resume or args.fine_tune) else None
    voxel = image.voxel_size
    if init is None and not args.allow_many_classes:  # labels like an image or instances
        refuse_implausible_labels(labels, "Check --labels, or add --allow-many-classes to "
                                  "train on them anyway.")
    # the command line wins over the file; what neither sets is planned (or, with --resume and
    # --fine-tune, comes from the model file)
    settings = {name: setting(name) for name in setting_names()}
    if args.minutes is not None and args.iterations is None:  # the command line wins: a
        settings["iterations"] = None                           # budget over the file's steps
    if args.iterations is not None:
        settings["minutes"] = None
    plan = plan_training(image.data.shape, labels, channels=_channels(image.data),
                         voxel_size=voxel, settings=settings, init=init, resume=bool(args.resume))
    cfg, start = plan.train_config, plan.start_iteration
    trainer = Trainer(image.data, labels, cfg, model_config=plan.model_config, voxel_size=voxel,
                      init=init, resume=bool(args.resume))
    del labels  # the Trainer keeps the strokes as its own index: at 5x10^8 voxels, 477 MiB less
    check_room(args, trainer.model.network, cfg, image.data.shape)  # a full disk: now
    if args.tensorboard:
        from .engine.training.tensorboard import TensorBoardLogger

        trainer.loggers.append(TensorBoardLogger(args.tensorboard))
    if not args.quiet:
        print(plan_line(cfg, trainer.device.type, start), file=sys.stderr)
    result = run_training(trainer, cfg.iterations, start, quiet=args.quiet)
    out = Path(args.out)
    last = last_path(out)
    with signals_held("Saving the models: Ctrl-C takes effect once both are written..."):
        save_models([(result.best, out), (result.last, last)])  # both new, or both as before
    best = result.best.history.get("best_val_dice")
    if result.ended_early:
        total = result.last.train_config.iterations
        print(f"Ended early at iteration {result.ended_early} of {total}: the held-out strokes "
              "stopped improving (--no-early-stop trains to the end).")
    print(f"Saved the best model to {out} and the last one (to resume) to {last}.")
    if not args.no_report:
        from ._report import save_report, training_report

        strokes = read_volume(args.labels, lazy=True)  # the report reads a few slices of it
        try:
            fig = training_report(result.best, image.data, strokes.data, title=out.name,
                                  device=cfg.device)
        finally:
            strokes.close()
        print(f"Training report: {save_report(fig, report_path(out))}")
    if best:
        names = result.best.class_names
        print("Validation Dice: " + ", ".join(f"{n} {d:.3f}" for n, d in zip(names, best)))
    if args.truth:
        _print_truth_dice(result.best, image.data, args.truth, args)
    image.close()
    return 0


def _print_truth_dice(model, image, truth_spec, args) -> None:
    """Dice of ``model`` against ``--truth``, predicted and compared block by block (neither
    volume is loaded whole)."""
    from .engine.io import read_volume
    from .engine.metrics import dice_of_regions
    from .engine.prediction.blocks import DEFAULT_BLOCK_SHAPE

    with read_volume(truth_spec, lazy=True) as truth:
        regions = model.iter_predict(image, device=args.device, block_shape=DEFAULT_BLOCK_SHAPE)
        scores = dice_of_regions(regions, truth.data, model.class_values)
    print("Dice against the ground truth: " + ", ".join(
        f"{n} {d:.3f}" for n, d in zip(model.class_names, scores)) +
        f"; mean {np.nanmean(scores):.3f}")


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ._cli_instances import instances_stage
    from ._cli_run import stop_between
    from .engine import PredictConfig, load_model
    from .engine.prediction.batch import (
        FileProgress,
        FileResult,
        expand_inputs,
        iter_predict_files,
        output_paths,
    )

    config = PredictConfig(overlap=args.overlap, tta=args.tta, batch_size=args.batch_size,
                           device=args.device, amp=args.amp, planes=args.planes,
                           probabilities=args.probabilities, uncertainty=args.uncertainty,
                           block_shape=tuple(args.block_size), forest=args.forest,
                           window=None if args.window is None else tuple(args.window))
    model = load_model(args.model)
    model.check_config(config)  # refuses planes for a 3D model before any file
    if args.format == "ome-zarr" and args.scheduler:
        raise ValueError("--format ome-zarr cannot be combined with --scheduler; choose --format "
                         "zarr or h5 to predict on a dask cluster.")
    inputs = expand_inputs(args.inputs, args.pattern)
    if not inputs:
        raise ValueError("No input volumes found; name TIFF, HDF5, zarr or .npy files or a folder.")
    outs = output_paths(args.out, inputs, args.format, model_file=args.model,  # refused first
                        probabilities=args.probabilities, uncertainty=args.uncertainty)
    add_instances = instances_stage(args, model, inputs, outs)  # --instances: refused first too
    if args.scheduler:
        from .engine.prediction.distributed import iter_predict_files_distributed

        gen = iter_predict_files_distributed(args.model, inputs, args.out, args.scheduler, config,
                                             fmt=args.format, overwrite=args.overwrite)
    else:
        gen = iter_predict_files(model, inputs, args.out, config, fmt=args.format,
                                 overwrite=args.overwrite, model_file=args.model)
    if add_instances is not None:  # --instances: <stem>_instances.<ext> after each file's labels
        gen = add_instances(gen)
    failed = done = 0
    with tqdm(total=len(inputs), unit="file", desc="predict", disable=args.quiet) as bar:
        for item in stop_between(gen, STOPPING):  # files, and the windows of the current one
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


STOPPING = ("Stopping: the outputs of the file being predicted are deleted (Ctrl-C again to "
            "stop at once)...")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._cli_export import run_export

    command = {"train": _train, "predict": _predict, "info": _info, "demo": _demo,
               "export": run_export}[args.command]
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:  # failures are reported once, as the command's own line
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
        logging.getLogger("napari_seg3d.engine.prediction.batch").setLevel(logging.ERROR)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # a lost scheduler: one line
    from ._cli_run import one_line_warnings, sigterm_as_interrupt
    from .engine.errors import Seg3DError

    try:
        from .engine.threads import set_default_threads

        set_default_threads(getattr(args, "threads", None))
        with sigterm_as_interrupt(), one_line_warnings(args.command):
            return command(args)
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
