"""What ``napari-seg3d train`` writes, and the check, before training starts, that none of it
lands on a file the command reads (see :mod:`.engine.io.no_overwrite`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .engine.io.no_overwrite import ReadFiles, refuse_writing_over

#: the options of ``train`` that name a file it reads, and what the file is
READ_OPTIONS = {"image": "the image", "labels": "the labels", "truth": "the ground truth",
                "config": "the settings file", "resume": "the model to resume",
                "fine_tune": "the model to fine-tune"}


def last_path(out: str | Path) -> Path:
    """``<name>.last<ext>`` beside the model file ``out``: the state at the end of the run."""
    out = Path(out)
    return out.with_name(out.stem + ".last" + out.suffix)


def report_path(out: str | Path) -> Path:
    """``<name>.report.png`` beside the model file ``out``: the training report."""
    out = Path(out)
    return out.with_name(out.stem + ".report.png")


def check_train_outputs(args: argparse.Namespace) -> None:
    """Refuse (an :class:`.OutputError` naming both files) a ``train`` run whose model, last
    model, report or TensorBoard folder would be written over one of its inputs: the image,
    labels, ground truth, settings file or the model it starts from (hard and symbolic links
    included; ``file.h5:/key`` counts as ``file.h5``)."""
    inputs = {f"{words} ({_option(name)} {getattr(args, name)})": getattr(args, name)
              for name, words in READ_OPTIONS.items()}
    read = ReadFiles(inputs)
    written = [(f"the model (--out {args.out})", args.out, True)]
    last = (f"the last model ({last_path(args.out)}, beside --out)", last_path(args.out), True)
    if args.resume and ReadFiles({"resumed": args.resume}).hit(last_path(args.out)):
        # --resume m.last.pt --out m.pt: the run goes on, so its new end state replaces the
        # one it resumed (read whole before training, replaced atomically at the end)
        refuse_writing_over(ReadFiles({k: v for k, v in inputs.items()
                                       if not k.startswith(READ_OPTIONS["resume"])}),
                            [last], "choose another --out")
    else:
        written.append(last)
    if not args.no_report:
        written.append((f"the training report ({report_path(args.out)}, beside --out)",
                        report_path(args.out), True))
    refuse_writing_over(read, written, "choose another --out")
    if args.tensorboard:
        refuse_writing_over(read, [(f"the TensorBoard log (--tensorboard {args.tensorboard})",
                                    args.tensorboard, False)], "choose another --tensorboard folder")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
