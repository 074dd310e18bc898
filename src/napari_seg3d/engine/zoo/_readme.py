"""The README.md of an exported package: what the model segments, how it was trained (settings
and held-out-stroke Dice), its input and output, where the test input comes from, how to use it."""

from __future__ import annotations

import numpy as np

from ... import __version__
from ._tensors import min_sizes, size_steps


def readme(model, *, name: str, description: str, test_input: str, on_sample: bool) -> str:
    """The README text (Markdown).

    Args:
        model: the ``SegmentationModel`` exported.
        name, description: the package's.
        test_input: where the test input comes from, in a sentence.
        on_sample: the model was trained on napari-seg3d's nuclei sample (StarDist's image).
    """
    parts = [f"# {name}\n\n{description}\n", _classes(model), _training(model), _io(model),
             (f"## Test tensors\n\n{test_input} `test_output.npy` is the network's output on "
              "it (float32, CPU).\n"), USAGE, _credits(on_sample)]
    return "\n".join(parts)


def _classes(model) -> str:
    k = int(model.network.out_channels)
    best = model.history.get("best_val_dice") or [None] * len(model.class_values)
    rows = ["| output channel | class | label value | held-out-stroke Dice |", "|---|---|---|---|"]
    for i, (value, cname) in enumerate(zip(model.class_values, model.class_names)):
        dice = "-" if i >= len(best) or best[i] is None else f"{best[i]:.3f}"
        channel = str(i) if k > 1 else ("0 (p)" if i == 1 else "- (1 - p)")
        rows.append(f"| {channel} | {cname} | {value} | {dice} |")
    mean = [d for d in best if d is not None]
    summary = (f"Mean Dice on the held-out strokes (the validation strokes napari-seg3d keeps out "
               f"of training): **{np.mean(mean):.3f}**." if mean else
               "No held-out-stroke Dice was measured (no validation strokes).")
    return "## Validation\n\n" + "\n".join(rows) + f"\n\n{summary}\n"


def _training(model) -> str:
    cfg = model.train_config.to_dict()
    rows = ["| setting | value |", "|---|---|",
            f"| architecture | {model.model_config.architecture} ({model.dims}D"
            + (", 2.5D: applied to slices along z, y and x" if model.dims == 2 else "") + ") |",
            f"| network | {_plain(model.model_config.to_dict()['kwargs'])} |",
            f"| iterations trained | {model.iteration} |",
            f"| voxel size (z, y, x) | {_plain(model.voxel_size)} |"]
    rows += [f"| {key} | {_plain(value)} |" for key, value in cfg.items()]
    return (f"## Training\n\nTrained with napari-seg3d {__version__} on sparse brush strokes "
            "(label 0 = not annotated).\n\n" + "\n".join(rows) + "\n")


def _io(model) -> str:
    norm = model.normalization
    ranges = ", ".join(f"channel {c}: low {lo:g}, high {hi:g}"
                       for c, (lo, hi) in enumerate(zip(norm.low, norm.high)))
    out = ("the probability p of the class named by its one channel (sigmoid); the label is "
           "that class where p > 0.5" if model.network.out_channels == 1 else
           "class probabilities (softmax over the channels); the label is the class of the "
           "largest")
    return ("## Input and output\n\n"
            f"- Input `raw`: (batch, channel, z, y, x) float32, {model.in_channels} channel(s), "
            f"raw intensities; sizes min + n x step per axis, min {min_sizes(model)}, step "
            f"{size_steps(model)}. The training window was {tuple(model.patch_size)}: tile "
            "larger images with windows of about that size, overlapping.\n"
            f"- Pre-processing (`scale_linear`): x -> (x - low) / (high - low) per channel, "
            f"with the intensity range of the training image ({ranges}).\n"
            f"- Output `probabilities`: (batch, channel, z, y, x) float32 in [0, 1], the "
            f"input's size: {out}.\n")


USAGE = """## Use it

- **napari-seg3d**: `napari-seg3d predict IMAGE.tif --model THIS.zip --out DIR`, or choose the
  file in the Predict or Batch predict widget (*From file...*).
- **bioimageio.core** (Python; `pip install bioimageio.core`, and napari-seg3d for the
  `pytorch_state_dict` weights, or TorchScript without it):

  ```python
  from bioimageio.core import load_model_description, predict
  model = load_model_description("THIS.zip")
  sample = predict(model=model, inputs=image_czyx[None])  # (1, C, Z, Y, X) float32
  probabilities = sample.members["probabilities"].data
  ```
- **deepImageJ** (Fiji) and **ilastik** (*Neural Network Classification*): import the zip;
  they run the TorchScript weights, or the `pytorch_state_dict` ones where napari-seg3d is
  installed.
"""


def _credits(on_sample: bool) -> str:
    text = ("## Licence and citation\n\nBSD-3-Clause. Please cite napari-seg3d (with napari) "
            "and the 3D U-Net (see `cite` in rdf.yaml).")
    if on_sample:
        text += (" The model was trained on StarDist's 3D nuclei test image (Schmidt, Weigert "
                 "et al., BSD 3-Clause; see LICENSE-stardist.txt): cite StarDist too.")
    return text + "\n"


def _plain(value) -> str:
    return "-" if value is None else str(value).replace("|", "/")
