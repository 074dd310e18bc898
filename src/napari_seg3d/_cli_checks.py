"""The checks ``napari-seg3d train`` makes before it trains, so that a run is never lost to a
mistake it could have seen: the options (types, ranges, the device), ``--out``, ``--truth``,
and the room for what it writes (models, report, TensorBoard log)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .engine.errors import OutputError, SettingError
from .engine.io._space import cannot_write, check_free_space

REPORT_BYTES = 400_000  # a training report PNG is 50-300 kB
_SCALARS_BYTES = 200  # TensorBoard: the 4 scalars of one iteration


def option(name: str) -> str:
    """``"validation_fraction"`` -> ``"--validation-fraction"``."""
    return "--" + name.replace("_", "-")


def check_options(args: argparse.Namespace, names) -> None:
    """Check each setting given on the command line (a :class:`.SettingError` naming the
    option), ``--out`` and the device, before anything is read."""
    from .engine.schema import check_settings

    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            try:
                check_settings({name: value})
            except SettingError as e:  # "seed must be ..." -> "--seed must be ..."
                text = str(e)
                if text.startswith(name + " "):
                    text = option(name) + text[len(name):]
                raise SettingError(text) from None
    out = Path(args.out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name the model file to write, e.g. "
                          f"--out {out / 'model.pt'}.")


def check_device(device: str | None) -> None:
    """The device exists on this machine (a sentence otherwise), before anything is read."""
    from .engine.devices import resolve_device

    resolve_device(device or "auto")


def check_truth(truth: str | None, image_shape) -> None:
    """``--truth`` can be read and has the image's spatial shape (read lazily, not trained on)."""
    if not truth:
        return
    from .engine.io import read_volume

    with read_volume(truth, lazy=True) as volume:
        shape = tuple(volume.data.shape)
    if shape != tuple(image_shape)[-3:]:
        raise SettingError(f"The ground truth (--truth {truth}) has shape {shape} but the image "
                           f"is {tuple(image_shape)[-3:]}; give the ground truth of this image.")


def check_room(args: argparse.Namespace, network, cfg, image_shape) -> None:
    """Room beside ``--out`` for the best and the last model files (their weights and the
    optimizer's two moments) and the report, and in ``--tensorboard`` for its log."""
    parameters = sum(p.numel() for p in network.parameters())
    model = 3 * 4 * parameters + 8 * cfg.iterations + 64_000  # weights, AdamW, history
    needed = 2 * model + (0 if args.no_report else REPORT_BYTES)
    from ._cli_outputs import last_path

    check_free_space(args.out, needed,
                     f"Cannot save the models to {args.out} and {last_path(args.out)}")
    if args.tensorboard:
        check_free_space(args.tensorboard, log_bytes(cfg, image_shape),
                         cannot_write("the TensorBoard log", args.tensorboard))


def log_bytes(cfg, image_shape) -> int:
    """About the size of a run's TensorBoard log: scalars every iteration, and at each
    validation three slices of at most 256 x 256 pixels (PNG, about half their RGB size)."""
    from .engine.training.tensorboard import MAX_IMAGE_EDGE

    y, x = (min(int(n), MAX_IMAGE_EDGE) for n in tuple(image_shape)[-2:])
    validations = math.ceil(cfg.iterations / cfg.validate_every) + 1
    return cfg.iterations * _SCALARS_BYTES + validations * 3 * (y * x * 3 // 2)
