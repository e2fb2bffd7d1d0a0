"""Mixed precision for the harness: MONAI's own AMP on CUDA, bfloat16 autocast on CPU.

MONAI's engines only autocast on CUDA (``torch.autocast("cuda")`` with a grad scaler). On a CPU with
native bfloat16 (AVX512-BF16 / AMX) oneDNN runs training steps 1.3-1.5x and evaluation 1.6-4x faster in
bfloat16 with channels-last weights (``benchmarks/cpu_precision.py``), which is what makes the short CPU runs fit
their budgets; bfloat16 needs no loss scaling (float32's exponent range). CPU autocast goes through the
inferer, so both engines keep their stock iteration.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "use_amp", "resolve_precision"]

logger = logging.getLogger("breastseg.harness")


def use_amp(device: str | torch.device) -> bool:
    """The default: mixed precision on CUDA only (on CPU it is asked for with ``amp: true``)."""
    return torch.device(device).type == "cuda"


def _to_float32(output: Any) -> Any:
    """Network outputs back in float32 (losses and metrics run in full precision), nested heads included."""
    if isinstance(output, torch.Tensor):
        return output.float().contiguous() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(item) for item in output)
    if isinstance(output, dict):
        return {key: _to_float32(value) for key, value in output.items()}
    return output


class AutocastInferer(Inferer):
    """Run ``inferer`` under ``torch.autocast(device_type, dtype)`` and return float32 outputs."""

    def __init__(self, inferer: Inferer, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> None:
        self.inferer = inferer
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            output = self.inferer(inputs, network, *args, **kwargs)
        return _to_float32(output)


def _channels_last(network: torch.nn.Module) -> None:
    ranks = {param.dim() for param in network.parameters()}
    if 5 in ranks:
        network.to(memory_format=torch.channels_last_3d)
    elif 4 in ranks:
        network.to(memory_format=torch.channels_last)


def resolve_precision(
    device: str | torch.device, amp: bool | None, inferer: Inferer, network: torch.nn.Module
) -> tuple[bool, Inferer]:
    """``(MONAI's amp flag, inferer)`` for ``amp`` (``None``: the device default) on ``device``.

    CPU mixed precision leaves MONAI's flag off (its scaler and autocast are CUDA's), wraps the inferer in
    bfloat16 autocast and puts the network's weights channels-last (oneDNN's fast layout; values and
    ``state_dict`` keys are unchanged).
    """
    wanted = use_amp(device) if amp is None else bool(amp)
    if not wanted or torch.device(device).type != "cpu":
        return wanted, inferer
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("amp on CPU: this CPU has no native bfloat16; autocast runs, but slower than float32")
    _channels_last(network)
    if isinstance(inferer, AutocastInferer):
        return False, inferer
    return False, AutocastInferer(inferer, "cpu", torch.bfloat16)
