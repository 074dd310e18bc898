"""Frozen configurations, built once by the widget or the command line and saved in the model file."""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingError

LOSSES = ("ce_dice", "ce", "dice", "focal", "focal_dice", "bce", "bce_dice")
DEVICES = ("auto", "cpu", "cuda", "mps")
# How a 2D network (2.5D) predicts a volume: along z; along z, y and x; or along the three axes
# with four in-plane rotations each, averaging the probabilities. 3D networks ignore it.
PLANES = ("fast", "three", "best")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build and with which constructor arguments.

    ``kwargs`` are plain values (ints, floats, strings, tuples) so that a model file alone
    rebuilds the network: ``build_model(config.architecture, **config.kwargs)``.
    """

    architecture: str = "unet"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "kwargs": _plain(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(architecture=str(d["architecture"]), kwargs=dict(d.get("kwargs", {})))


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting. Defaults suit a small 3D volume on a CPU or a GPU.

    ``minutes``: a time budget. None: exactly ``iterations`` steps. Set: ``iterations`` is a
    cap, and the training loop fixes the total from the speed of its first steps (see
    :mod:`.budget`), replacing this config by one with that total and no budget, so a saved
    model always holds the steps its run was planned for. ``early_stop``: end the run when, in
    its last phase, the held-out strokes stop improving (see :mod:`.training.early_stop`).
    """

    patch_size: tuple[int, int, int] = (32, 64, 64)
    batch_size: int = 2
    iterations: int = 800
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    loss: str = "ce_dice"
    device: str = "auto"
    seed: int = 0
    amp: bool = True
    validation_fraction: float = 0.15
    validate_every: int = 50
    random_patch_fraction: float = 0.1
    augment: bool = True
    smoothness: float = 1.0
    self_training: int = 2
    pseudo_threshold: float = 0.9
    self_training_forest: bool = True
    keep_forest: bool = True
    planes: str = "three"
    minutes: float | None = None
    early_stop: bool = True

    def __post_init__(self) -> None:
        """Check every field (type and range, see :func:`.schema.train_rules`): a wrong one
        raises a :class:`.SettingError` that names it."""
        from .schema import train_rules

        for name, rule in train_rules().items():
            object.__setattr__(self, name, rule(name, getattr(self, name)))
        if self.validate_every < 1 and self.minutes is None:
            raise SettingError(f"validate_every must be a whole number of at least 1, got "
                               f"{self.validate_every}. (0, with a time budget only: a tenth "
                               "of the run once its total is fixed.)")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        return cls(**d)


BLENDINGS = ("gaussian", "constant")


@dataclass(frozen=True)
class PredictConfig:
    """Every prediction setting, built once by the widget, the command line or a script and
    passed unchanged down to the sliding window. Plain values only, so it pickles to the workers
    of a cluster.

    Attributes:
        overlap: Fraction of overlap between neighbouring windows, in ``[0, 1)``; 0.25 (MONAI's
            default) took half the time of 0.5 for 0.002-0.003 less Dice (benchmarks/README).
        blending: How overlapping windows are blended: ``"gaussian"`` or ``"constant"``.
        tta: Test-time augmentation: also predict each window mirrored along z, y and x and
            average the probabilities (4x the compute).
        batch_size: Windows of the training patch's size per forward pass; a wider window
            counts for as many as it holds (so memory depends on the patch, not the window).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"mps"``; None: for a
            model, ``"auto"``; for a bare network, where its parameters are.
        amp: Mixed precision where the device runs it natively (see :mod:`.precision`); None:
            as the model was trained (a bare network: on); False: float32.
        planes: How a 2D (2.5D) network predicts (see :data:`PLANES`); None: as trained.
            3D networks refuse it.
        probabilities: Also return (or write) the class probabilities.
        uncertainty: Also write an uncertainty map (computed from the probabilities).
        block_shape: Largest block core ``(z, y, x)`` predicted at once, so that memory depends
            on the block and not on the volume; None: the volume as one block.
        forest: Average the network's probabilities with those of the random forest the model
            file holds (fit on the strokes at the end of training), as a second opinion; a
            model without a forest predicts with the network alone either way.
        window: The sliding window ``(z, y, x)`` of a 3D model (a U-Net takes any size);
            None: the model's training patch. Wider windows (80^3 for a 48^3 patch) were not
            faster on a 2-core CPU and changed the Dice by -0.006 to +0.006 (benchmarks/README).

    Example:
        >>> config = PredictConfig(overlap=0.25, tta=True, device="cpu")
        >>> config.batch_size, config.amp
        (4, None)
        >>> PredictConfig(overlap=1.5)
        Traceback (most recent call last):
        ...
        ValueError: overlap must be a number in [0, 1), got 1.5.
    """

    overlap: float = 0.25
    blending: str = "gaussian"
    tta: bool = False
    batch_size: int = 4
    device: str | None = None
    amp: bool | None = None
    planes: str | None = None
    probabilities: bool = False
    uncertainty: bool = False
    block_shape: tuple[int, int, int] | None = None
    forest: bool = True
    window: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        problems = list(_predict_problems(self))
        if problems:
            raise ValueError(" ".join(problems))
        fixed = {"overlap": float(self.overlap), "batch_size": int(self.batch_size),
                 "device": None if self.device is None else str(self.device),
                 "block_shape": None if self.block_shape is None
                 else tuple(int(b) for b in self.block_shape),
                 "window": None if self.window is None else tuple(int(w) for w in self.window)}
        for name in ("tta", "probabilities", "uncertainty", "forest"):
            fixed[name] = bool(getattr(self, name))
        if self.amp is not None:
            fixed["amp"] = bool(self.amp)
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    @property
    def needs_probabilities(self) -> bool:
        """Whether the sliding window must keep the probabilities (for either output)."""
        return self.probabilities or self.uncertainty


