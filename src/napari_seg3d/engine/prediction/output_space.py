"""Room for the outputs of one input, checked before it is predicted (see :mod:`..io._space`):
a full disk is one sentence at once, not after the prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import split_path
from ..io._space import cannot_write, check_free_space, expected_bytes
from .output_names import beside

#: how the outputs of an input are named in the sentences
WHAT = {"labels": "the labels", "probabilities": "the probabilities",
        "uncertainty": "the uncertainty"}


def output_volumes(model, out: Path, shape, probabilities: bool = False,
                   uncertainty: bool = False) -> list[tuple[str, Path, tuple[int, ...], np.dtype]]:
    """``(role, path, shape, dtype)`` of each output of an input of spatial ``shape``."""
    shape = tuple(int(n) for n in shape)
    volumes = [("labels", out, shape, model.label_lut().dtype)]
    if probabilities:
        k = int(model.model_config.kwargs.get("out_channels", len(model.class_values)))
        volumes.append(("probabilities", beside(out, "probabilities"), (k, *shape),
                        np.dtype(np.float32)))
    if uncertainty:
        volumes.append(("uncertainty", beside(out, "uncertainty", "/uncertainty"), shape,
                        np.dtype(np.float32)))
    return volumes


def check_output_space(model, out: Path, shape, probabilities: bool = False,
                       uncertainty: bool = False) -> None:
    """Raise an :class:`.OutputError` unless the folder of ``out`` has room for all the outputs
    of an input of spatial ``shape``: ``Cannot write the labels out/x_labels.h5 and the
    probabilities beside it: it needs about ...``."""
    volumes = output_volumes(model, out, shape, probabilities, uncertainty)
    needed = sum(expected_bytes(s, dtype, split_path(path)[0].suffix)
                 for _, path, s, dtype in volumes)
    lead = cannot_write("the labels", split_path(out)[0])
    if len(volumes) > 1:
        lead += " and " + " and ".join(WHAT[role] for role, *_ in volumes[1:]) + " beside it"
    check_free_space(split_path(out)[0], needed, lead)
