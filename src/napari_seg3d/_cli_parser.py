"""The arguments of the ``napari-seg3d`` command (see :mod:`napari_seg3d.cli`): ``train``,
``predict``, ``info`` and ``demo``, each with its --help."""

from __future__ import annotations

import argparse

# --help is plain text: argparse shows it as written (the module docstring is for Sphinx)
DESCRIPTION = ("Train 3D segmentation networks on sparse annotations, predict volumes, inspect "
               "model files, export them to the BioImage Model Zoo, run the demo.")
EPILOG = "To try it on the nuclei sample: napari-seg3d demo --write-sample sample"


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with its one-line summary (plain text, no markup)."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    from .engine import DEVICES, LOSSES, MODELS, PLANES, PredictConfig, TrainConfig
    from ._cli_instances import add_instance_arguments
    from .engine.budget import DEFAULT_MINUTES, ITERATIONS_CAP
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
    t.add_argument("--iterations", type=int,
                   help="exactly this many training steps (wins over --minutes; with --resume: "
                        "steps added); default: a time budget")
    t.add_argument("--minutes", type=float, metavar="M",
                   help="time budget: as many steps as fit in M minutes at the speed measured "
                        f"in the first steps, at most {ITERATIONS_CAP} (default "
                        f"{DEFAULT_MINUTES['cpu']:g} on a CPU, {DEFAULT_MINUTES['gpu']:g} on a GPU)")
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
    t.add_argument("--no-early-stop", dest="early_stop", action="store_false", default=None,
                   help="train to the last step (default: end early when, in the last quarter "
                        "of the run and after the last self-training round, the held-out strokes "
                        "stop improving)")
    t.add_argument("--device", choices=DEVICES)
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

    r = _command(sub, "predict", "apply a model to volumes, writing DIR/<stem>_labels.<ext>")
    r.add_argument("inputs", nargs="+", metavar="IMG", help="volumes or folders")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--pattern", default="*", help="file pattern inside input folders")
    r.add_argument("--overlap", type=float, default=PredictConfig().overlap)
    r.add_argument("--tta", action="store_true", help="average mirrored predictions")
    r.add_argument("--no-forest", dest="forest", action="store_false",
                   help="the network alone: do not average in the random forest the model "
                        "file holds (fit on the strokes when training ended)")
    r.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    r.add_argument("--uncertainty", action="store_true",
                   help="also write DIR/<stem>_uncertainty.<ext>: 0 = sure, 1 = least sure")
    r.add_argument("--format", default="tif", choices=["tif", "h5", "zarr", "npy", "ome-zarr"],
                   help="output format; h5, zarr, npy and ome-zarr are written block by block "
                        "(for volumes larger than memory), tif is assembled in memory; ome-zarr "
                        "writes DIR/<stem>_labels.ome.zarr, the image with the segmentation as "
                        "NGFF labels (both as pyramids)")
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
    r.add_argument("--window", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="the sliding window of a 3D model (default: its training patch)")
    r.add_argument("--batch-size", type=int, default=PredictConfig().batch_size,
                   help="windows of the training patch's size per forward pass (a wider window "
                        "counts for as many as it holds)")
    r.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="predict in float32 (default: as the model was trained, mixed precision "
                        "unless trained with --no-amp)")
    r.add_argument("--device", default="auto", choices=DEVICES)
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_instance_arguments(r)  # --instances CLASS and its options

    i = _command(sub, "info", "print what a model file holds")
    i.add_argument("model")
    i.add_argument("--config", action="store_true",
                   help="print the training settings as a YAML file for train --config")

    d = _command(sub, "demo", "the whole workflow on the bundled nuclei sample")
    d.add_argument("--out", default="demo-output", help="folder for the screenshot, model, prediction")
    d.add_argument("--iterations", type=int, default=TrainConfig().iterations)
    d.add_argument("--headless", action="store_true", help="scripted run, even with a display")
    d.add_argument("--device", default="auto", choices=DEVICES)
    d.add_argument("--write-sample", metavar="DIR",
                   help="only write the sample as files for the command-line examples: "
                        "DIR/image.tif, DIR/scribbles.tif (the strokes of the napari sample), "
                        "DIR/truth.tif, with its licence notice")
    from ._cli_export import add_export_command  # napari-seg3d export (BioImage Model Zoo)

    add_export_command(sub)
    for sp in (t, r):
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
    for sp in (t, r, d):
        sp.add_argument("--threads", metavar="N", default=None,
                        help="CPU threads: auto (default: the cores that other jobs leave free, "
                             "measured again every few seconds) or a number; also "
                             "NAPARI_SEG3D_THREADS")
    return p