def predict_config(config: PredictConfig | None = None, **overrides: Any) -> PredictConfig:
    """``config`` (default: ``PredictConfig()``) with some of its fields replaced.

    Args:
        config: The settings to start from; returned as is when there is no override.
        **overrides: Fields of :class:`PredictConfig`, e.g. ``overlap=0.25``.

    Raises:
        TypeError: A name is not a field of :class:`PredictConfig`.
        ValueError: A value is out of range (one sentence per setting).
    """
    names = [f.name for f in dataclasses.fields(PredictConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"Unknown prediction setting(s) {', '.join(unknown)}; PredictConfig has "
                        f"{', '.join(names)}.")
    base = PredictConfig() if config is None else config
    return dataclasses.replace(base, **overrides) if overrides else base


def _predict_problems(c: PredictConfig):
    """A sentence for each bad setting of ``c``, in field order."""
    if not _is_number(c.overlap) or not 0.0 <= float(c.overlap) < 1.0:
        yield f"overlap must be a number in [0, 1), got {c.overlap!r}."
    if c.blending not in BLENDINGS:
        yield f"Unknown blending {c.blending!r}; choose one of {', '.join(BLENDINGS)}."
    if not _is_int(c.batch_size) or int(c.batch_size) < 1:
        yield f"batch_size must be a positive integer, got {c.batch_size!r}."
    if c.device is not None and not _is_device(c.device):
        yield (f"Unknown device {str(c.device)!r}; choose one of {', '.join(DEVICES)} "
               "(or cuda:N for one GPU).")
    if c.planes is not None and c.planes not in PLANES:
        yield f"Unknown planes {c.planes!r}; choose one of {', '.join(PLANES)}."
    for name in ("tta", "probabilities", "uncertainty", "forest") + (
            ("amp",) if c.amp is not None else ()):
        if getattr(c, name) not in (True, False):
            yield f"{name} must be True or False, got {getattr(c, name)!r}."
    if c.block_shape is not None and not _is_shape(c.block_shape):
        yield f"block_shape must be three positive integers (z, y, x) or None, got {c.block_shape!r}."
    if c.window is not None and not _is_shape(c.window):
        yield f"window must be three positive integers (z, y, x) or None, got {c.window!r}."


def _is_shape(value: Any) -> bool:
    """Three positive integers."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
        return False
    return all(_is_int(v) and int(v) >= 1 for v in value)


def _is_int(value: Any) -> bool:
    """An int (numpy integers included), not a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_number(value: Any) -> bool:
    """An int or a float (numpy scalars included), not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return getattr(value, "ndim", None) == 0 and kind in ("i", "u", "f")


def _is_device(device: Any) -> bool:
    """A name of :data:`DEVICES`, ``cuda:N`` / ``mps:N``, or a ``torch.device``."""
    kind, _, index = str(device).partition(":")
    return kind in DEVICES and (not index or (kind != "auto" and index.isdigit()))


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config survives ``torch.load(weights_only=True)`` and YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
