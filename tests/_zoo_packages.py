"""For the bioimage.io tests: a tiny model of ours trained on the nuclei sample, and other tools'
packages built with bioimageio.spec from a tiny torch network that is not one of ours, fitting
ones and ones that do not fit."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from conftest import run_to_end
from torch import nn

from napari_seg3d._sample_data import load_nuclei
from napari_seg3d.engine import TrainConfig, Trainer, default_model_config, save_model

TEST_SHAPE = (1, 1, 12, 20, 24)


def train_on_sample(folder: Path, *, dims: int = 3, loss: str = "ce_dice") -> Path:
    """A tiny model trained 3 iterations on the nuclei sample, saved in ``folder``."""
    image, _, scribbles = load_nuclei()
    patch = (16, 32, 32)
    cfg = TrainConfig(patch_size=patch, batch_size=2, iterations=3, validate_every=1,
                      device="cpu", amp=False, self_training=0, loss=loss)
    out = 1 if loss == "bce_dice" else 2
    mc = default_model_config(1, out, patch, base_filters=4, levels=2, dims=dims)
    trainer = Trainer(image, scribbles, cfg, model_config=mc,
                      class_names=["background", "nucleus"])
    return save_model(run_to_end(trainer.run()).best, folder / "model.pt")


class TinyNet(nn.Module):
    """One 3x3x3 convolution: logits of ``classes`` channels (a class of another tool)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_package(folder: Path, *, weights: str = "library", axes: str = "bczyx",
                  preprocessing: str = "zero_mean_unit_variance", output_size: str = "same",
                  classes: int = 3) -> Path:
    """Write ``folder/package.zip``.

    Args:
        weights: ``"library"`` (pytorch_state_dict, TinyNet imported from this module),
            ``"file"`` (pytorch_state_dict, TinyNet from a source file in the package),
            ``"os.system"`` (its "architecture" is ``os.system`` with a shell command),
            ``"torchscript"`` (TorchScript only), ``"tensorflow"`` (TensorFlow only).
        axes: ``"bczyx"`` or ``"bcyx"`` (a 2D model).
        preprocessing: ``"zero_mean_unit_variance"``, ``"scale_range"`` or ``"clip"``.
        output_size: ``"same"`` or ``"smaller"`` (the output is the input less 2 voxels).
    """
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = TinyNet(classes).eval()
    shape = TEST_SHAPE if axes == "bczyx" else TEST_SHAPE[:2] + TEST_SHAPE[3:]
    x = (100 + 20 * np.random.default_rng(0).normal(size=shape)).astype(np.float32)
    files = {name: folder / name for name in ("in.npy", "out.npy", "w.pt", "README.md")}
    np.save(files["in.npy"], x)
    np.save(files["out.npy"], np.zeros((1, classes) + shape[2:], np.float32))
    files["README.md"].write_text("# A tiny model of another tool\n")
    inp = v0_5.InputTensorDescr(
        id=v0_5.TensorId("input0"), axes=_axes(axes, v0_5.SpaceInputAxis, "raw"),
        test_tensor=v0_5.FileDescr(source=files["in.npy"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[_preprocessing(preprocessing, axes[2:], v0_5)])
    out = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("output0"),
        axes=_output_axes(axes, classes, output_size, v0_5),
        test_tensor=v0_5.FileDescr(source=files["out.npy"]),
        postprocessing=[v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))])
    with ValidationContext(perform_io_checks=False):
        descr = v0_5.ModelDescr(
            name="tiny model of another tool", description="a test", license="MIT",
            authors=[v0_5.Author(name="someone")],
            cite=[v0_5.CiteEntry(text="a test", doi=v0_5.Doi("10.1000/182"))],
            documentation=v0_5.FileDescr(source=files["README.md"]), inputs=[inp], outputs=[out],
            weights=_weights(weights, net, files, folder, x, v0_5))
        return save_bioimageio_package(descr, output_path=folder / "package.zip")


def _axes(axes: str, space, channel: str) -> list:
    from bioimageio.spec.model import v0_5

    out = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[channel])]
    return out + [space(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=4, step=4))
                  for a in axes[2:]]


def _output_axes(axes: str, classes: int, size: str, v0_5) -> list:
    out = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[f"class{k}" for k in range(classes)])]
    offset = 0 if size == "same" else -2
    return out + [v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), size=v0_5.SizeReference(
        tensor_id=v0_5.TensorId("input0"), axis_id=v0_5.AxisId(a), offset=offset))
        for a in axes[2:]]


def _preprocessing(kind: str, space: str, v0_5):
    spatial = [v0_5.AxisId(a) for a in space]
    if kind == "zero_mean_unit_variance":
        return v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=spatial))
    if kind == "scale_range":
        return v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=spatial, min_percentile=1.0, max_percentile=99.0))
    return v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=200.0))


def _weights(kind: str, net: nn.Module, files: dict, folder: Path, x: np.ndarray, v0_5):
    version = v0_5.Version(torch.__version__.split("+")[0])
    torch.save(net.state_dict(), files["w.pt"])
    kwargs = {"classes": net.conv.out_channels}
    if kind == "library":
        arch = v0_5.ArchitectureFromLibraryDescr(import_from="_zoo_packages",
                                                 callable=v0_5.Identifier("TinyNet"),
                                                 kwargs=kwargs)
    elif kind == "os.system":  # a callable that is not a network, with a command as argument
        arch = v0_5.ArchitectureFromLibraryDescr(
            import_from="os", callable=v0_5.Identifier("system"),
            kwargs={"command": f"touch {folder / 'ran'}"})
    elif kind == "file":
        source = folder / "tiny_net.py"
        source.write_text("import torch\nfrom torch import nn\n\n\n"
                          + inspect.getsource(TinyNet))
        arch = v0_5.ArchitectureFromFileDescr(source=source, callable=v0_5.Identifier("TinyNet"),
                                              kwargs=kwargs)
    if kind in ("library", "file", "os.system"):
        return v0_5.WeightsDescr(pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=files["w.pt"], architecture=arch, pytorch_version=version))
    if kind == "torchscript":
        script = folder / "w.torchscript.pt"
        torch.jit.trace(net, torch.from_numpy(x)).save(str(script))
        return v0_5.WeightsDescr(torchscript=v0_5.TorchscriptWeightsDescr(
            source=script, pytorch_version=version))
    bundle = folder / "saved_model.zip"
    bundle.write_bytes(b"not a real TensorFlow model")
    return v0_5.WeightsDescr(tensorflow_saved_model_bundle=v0_5.TensorflowSavedModelBundleWeightsDescr(
        source=bundle, tensorflow_version=v0_5.Version("2.15")))
