"""Mixed precision where the hardware runs it natively: float16 on CUDA, bfloat16 on CPUs with
AVX512-BF16 or AMX units (Intel Xeon since Cooper Lake / Sapphire Rapids, AMD Zen 4+).

On such a CPU a 3D U-Net runs about twice as fast under bfloat16 autocast (2-core Xeon with
AMX, base 16, 4 x 48^3 windows: 0.56 s -> 0.28 s forward, 0.92 s -> 0.49 s for a 2 x 32x64x64
training step; ``benchmarks/bench_predict.py``, ``bench_train.py``). CPUs without those units
would emulate bfloat16 and get slower, so they stay in float32, as do MPS and other devices.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)  # private helpers: absent on some builds
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - a build without CPU capability checks
            continue
    return False


def mixed_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that speeds up ``device``: float16 on CUDA, bfloat16 on a CPU with
    native bfloat16, None (stay in float32) elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_fast_bfloat16():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to `mixed_dtype` of ``device`` when ``enabled``; a no-op where there is none."""
    device = torch.device(device)
    dtype = mixed_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device | str, enabled: bool = True) -> str:
    """``"float16"``, ``"bfloat16"`` or ``"float32"``: what `autocast` computes in."""
    dtype = mixed_dtype(device) if enabled else None
    return str(dtype or torch.float32).removeprefix("torch.")
