"""Frozen configurations, built once by the widget or the command line and saved in the model file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
    planes: str = "three"
    minutes: float | None = None
    early_stop: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}.")
        if self.device not in DEVICES:
            raise ValueError(f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)}.")
        if self.planes not in PLANES:
            raise ValueError(f"Unknown planes {self.planes!r}; choose one of {', '.join(PLANES)}.")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers (Z, Y, X), got {self.patch_size}.")
        if self.smoothness < 0 or self.self_training < 0 or not 0.5 <= self.pseudo_threshold <= 1:
            raise ValueError("smoothness and self_training must be >= 0 and pseudo_threshold "
                             "between 0.5 and 1.")
        if self.batch_size < 1 or self.iterations < 1:
            raise ValueError("batch_size and iterations must be at least 1.")
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            raise ValueError(f"The time budget must be a positive number of minutes, got "
                             f"{self.minutes}.")
        if self.validate_every < (0 if self.minutes is not None else 1):
            raise ValueError("validate_every must be at least 1 (0, with a time budget: a tenth "
                             f"of the run once its total is fixed), got {self.validate_every}.")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        d = dict(d)
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config survives ``torch.load(weights_only=True)`` and YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
