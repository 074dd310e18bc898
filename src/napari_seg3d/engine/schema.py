"""The rules of every setting: its type, its range, its length, broken in one sentence that names
it (a :class:`.SettingError`).

The same rules check a :class:`.TrainConfig` when it is made (from the API, the widgets, the
command line, a config file or a model file), the network settings of a config file and of
:func:`.plan.plan_training`, and (in :mod:`.model_schema`) everything a model file holds. A value
is shown at most :data:`MAX_SHOWN` characters long, however large it is (a YAML file can expand
a few lines into billions of items).
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SettingError

MAX_SHOWN = 60
MAX_PATCH_VOXELS = 1 << 24  # 256^3: the largest training patch or prediction window
MAX_PATCH_EDGE = 4096
MAX_LEVELS = 8  # a U-Net of 8 levels pools 128-fold along an axis
MAX_FILTERS = 320  # as models.unet.MAX_FILTERS: more feature maps are capped there anyway
MAX_CHANNELS = 16
MAX_CLASSES = 64


def shown(value: Any) -> str:
    """``repr(value)``, at most :data:`MAX_SHOWN` characters, computed without walking all of a
    large or deeply nested value."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, 40, 40, 30
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxarray = 6
    text = short.repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _fail(name: str, rule: str, value: Any) -> SettingError:
    return SettingError(f"{name} must be {rule}, got {shown(value)}.")


