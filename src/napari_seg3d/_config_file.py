"""Training settings as a YAML file: ``napari-seg3d train --config FILE.yaml`` reads one, and
``napari-seg3d info MODEL --config`` writes the one that reproduces a model's run.

The file is a flat mapping of :class:`TrainConfig` fields plus the network's ``architecture``,
``dims`` (3, or 2 for a 2D network on slices), ``base_filters`` and ``levels``; every key is optional. Options given on the command line win over the file. ``iterations`` wins over
``minutes`` (a time budget) in the same file; on the command line, ``--minutes`` replaces the
file's ``iterations`` and ``--iterations`` its ``minutes``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .engine.config import TrainConfig
from .engine.errors import Seg3DError
from .engine.plan import NETWORK_SETTINGS

NETWORK_KEYS = tuple(NETWORK_SETTINGS)


def setting_names() -> tuple[str, ...]:
    """Every key a config file may hold."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig)) + NETWORK_KEYS


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML file, checked: unknown keys and invalid values raise a
    :class:`Seg3DError` that names them."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise Seg3DError(f"Cannot read the config file {path}: {e.strerror or e}.") from e
    except yaml.YAMLError as e:
        raise Seg3DError(f"The config file {path} is not valid YAML: {e}".splitlines()[0]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Seg3DError(f"The config file {path} must hold a mapping of settings, "
                         f"got {type(data).__name__}.")
    unknown = sorted(set(map(str, data)) - set(setting_names()))
    if unknown:
        raise Seg3DError(f"Unknown settings in {path}: {', '.join(unknown)}. Valid settings: "
                         f"{', '.join(setting_names())}.")
    train = {k: v for k, v in data.items() if k not in NETWORK_KEYS}
    try:
        TrainConfig.from_dict(train)
        _check_network(data)
    except (TypeError, ValueError) as e:
        raise Seg3DError(f"Invalid setting in {path}: {e}") from e
    return dict(data)


def _check_network(data: dict) -> None:
    from .engine.models import MODELS

    if "dims" in data and data["dims"] not in (2, 3):
        raise ValueError(f"dims must be 2 (a 2D network on slices, 2.5D) or 3, got "
                         f"{data['dims']!r}.")
    if "architecture" in data and data["architecture"] not in MODELS:
        raise ValueError(f"Unknown architecture {data['architecture']!r}; choose one of "
                         f"{', '.join(MODELS)}.")


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
