"""Mixed precision: wherever ``precision: auto`` picks bf16, the U-Net's bf16 gradients agree with fp32's.

On an AMD EPYC with AVX512-BF16 but no AMX tiles, torch 2.13's bf16 backward of the 3D U-Net returned
gradients of 1e33 to NaN; ``auto`` must not pick bf16 on such a machine (cryoray.nn.precision).
"""

from __future__ import annotations

import pytest
import torch
from cryoray.nn.precision import autocast, resolve_precision
from cryoray.nn.unet3d import UNet3D

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gradients(precision: str, device: torch.device) -> torch.Tensor:
    torch.manual_seed(0)
    net = UNet3D(4, [8, 16, 32, 48], 64).to(device)
    patches = torch.randn(4, 1, 32, 32, 32, device=device)
    with autocast(precision, device):  # type: ignore[arg-type]  # a Precision literal
        logits, _ = net(patches)
    logits.float().square().mean().backward()
    return torch.cat([p.grad.flatten().float() for p in net.parameters()])


@pytest.mark.parametrize("device_name", DEVICES)
def test_auto_precision_gives_the_fp32_gradients(device_name: str) -> None:
    device = torch.device(device_name)
    auto = _gradients("auto", device)
    reference = _gradients("fp32", device)
    assert torch.isfinite(auto).all(), f"auto resolved to {resolve_precision('auto', device)} and gave non-finite gradients"
    relative = (auto - reference).norm() / reference.norm()
    # bf16 rounding alone gives about 0.04 here; the fault gave gradients of 1e33 or NaN
    assert relative < 0.25, f"auto ({resolve_precision('auto', device)}) gradients differ from fp32 by {relative:.3f}"


def test_auto_is_fp32_on_a_cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
