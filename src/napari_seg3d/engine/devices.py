"""The device a run computes on: ``"auto"`` is CUDA when there is a GPU, else MPS, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; other names checked for availability."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for, but no CUDA GPU is available here; use device 'cpu' or 'auto'.")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None)
                                       and torch.backends.mps.is_available()):
        raise ValueError("MPS (the GPU of Apple silicon) was asked for, but it is not available "
                         "here; use device 'cpu' or 'auto'.")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {name[:40]!r}; choose one of auto, cpu, cuda, "
                         "mps.") from None
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ValueError(f"There is no GPU {device.index}: this machine has "
                         f"{torch.cuda.device_count()}; use device 'cuda' or 'cpu'.")
    return device
