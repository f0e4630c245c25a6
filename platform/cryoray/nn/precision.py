"""Mixed precision for the networks: bf16 autocast where the hardware computes it natively, fp32 otherwise.

Only network forward passes run under autocast; losses, FFTs and physics stay in fp32 (callers cast logits
with ``.float()`` before a loss). ``auto`` picks bf16 on CUDA devices that support it and on CPUs with AMX tiles
(oneDNN's native bf16 kernels: 2.3× faster for RobPicker's U-Net step on an Intel 2-core VM). Elsewhere ``auto``
stays fp32: without AMX, bf16 is emulated and slower, and on an AMD EPYC with AVX512-BF16 but no AMX (torch
2.13) the bf16 backward of the 3D U-Net returned gradients of 1e33 to NaN (forward passes were right), which
stopped RobPicker at its first step; ``tests/test_precision.py`` checks bf16 against fp32 wherever ``auto``
picks it.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions and matrix products natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx()) if amx is not None else False
    return False


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` → bf16 where native (see the module docstring), else fp32; explicit choices are kept."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: Precision, device: torch.device) -> torch.autocast:
    """A ``torch.autocast`` context for network forward passes at the resolved precision."""
    resolved = resolve_precision(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolved == "bf16")
