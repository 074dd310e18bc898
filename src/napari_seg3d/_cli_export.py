"""``napari-seg3d export``: a model file as a BioImage Model Zoo (bioimage.io) package.

Registered by ``cli.build_parser`` with :func:`add_export_command`; errors end, as every
command's, with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SUMMARY = ("write a model as a BioImage Model Zoo (bioimage.io) package, for deepImageJ, ilastik "
           "and bioimageio.core")


def add_export_command(sub) -> argparse.ArgumentParser:
    """Add ``export`` to the subcommands ``sub`` of the ``napari-seg3d`` parser."""
    e = sub.add_parser("export", help=SUMMARY, description=SUMMARY[0].upper() + SUMMARY[1:] + ".")
    e.add_argument("model", help="model file (.pt) saved by napari-seg3d")
    e.add_argument("--out", required=True, metavar="PACKAGE.zip", help="the package to write")
    e.add_argument("--image", metavar="IMG",
                   help="volume whose centre crop becomes the package's test input (best: the "
                        "training image); without it the test input is synthetic")
    e.add_argument("--name", help="the model's name in the package (default: from its classes)")
    e.add_argument("--description", help="one or two sentences on what it segments")
    e.add_argument("--author", action="append", default=[], metavar="NAME",
                   help="an author (repeat for more; default: your login name)")
    e.set_defaults(func=run_export)
    return e


def run_export(args: argparse.Namespace) -> int:
    from .engine import load_model
    from .engine.io import read_volume
    from .engine.zoo.export import SYNTHETIC, ExportDetails, export_package

    out = Path(args.out).expanduser()
    for given, what in ((args.model, "the model file"), (args.image, "the image")):
        if given and out.resolve() == Path(given).expanduser().resolve():
            raise ValueError(f"--out {args.out} is {what}; choose another file for the package.")
    model = load_model(args.model)
    image = None
    if args.image:
        volume = read_volume(args.image)
        image = volume.data
    details = ExportDetails(name=args.name or "", description=args.description or "",
                            authors=tuple(args.author),
                            image_name=Path(args.image).name if args.image else "")
    path = export_package(model, out, image=image, details=details)
    if image is None:
        print(SYNTHETIC)
    print(f"Wrote the bioimage.io package {path}. Check it with: bioimageio test {path}")
    return 0
