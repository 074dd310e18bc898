"""The parts of a bioimage.io model description (spec 0.5) of one of our models: axes,
pre-processing, weights, citations and the ``config`` that rebuilds the model exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from bioimageio.spec.model import v0_5

from ... import __version__
from ..models import MODELS
from ._tensors import min_sizes, size_steps
from .network import zoo_kwargs

INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
ARCHITECTURE_MODULE = "napari_seg3d.engine.zoo.network"
ARCHITECTURE_CALLABLE = "ZooNetwork"
CONFIG_KEY = "napari_seg3d"  # our section of the description's `config`

NAPARI = (("napari-seg3d {version}: 3D U-Nets trained on sparse brush strokes in napari. It is "
           "built on napari (napari contributors, 2019, napari: a multi-dimensional image viewer "
           "for Python), whose DOI this is."), "10.5281/zenodo.3555620")
UNET_3D = (("Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger (2016). 3D U-Net: learning dense "
            "volumetric segmentation from sparse annotation. MICCAI 2016."),
           "10.1007/978-3-319-46723-8_49")
STARDIST = (("Weigert, Schmidt, Haase, Sugawara, Myers (2020). Star-convex polyhedra for 3D "
             "object detection and segmentation in microscopy. WACV 2020. The model was trained "
             "on StarDist's 3D nuclei test image (BSD 3-Clause)."),
            "10.1109/WACV45572.2020.9093435")


def pytorch_version() -> v0_5.Version:
    return v0_5.Version(torch.__version__.split("+")[0])


def input_descr(model, test_input: Path, sample: Path) -> v0_5.InputTensorDescr:
    """The image: ``(batch, channel, z, y, x)`` float32, sizes ``min + n * step`` per axis,
    the voxel size as each spatial axis' scale, our normalisation as pre-processing."""
    steps, least = size_steps(model), min_sizes(model)
    scale = model.voxel_size or (1.0, 1.0, 1.0)
    axes: list[Any] = [v0_5.BatchAxis(), v0_5.ChannelAxis(
        channel_names=[f"channel{c}" for c in range(model.in_channels)])]
    for a, s, step, m in zip("zyx", scale, steps, least):
        axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(a), scale=float(s),
                                        size=v0_5.ParameterizedSize(min=m, step=step)))
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT_ID), axes=axes, description="the image, raw intensities",
        test_tensor=v0_5.FileDescr(source=test_input), sample_tensor=v0_5.FileDescr(source=sample),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=preprocessing(model.normalization))


def preprocessing(normalization) -> list:
    """Our ``(x - low) / (high - low)`` per channel as one ``scale_linear`` step:
    ``gain = 1 / (high - low)``, ``offset = -low / (high - low)`` (none if it is the identity)."""
    gains, offsets = [], []
    for low, high in zip(normalization.low, normalization.high):
        gain = 1.0 / max(float(high) - float(low), 1e-6)
        gains.append(gain)
        offsets.append(-float(low) * gain)
    if all(g == 1.0 for g in gains) and all(o == 0.0 for o in offsets):
        return []
    if len(gains) == 1:
        kwargs: Any = v0_5.ScaleLinearKwargs(gain=gains[0], offset=offsets[0])
    else:
        kwargs = v0_5.ScaleLinearAlongAxisKwargs(axis=v0_5.AxisId("channel"), gain=gains,
                                                 offset=offsets)
    return [v0_5.ScaleLinearDescr(kwargs=kwargs)]


def output_names(model) -> list[str]:
    """One name per output channel: the class names; a one-output (sigmoid) model's channel is
    the probability of its second class (the first is its background)."""
    k = int(model.network.out_channels)
    names = list(model.class_names)
    return names[-1:] if k == 1 else names[:k]


def output_descr(model, test_output: Path, sample: Path) -> v0_5.OutputTensorDescr:
    """Class probabilities ``(batch, channel, z, y, x)`` in [0, 1], the input's size."""
    scale = model.voxel_size or (1.0, 1.0, 1.0)
    axes: list[Any] = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=output_names(model))]
    for a, s in zip("zyx", scale):
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(a))
        axes.append(v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), scale=float(s), size=size))
    what = ("the probability of the class named by the channel (sigmoid)"
            if model.network.out_channels == 1 else "class probabilities (softmax over channels)")
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID), axes=axes, description=what,
        test_tensor=v0_5.FileDescr(source=test_output), sample_tensor=v0_5.FileDescr(source=sample),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))


def weights_descr(model, state_dict: Path, torchscript: Path) -> v0_5.WeightsDescr:
    """``pytorch_state_dict`` weights of :class:`.network.ZooNetwork` (imported from this
    package) and their TorchScript copy."""
    architecture = v0_5.ArchitectureFromLibraryDescr(
        import_from=ARCHITECTURE_MODULE, callable=v0_5.Identifier(ARCHITECTURE_CALLABLE),
        kwargs=zoo_kwargs(model))
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=state_dict, architecture=architecture, pytorch_version=pytorch_version()),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=torchscript, pytorch_version=pytorch_version(),
            parent="pytorch_state_dict"))


def citations(on_sample: bool) -> list[v0_5.CiteEntry]:
    """napari-seg3d (by napari's DOI), the 3D U-Net, and StarDist for models of the sample."""
    entries = [(NAPARI[0].format(version=__version__), NAPARI[1]), UNET_3D]
    if on_sample:
        entries.append(STARDIST)
    return [v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in entries]


def our_config(model) -> dict[str, Any]:
    """What rebuilds the ``SegmentationModel`` when the package is loaded by napari-seg3d."""
    best = model.history.get("best_val_dice")
    return {
        "format_version": 1,
        "package_version": __version__,
        "model_config": model.model_config.to_dict(),
        "train_config": model.train_config.to_dict(),
        "class_values": [int(v) for v in model.class_values],
        "class_names": [str(n) for n in model.class_names],
        "normalization": model.normalization.to_dict(),
        "in_channels": int(model.in_channels),
        "voxel_size": None if model.voxel_size is None else [float(v) for v in model.voxel_size],
        "iteration": int(model.iteration),
        "best_val_dice": None if best is None else [float(d) for d in best],
    }


def tags(model) -> list[str]:
    arch = model.model_config.architecture
    return ["napari-seg3d", "3d", "semantic-segmentation", "pytorch",
            arch.replace("_", "-") if arch in MODELS else arch] + (
        ["2.5d"] if model.dims == 2 else [])
