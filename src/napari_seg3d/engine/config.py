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
    """Every training setting. Defaults suit a small 3D volume on a CPU or a GPU."""

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

    def __post_init__(self) -> None:
        """Check every field (type and range, see :func:`.schema.train_rules`): a wrong one
        raises a :class:`.SettingError` that names it."""
        from .schema import train_rules

        for name, rule in train_rules().items():
            object.__setattr__(self, name, rule(name, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        return cls(**d)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config survives ``torch.load(weights_only=True)`` and YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
