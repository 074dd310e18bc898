"""``napari-seg3d predict --instances CLASS``: the options, and the check, before any file is
predicted, that they make sense for the model and the outputs (see
:mod:`.engine.prediction.instance_files`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator, Sequence

#: ``instance_files.METHODS`` (a test keeps them equal), named here so that building the parser
#: imports neither scipy nor scikit-image
METHOD_NAMES = ("auto", "distance", "probability", "components")

_METHOD_HELP = ("auto (default): the distance or the smoothed class map, whichever fits the "
                "objects (elongated ones are not split); distance: split touching objects by a "
                "watershed on the distance to the background; probability: by a watershed on "
                "the class probability "
                "(needs --probabilities); components: connected regions only, for objects that "
                "never touch")


def add_instance_arguments(parser: argparse.ArgumentParser) -> None:
    """The instance options of ``predict``."""
    g = parser.add_argument_group("instances")
    g.add_argument("--instances", metavar="CLASS",
                   help="also write DIR/<stem>_instances.<ext>: the objects of the class CLASS "
                        "(its label value or its name) each with its own id (0 = background)")
    g.add_argument("--instance-method", choices=METHOD_NAMES, default=None, help=_METHOD_HELP)
    g.add_argument("--min-size", type=int, default=None, metavar="VOXELS",
                   help="remove objects of fewer voxels (default 0)")
    g.add_argument("--object-diameter", type=float, default=None, metavar="D",
                   help="typical object diameter, in the unit of the voxel size (default: "
                        "estimated from the prediction)")


def instances_stage(args: argparse.Namespace, model, inputs: Sequence[str], outs,
                    ) -> Callable[[Generator], Generator] | None:
    """What wraps the file predictions to also write their instances, or None without
    ``--instances``. Every mistake is refused here, before any file is predicted.

    Args:
        args: the parsed ``predict`` arguments.
        model: the loaded model.
        inputs: the input volumes.
        outs: the labels output of each input.

    Raises:
        ValueError: an instance option without ``--instances``, an unknown class, or the
            probability method without ``--probabilities``.
        OutputError: an instances output would be written over an input or the model file.
    """
    from .engine.prediction.instance_files import (
        InstanceConfig,
        class_value_of,
        refuse_over_inputs,
        with_instances,
    )

    if args.instances is None:
        given = [f"--{n.replace('_', '-')}" for n in ("instance_method", "min_size",
                                                      "object_diameter")
                 if getattr(args, n) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} only {verb} with --instances CLASS; add it, "
                             "or leave them out.")
        return None
    value, index = class_value_of(model.class_values, model.class_names, args.instances)
    config = InstanceConfig(value, index, method=args.instance_method or "auto",
                            min_size=0 if args.min_size is None else args.min_size,
                            diameter=args.object_diameter)
    if config.needs_probability and not args.probabilities:
        raise ValueError("--instance-method probability reads the class probabilities: add "
                         "--probabilities (written to DIR/<stem>_probabilities.<ext>), or choose "
                         "another method.")
    refuse_over_inputs(inputs, outs, model_file=args.model)
    return lambda gen: with_instances(gen, config, args.out, inputs, model.voxel_size)
