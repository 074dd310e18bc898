"""What a model file may hold, checked before any of it is used (see :func:`check_model_data`).

Every field is checked for its type, range and length (the rules of :mod:`.schema`), the
fields against each other (the class values against the network's outputs, the normalisation
against the channels) and the weights against the network, which is first built on PyTorch's
``meta`` device: no memory is allocated until the file is known to fit, so a file that asks for
a network of 300 levels is refused in a sentence, not after gigabytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import SettingError
from .schema import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_FILTERS,
    MAX_LEVELS,
    boolean,
    choice,
    number,
    shown,
    whole,
)

#: the constructor arguments of every architecture, and those of some only
NETWORK_ARGUMENTS = ("spatial_dims", "in_channels", "out_channels", "levels", "base_filters",
                     "growth", "residual", "norm", "dropout", "pooling")
EXTRA_ARGUMENTS = {"resenc_unet": ("blocks",)}
_OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def check_model_data(data: Mapping[str, Any]) -> None:
    """Raise a :class:`.SettingError` naming the first field of a model file's dictionary (as
    :func:`.model_file.save_model` writes it) that is missing, of the wrong type or range, or
    that does not fit the others."""
    version = data.get("format_version")
    whole("format_version", version, 1)
    network = _network(data.get("model_config"))
    kwargs = network[1]
    _train_config(data.get("train_config"))
    channels = whole("in_channels", data.get("in_channels", 1), 1, MAX_CHANNELS)
    if channels != kwargs["in_channels"]:
        raise SettingError(f"in_channels is {channels} but the network "
                           f"(model_config.kwargs.in_channels) takes {kwargs['in_channels']}.")
    _classes(data.get("class_values"), data.get("class_names", ()), kwargs["out_channels"])
    _normalization(data.get("normalization"), channels)
    _channel_names(data.get("channel_names", ()), channels)
    _voxel_size(data.get("voxel_size"))
    whole("iteration", data.get("iteration", 0), 0)
    _history(data.get("history"))
    shapes, parameters = _network_shapes(*network)
    _weights(data.get("state_dict"), shapes)
    _optimizer(data.get("optimizer_state"), parameters)


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SettingError(f"{name} must be a mapping of names to values, got {shown(value)}.")
    return value


def _list(name: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise SettingError(f"{name} must be a list, got {shown(value)}.")
    return list(value)


def _network(config: Any) -> tuple[str, dict[str, Any]]:
    from .models import MODELS

    config = _mapping("model_config", config)
    arch = choice("model_config.architecture", config.get("architecture"), tuple(MODELS),
                  "architecture (model_config.architecture)")
    kwargs = dict(_mapping("model_config.kwargs", config.get("kwargs", {})))
    allowed = NETWORK_ARGUMENTS + EXTRA_ARGUMENTS.get(arch, ())
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise SettingError(f"model_config.kwargs holds {shown(unknown[0])}, not an argument of "
                           f"the {arch} network ({', '.join(allowed)}).")
    kwargs = {**_network_defaults(), **kwargs}
    name = "model_config.kwargs."
    dims = choice(name + "spatial_dims", kwargs["spatial_dims"], (2, 3))
    whole(name + "in_channels", kwargs["in_channels"], 1, MAX_CHANNELS)
    whole(name + "out_channels", kwargs["out_channels"], 1, MAX_CLASSES)
    levels = whole(name + "levels", kwargs["levels"], 1, MAX_LEVELS)
    whole(name + "base_filters", kwargs["base_filters"], 1, MAX_FILTERS)
    number(name + "growth", kwargs["growth"], 1.0, 4.0)
    boolean(name + "residual", kwargs["residual"])
    from .models.unet import NORMS

    choice(name + "norm", kwargs["norm"], NORMS, "norm (model_config.kwargs.norm)")
    number(name + "dropout", kwargs["dropout"], 0.0, below=1.0)
    if kwargs["pooling"] is not None:
        pooling = _list(name + "pooling", kwargs["pooling"])
        if len(pooling) != levels - 1 or not all(
                isinstance(p, (list, tuple)) and len(p) == dims and
                all(not isinstance(f, bool) and f in (1, 2) for f in p) for p in pooling):
            raise SettingError(f"{name}pooling must be {levels - 1} lists (levels - 1) of {dims} "
                               f"factors of 1 or 2, got {shown(kwargs['pooling'])}.")
    if kwargs.get("blocks") is not None:
        blocks = _list(name + "blocks", kwargs["blocks"])
        if len(blocks) != levels:
            raise SettingError(f"{name}blocks must give a number of blocks for each of the "
                               f"{levels} levels, got {shown(blocks)}.")
        for b in blocks:
            whole(name + "blocks", b, 1, 8)
    return arch, kwargs


def _network_defaults() -> dict[str, Any]:
    import inspect

    from .models import UNet

    return {k: p.default for k, p in inspect.signature(UNet).parameters.items()}


def _train_config(config: Any) -> None:
    from .config import TrainConfig

    config = _mapping("train_config", config)
    try:
        TrainConfig.from_dict(dict(config))
    except SettingError as e:
        raise SettingError(f"train_config: {e}") from None
    except (TypeError, ValueError) as e:
        raise SettingError(f"train_config: {str(e).splitlines()[0][:200]}") from None


def _classes(values: Any, names: Any, outputs: int) -> None:
    values = _list("class_values", values)
    if not 2 <= len(values) <= MAX_CLASSES:
        raise SettingError(f"class_values must list 2 to {MAX_CLASSES} classes, got "
                           f"{shown(values)}.")
    values = [whole("class_values", v, 1) for v in values]
    if max(values) > 2**63 - 1:
        raise SettingError(f"class_values must fit 64-bit integers, got {shown(max(values))}.")
    if len(set(values)) != len(values):
        raise SettingError(f"class_values must be different from each other, got "
                           f"{shown(values)}.")
    expected = 2 if outputs == 1 else outputs
    if len(values) != expected:
        raise SettingError(f"class_values lists {len(values)} classes but the network has "
                           f"{outputs} output{'s' if outputs > 1 else ''} (model_config.kwargs."
                           f"out_channels), which {'is' if outputs == 1 else 'are'} {expected} "
                           "classes.")
    names = _list("class_names", names if names is not None else [])
    if names and (len(names) != len(values) or not all(isinstance(n, str) for n in names)):
        raise SettingError(f"class_names must be {len(values)} names, one per class value, got "
                           f"{shown(names)}.")


def _channel_names(names: Any, channels: int) -> None:
    names = _list("channel_names", names if names is not None else [])
    if names and (len(names) != channels or not all(isinstance(n, str) for n in names)):
        raise SettingError(f"channel_names must be {channels} names, one per input channel, "
                           f"got {shown(names)}.")


def _normalization(norm: Any, channels: int) -> None:
    norm = _mapping("normalization", norm)
    for key in ("low", "high"):
        values = _list(f"normalization.{key}", norm.get(key))
        if len(values) != channels:
            raise SettingError(f"normalization.{key} must hold {channels} number(s), one per "
                               f"channel (in_channels), got {shown(values)}.")
        for v in values:
            number(f"normalization.{key}", v)


def _voxel_size(voxel: Any) -> None:
    if voxel is None:
        return
    voxel = _list("voxel_size", voxel)
    if len(voxel) != 3:
        raise SettingError(f"voxel_size must be 3 numbers (z, y, x), got {shown(voxel)}.")
    for v in voxel:
        number("voxel_size", v, above=0.0)


def _history(history: Any) -> None:
    """Plain records: numbers (NaN allowed: a class absent from the validation strokes), None,
    true/false, in lists (the curves) and mappings (a time budget's record, an early stop's,
    whose values may also be short texts), at most three levels deep; or None."""
    if history is None:
        return
    for key, value in _mapping("history", history).items():
        _record(f"history.{key}", value, 3)


def _record(name: str, value: Any, depth: int, named: bool = False) -> None:
    if value is None or isinstance(value, (bool, int, float)):
        return
    if named and isinstance(value, str) and len(value) <= 200:  # a record's reason
        return
    if depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            _record(name, item, depth - 1)
        return
    if depth > 0 and isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise SettingError(f"{name} must hold named records, got the key {shown(k)}.")
            _record(f"{name}.{k}", v, depth - 1, named=True)
        return
    raise SettingError(f"{name} must hold numbers, got {shown(value)}.")


def _network_shapes(arch: str, kwargs: dict[str, Any],
                    ) -> tuple[dict[str, tuple[int, ...]], list[tuple[int, ...]]]:
    """The shape of each tensor of the network's state, and of each of its parameters (in
    ``parameters()`` order), built on the meta device: no memory is allocated."""
    from .models import build_model

    try:
        with torch.device("meta"):
            network = build_model(arch, **kwargs)
    except (TypeError, ValueError) as e:
        raise SettingError(f"model_config.kwargs do not describe a network: "
                           f"{str(e).splitlines()[0][:200]}") from None
    return ({k: tuple(v.shape) for k, v in network.state_dict().items()},
            [tuple(p.shape) for p in network.parameters()])


def _weights(state: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    state = _mapping("state_dict", state)
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        which = f"lack {missing[0]}" if missing else f"hold {shown(extra[0])}, not in the network"
        more = len(missing) + len(extra) - 1
        raise SettingError(f"the weights (state_dict) do not fit the network (model_config): "
                           f"they {which}" + (f" ({more} more differ)." if more else "."))
    for key, shape in shapes.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else shown(tensor)
            raise SettingError(f"the weights (state_dict) do not fit the network (model_config):"
                               f" {key} is {got} in the file but {shape} in the network; check "
                               "model_config.kwargs (out_channels, levels, base_filters).")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SettingError(f"the weights (state_dict) hold NaN or infinite values ({key}).")


def _optimizer(state: Any, parameters: list[tuple[int, ...]]) -> None:
    """An AdamW state for the network's ``parameters`` (their shapes, in order)."""
    if state is None:
        return
    state = _mapping("optimizer_state", state)
    groups = _list("optimizer_state.param_groups", state.get("param_groups"))
    ids = []
    for group in groups:
        group = _mapping("optimizer_state.param_groups", group)
        ids += [whole("optimizer_state.param_groups.params", i, 0)
                for i in _list("optimizer_state.param_groups.params", group.get("params"))]
        for key in ("lr", "weight_decay"):
            number(f"optimizer_state.param_groups.{key}", group.get(key), 0.0)
        betas = _list("optimizer_state.param_groups.betas", group.get("betas"))
        if len(betas) != 2:
            raise SettingError(f"optimizer_state.param_groups.betas must be 2 numbers, got "
                               f"{shown(betas)}.")
    if sorted(ids) != list(range(len(parameters))):
        raise SettingError(f"optimizer_state holds the state of {len(ids)} parameters but the "
                           f"network has {len(parameters)}; fine-tune the model instead of "
                           "resuming it.")
    per_param = _mapping("optimizer_state.state", {str(k): v for k, v in
                                                   _int_keys(state.get("state"))})
    for key, entry in per_param.items():
        entry = _mapping(f"optimizer_state.state.{key}", entry)
        index = int(key)
        if index >= len(parameters):
            raise SettingError(f"optimizer_state.state holds parameter {index}; the network has "
                               f"{len(parameters)}.")
        for name in _OPTIMIZER_KEYS:
            if name in entry and (not isinstance(entry[name], torch.Tensor)
                                  or tuple(entry[name].shape) != parameters[index]):
                raise SettingError(f"optimizer_state.state.{key}.{name} does not fit parameter "
                                   f"{index} of shape {parameters[index]}.")
        step = entry.get("step", 0)
        if isinstance(step, torch.Tensor):
            if step.numel() != 1:
                raise SettingError(f"optimizer_state.state.{key}.step must be one number.")
        else:
            number(f"optimizer_state.state.{key}.step", step, 0.0)


def _int_keys(state: Any) -> list[tuple[int, Any]]:
    if not isinstance(state, Mapping):
        raise SettingError(f"optimizer_state.state must be a mapping, got {shown(state)}.")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in state):
        raise SettingError("optimizer_state.state must be keyed by parameter numbers.")
    return sorted(state.items())
