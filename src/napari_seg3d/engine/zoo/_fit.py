"""Whether another tool's bioimage.io model fits napari-seg3d, read from its description (spec
0.5): one float32 input ``(batch?, channel?, z, y, x)``, one output of class probabilities or
logits of the input's size, pre-processing napari-seg3d can apply. Each misfit raises one
sentence that names it."""

from __future__ import annotations

from dataclasses import dataclass

from ._preprocess import _unfit, normalization_of

ACTIVATIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class Layout:
    """Which of the batch and channel axes a tensor has (always z, y, x after them)."""

    batch: bool
    channel: bool
    batch_of_one: bool = False


@dataclass(frozen=True)
class Fit:
    """What napari-seg3d needs to run a package's model."""

    name: str
    in_channels: int
    out_channels: int
    class_names: tuple[str, ...]
    window: tuple[int, int, int]
    voxel_size: tuple[float, float, float] | None
    normalization: object  # a ChannelAffine or ImageStatistics
    output: str  # "softmax", "sigmoid" (post-processing of logits), "probabilities", "logits"
    input_layout: Layout
    output_layout: Layout


def check_fit(descr, name: str, test_shape: tuple[int, ...] | None) -> Fit:
    """The :class:`Fit` of a model description, or a :class:`ModelFileError` sentence.

    Args:
        descr: a ``bioimageio.spec.model.v0_5.ModelDescr``.
        name: the package's file name, for the sentences.
        test_shape: the shape of its test input (the window is the valid size nearest to it).
    """
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise _unfit(name, f"it has {len(descr.inputs)} inputs and {len(descr.outputs)} "
                     "outputs; napari-seg3d runs models of one image and one output")
    inp, out = descr.inputs[0], descr.outputs[0]
    in_layout, in_axes = _layout(inp, name, "input")
    out_layout, out_axes = _layout(out, name, "output")
    channels = _channels(inp)
    _check_dtype(inp, name)
    _check_output_size(inp, in_axes, out_axes, name)
    output = _output_kind(out, _channels(out), name)
    spatial = {str(a.id): a for a in in_axes}
    scale = tuple(float(getattr(spatial[a], "scale", 1.0)) for a in "zyx")
    return Fit(
        name=name, in_channels=channels, out_channels=_channels(out),
        class_names=_class_names(out), window=_window(in_axes, test_shape, name),
        voxel_size=None if scale == (1.0, 1.0, 1.0) else scale,
        normalization=normalization_of(inp.preprocessing, channels, name), output=output,
        input_layout=in_layout, output_layout=out_layout)


def _layout(tensor, name: str, what: str):
    """The :class:`Layout` of a tensor and its z, y, x axes, or a sentence."""
    axes = list(tensor.axes)
    ids = [str(a.id) for a in axes]
    shown = ", ".join(ids)
    if "z" not in ids and {"y", "x"} <= set(ids):
        raise _unfit(name, f"it is a 2D model (its {what} axes are {shown}); napari-seg3d "
                     "applies 3D models, with axes batch, channel, z, y, x")
    others = [str(a.type) for a in axes if a.type not in ("batch", "channel", "space")]
    if others:
        raise _unfit(name, f"its {what} has a {others[0]} axis ({shown}); napari-seg3d gives "
                     "models (batch, channel, z, y, x) volumes")
    types = [a.type for a in axes]
    batch, channel = "batch" in types, "channel" in types
    expected = (["batch"] if batch else []) + (["channel"] if channel else []) + ["z", "y", "x"]
    actual = ["batch" if a.type == "batch" else "channel" if a.type == "channel" else str(a.id)
              for a in axes]
    if actual != expected:
        raise _unfit(name, f"its {what} axes are {shown}; napari-seg3d needs them in the order "
                     "batch, channel, z, y, x (batch and channel optional)")
    one = batch and getattr(axes[0], "size", None) == 1
    return Layout(batch, channel, bool(one)), axes[-3:]


def _channels(tensor) -> int:
    for a in tensor.axes:
        if a.type == "channel":
            return len(a.channel_names)
    return 1


def _class_names(out) -> tuple[str, ...]:
    for a in out.axes:
        if a.type == "channel":
            return tuple(str(n) for n in a.channel_names)
    return (str(out.id),)


def _check_dtype(inp, name: str) -> None:
    first = inp.preprocessing[0] if inp.preprocessing else None
    casts = first is not None and first.id == "ensure_dtype" and \
        first.kwargs.dtype in ("float32", "float64")
    if inp.dtype not in ("float32", "float64") and not casts:
        raise _unfit(name, f"its input is {inp.dtype}; napari-seg3d gives models float32 images")


def _check_output_size(inp, in_axes, out_axes, name: str) -> None:
    """The output's z, y, x must be the input's: a reference to the same axis, or equal sizes."""
    for a_in, a_out in zip(in_axes, out_axes):
        size = a_out.size
        same_ref = (getattr(size, "tensor_id", None) == inp.id
                    and str(getattr(size, "axis_id", "")) == str(a_in.id)
                    and getattr(size, "offset", 0) == 0
                    and float(a_out.scale) == float(a_in.scale))
        same_int = isinstance(size, int) and size == a_in.size
        if not (same_ref or same_int):
            raise _unfit(name, f"its output's {a_out.id} axis is not the size of its input's; "
                         "napari-seg3d needs a voxel-wise output of the input's size")


def _output_kind(out, channels: int, name: str) -> str:
    """How the output becomes probabilities: ``"sigmoid"`` / ``"softmax"`` (post-processing of
    logits), ``"probabilities"`` (declared in [0, 1]), else ``"logits"``."""
    data = out.data if not isinstance(out.data, (list, tuple)) else out.data[0]
    if not hasattr(data, "range"):
        raise _unfit(name, "its output holds labels or ids, not class probabilities")
    ops = [op.id for op in out.postprocessing if op.id != "ensure_dtype"]
    unknown = [op for op in ops if op not in ACTIVATIONS]
    if unknown or len(ops) > 1:
        raise _unfit(name, f"its post-processing '{(unknown or ops)[0]}' is not one napari-seg3d "
                     "applies (sigmoid or softmax over the channels)")
    if ops == ["softmax"]:
        if channels == 1:
            raise _unfit(name, "its output is the softmax of one channel")
        softmax = next(op for op in out.postprocessing if op.id == "softmax")
        if str(softmax.kwargs.axis) != "channel":
            raise _unfit(name, "its softmax is not over the channels")
    if ops:
        return ops[0]
    low, high = data.range
    inside = low is not None and high is not None and low >= 0 and high <= 1
    return "probabilities" if inside else "logits"


def _window(axes, test_shape, name: str) -> tuple[int, int, int]:
    """The valid input size nearest to the test input's, per axis (z, y, x)."""
    targets = tuple(test_shape[-3:]) if test_shape is not None else (64, 64, 64)
    sizes = []
    for a, target in zip(axes, targets):
        size = a.size
        if isinstance(size, int):
            sizes.append(size)
        elif hasattr(size, "step"):
            n = max(0, round((target - size.min) / size.step))
            sizes.append(size.min + n * size.step)
        else:
            raise _unfit(name, f"its input's {a.id} size depends on another tensor")
    return tuple(sizes)  # type: ignore[return-value]
