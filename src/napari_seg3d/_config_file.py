"""Training settings as a YAML file: ``napari-seg3d train --config FILE.yaml`` reads one, and
``napari-seg3d info MODEL --config`` writes the one that reproduces a model's run.

The file is a flat mapping of :class:`TrainConfig` fields plus the network's ``architecture``,
``dims`` (3, or 2 for a 2D network on slices), ``base_filters`` and ``levels``; every key is optional. Options given on the command line win over the file. ``iterations`` wins over
``minutes`` (a time budget) in the same file; on the command line, ``--minutes`` replaces the
file's ``iterations`` and ``--iterations`` its ``minutes``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from .engine.config import TrainConfig
from .engine.errors import Seg3DError
from .engine.schema import check_settings, shown
from .engine.plan import NETWORK_SETTINGS

NETWORK_KEYS = tuple(NETWORK_SETTINGS)


def setting_names() -> tuple[str, ...]:
    """Every key a config file may hold."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig)) + NETWORK_KEYS


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML file, checked (see :mod:`.engine.schema`): unknown keys, values
    of the wrong type or range, a file that is not UTF-8 text raise a :class:`Seg3DError` that
    names the file and the setting. A number written as ``1e-3`` (which YAML reads as text) is
    read as the number."""
    import yaml

    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise Seg3DError(f"Cannot read the config file {path}: {e.strerror or e}.") from e
    except UnicodeDecodeError as e:
        raise Seg3DError(f"The config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} "
                         f"at position {e.start}); save it as UTF-8.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise Seg3DError(f"The config file {path} is not valid YAML: {e}".splitlines()[0]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Seg3DError(f"The config file {path} must hold a mapping of settings, "
                         f"got {type(data).__name__}.")
    unknown = sorted(shown(k) if not isinstance(k, str) else k
                     for k in data if k not in setting_names())
    if unknown:
        raise Seg3DError(f"Unknown settings in {path}: {', '.join(unknown[:10])}. Valid "
                         f"settings: {', '.join(setting_names())}.")
    data = {k: _number_text(k, v) for k, v in data.items()}
    try:
        settings = check_settings(data)
        TrainConfig.from_dict({k: v for k, v in settings.items()
                               if k not in NETWORK_KEYS and v is not None})
    except (TypeError, ValueError) as e:
        raise Seg3DError(f"Invalid setting in {path}: {e}") from e
    return settings


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _number_text(name: str, value: Any) -> Any:
    """``"1e-3"`` -> ``0.001`` for the decimal settings (YAML 1.1 reads an exponent without a
    dot as text); anything else unchanged."""
    if isinstance(value, str) and name in _DECIMALS and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


_DECIMALS = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", float)}


def model_config_yaml(model) -> str:
    """The YAML config that trains ``model`` again from the same image and strokes."""
    import yaml

    settings = model.train_config.to_dict()
    settings.pop("device", None)  # where to run is the machine's business, not the run's
    if settings.get("minutes") is not None:  # a budget not fixed yet: iterations is its cap
        settings.pop("iterations")
        if not settings.get("validate_every"):
            settings.pop("validate_every")
    kwargs = model.model_config.kwargs
    settings["architecture"] = model.model_config.architecture
    settings["dims"] = model.dims
    settings["base_filters"] = int(kwargs.get("base_filters", 16))
    settings["levels"] = int(kwargs["levels"]) if "levels" in kwargs else None
    header = (f"# napari-seg3d training settings of a model trained {model.iteration} iterations;\n"
              "# napari-seg3d train --image IMAGE --labels LABELS --out MODEL --config THIS.yaml\n")
    budget = model.history.get("budget")
    if budget and model.train_config.minutes is None:
        header += (f"# iterations: {budget['iterations']} were fixed by a time budget of "
                   f"{budget['minutes']:g} minutes ({budget['step_seconds']:.2g} s a step); to plan "
                   f"them again from this machine's speed, replace that line by "
                   f"minutes: {budget['minutes']:g}\n")
    return header + yaml.safe_dump(settings, sort_keys=False)