def _n(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _span(lo, hi, above=None) -> str:
    if above is not None:
        return f" above {_n(above)}" + (f" and at most {_n(hi)}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f" from {_n(lo)} to {_n(hi)}"
    if lo is not None:
        return f" of at least {_n(lo)}"
    return f" of at most {_n(hi)}" if hi is not None else ""


def whole(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (booleans and decimals are refused)."""
    rule = "a whole number" + _span(lo, hi)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _fail(name, rule, value)
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(name, rule, value)
    return value


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
           above: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``above``/``below``: open bounds)."""
    rule = "a number" + _span(lo, hi if below is None else None, above)
    if below is not None:
        rule += f" and below {_n(below)}" if (lo is not None or above is not None) else \
            f" below {_n(below)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _fail(name, rule, value)
    value = float(value)
    if (not math.isfinite(value) or (lo is not None and value < lo)
            or (hi is not None and value > hi) or (above is not None and value <= above)
            or (below is not None and value >= below)):
        raise _fail(name, rule, value)
    return value


def boolean(name: str, value: Any) -> bool:
    """``value`` as a ``bool``: only ``True`` and ``False`` (a string ``"false"`` is refused,
    where Python would read it as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "true or false", value)
    return bool(value)


def choice(name: str, value: Any, options: Sequence[Any], what: str | None = None) -> Any:
    """``value`` if it is one of ``options``; else ``Unknown <what> ...; choose one of ...``."""
    hashable = isinstance(value, str) or not isinstance(value, (list, tuple, dict, set))
    if hashable and any(value == o and type(value) is type(o) for o in options):
        return value
    raise SettingError(f"Unknown {what or name} {shown(value)}; choose one of "
                       f"{', '.join(map(str, options))}.")


def wholes(name: str, value: Any, length: int, lo: int | None = None,
           hi: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of ``length`` whole numbers in ``[lo, hi]``."""
    rule = f"{length} whole numbers" + _span(lo, hi)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise _fail(name, rule, value)
    try:
        return tuple(whole(name, v, lo, hi) for v in value)
    except SettingError:
        raise _fail(name, rule, value) from None


def patch_size(name: str, value: Any) -> tuple[int, int, int]:
    """Three positive whole numbers ``(Z, Y, X)``, together at most :data:`MAX_PATCH_VOXELS`."""
    try:
        patch = wholes(name, value, 3, 1, MAX_PATCH_EDGE)
    except SettingError:
        raise SettingError(f"{name} must be three positive integers (Z, Y, X), got "
                           f"{shown(value)}.") from None
    if math.prod(patch) > MAX_PATCH_VOXELS:
        raise SettingError(f"{name} {patch} holds {math.prod(patch):,} voxels; at most "
                           f"{MAX_PATCH_VOXELS:,} (256 x 256 x 256) fit a patch: choose a smaller "
                           "one.")
    return patch  # type: ignore[return-value]


def _rule(check: Callable, *args: Any, **kwargs: Any) -> Callable[[str, Any], Any]:
    return lambda name, value: check(name, value, *args, **kwargs)


def train_rules() -> dict[str, Callable[[str, Any], Any]]:
    """The rule of each :class:`.TrainConfig` field."""
    from .config import DEVICES, LOSSES, PLANES

    return {
        "patch_size": patch_size,
        "batch_size": _rule(whole, 1, 1024),
        "iterations": _rule(whole, 1, 100_000_000),
        "learning_rate": _rule(number, hi=1.0, above=0.0),
        "weight_decay": _rule(number, 0.0, 1.0),
        "loss": _rule(choice, LOSSES, "loss"),
        "device": _rule(choice, DEVICES, "device"),
        "seed": _rule(whole, 0, 2**32 - 1),
        "amp": boolean,
        "validation_fraction": _rule(number, 0.0, 0.5),
        "validate_every": _rule(whole, 0),  # 0: a tenth of a budget run (see TrainConfig)
        "random_patch_fraction": _rule(number, 0.0, 1.0),
        "augment": boolean,
        "smoothness": _rule(number, 0.0, 100.0),
        "self_training": _rule(whole, 0, 100),
        "pseudo_threshold": _rule(number, 0.5, 1.0),
        "self_training_forest": boolean,
        "keep_forest": boolean,
        "planes": _rule(choice, PLANES, "planes"),
        "minutes": minutes,
        "early_stop": boolean,
    }


def minutes(name: str, value: Any) -> float | None:
    """A time budget: None (none) or a positive finite number of minutes."""
    if value is None:
        return None
    try:
        return number(name, value, above=0.0)
    except SettingError:
        raise SettingError(f"The time budget must be a positive number of minutes, got "
                           f"{shown(value)}.") from None


def network_rules() -> dict[str, Callable[[str, Any], Any]]:
    """The rule of each network setting of a plan or a config file (``dims``,
    ``architecture``, ``base_filters``, ``levels``; None is "planned")."""
    from .models import MODELS

    def levels(name: str, value: Any) -> int | None:
        return None if value is None else whole(name, value, 1, MAX_LEVELS)

    return {"dims": _rule(choice, (2, 3), "dims"),
            "architecture": _rule(choice, tuple(MODELS), "architecture"),
            "base_filters": _rule(whole, 1, MAX_FILTERS), "levels": levels}


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Each known setting of ``settings`` (training and network ones) checked and cleaned;
    unknown names are passed through (their callers list the valid ones). None means "not set"
    and is kept."""
    rules = {**train_rules(), **network_rules()}
    return {name: value if value is None or name not in rules else rules[name](name, value)
            for name, value in settings.items()}


def check_depth(levels: int, pooling: Sequence[Sequence[int]], patch: Sequence[int],
                option: str = "levels") -> None:
    """Refuse a network too deep for its patch: its poolings must leave every axis of the
    deepest feature map at least one voxel, and that map more than one voxel (instance norm).

    Args:
        levels: the network's levels.
        pooling: its ``levels - 1`` per-axis pooling factors.
        patch: the training patch, spatial axes of the network only (``(Y, X)`` for 2D).
        option: how the user names the levels (``"--levels"``, ``"levels"``).
    """
    fits = max_levels(pooling, patch)
    if levels <= fits:
        return
    axes = "ZYX"[-len(patch):]
    factors = [math.prod(f[i] for f in pooling) for i in range(len(patch))]
    worst = max(range(len(patch)), key=lambda i: factors[i] / patch[i])
    raise SettingError(f"{option} {levels} is too deep for the patch {tuple(patch)}: its "
                       f"{levels - 1} poolings shrink {axes[worst]} {factors[worst]}-fold, more "
                       f"than its {patch[worst]} voxels; choose {option} {fits} or fewer, or a "
                       "larger patch.")


def max_levels(pooling: Sequence[Sequence[int]], patch: Sequence[int]) -> int:
    """The most levels of ``pooling`` (its first ones) that ``patch`` can take."""
    size = [int(p) for p in patch]
    fits = 1
    for level in pooling:
        size = [s // f for s, f in zip(size, level)]
        if min(size) < 1 or math.prod(size) < 2:
            break
        fits += 1
    return fits


def check_network_patch(kwargs: Mapping[str, Any], patch: Sequence[int]) -> None:
    """:func:`check_depth` for the network of ``kwargs`` (a :class:`.ModelConfig`'s) and the
    training ``patch`` ``(Z, Y, X)``."""
    dims = int(kwargs.get("spatial_dims", 3))
    levels = int(kwargs.get("levels", 4))
    pooling = kwargs.get("pooling") or [[2] * dims] * (levels - 1)
    check_depth(levels, pooling, tuple(patch)[-dims:])
