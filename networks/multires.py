"""MultiResUNet building blocks (Ibtehaz & Rahman 2020) as the reference Keras code defines them.

Used by ConnectedUNets+ (the residual path) and ConnectedUNets++ (both blocks), paper 004. The reference's
convolution unit is ``conv2d_bn``: a bias-free convolution, then Keras ``BatchNormalization(scale=False)``
(a learnable shift, no learnable scale), then an optional ReLU. :class:`ShiftBatchNorm` is that normalisation,
so the PyTorch trainable parameters equal the reference's trainable count.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from ._checks import check_spatial_dims

__all__ = [
    "ShiftBatchNorm",
    "ConvBN",
    "MultiResBlock",
    "ResPath",
    "multires_widths",
    "keras_style_parameter_count",
    "MULTIRES_ALPHA",
]

#: The width multiplier W = alpha * U of the MultiResBlock (reference value).
MULTIRES_ALPHA = 1.67


def multires_widths(units: int, alpha: float = MULTIRES_ALPHA) -> tuple[int, int, int]:
    """Widths of the three chained 3x3 convolutions of a MultiResBlock with ``units`` U.

    ``int(0.167 W), int(0.333 W), int(0.5 W)`` with ``W = alpha * U``: 8/17/26 for U = 32, 17/35/53 for 64,
    35/71/106 for 128, 71/142/213 for 256 (paper 004, Table 2).
    """
    width = alpha * units
    return int(width * 0.167), int(width * 0.333), int(width * 0.5)


class ShiftBatchNorm(nn.Module):
    """Batch normalisation with a learnable shift and no learnable scale (Keras ``scale=False``).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        channels: number of channels.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.norm = Norm[Norm.BATCH, spatial_dims](channels, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * self.spatial_dims
        return self.norm(x) + self.bias.view(shape)


class ConvBN(nn.Sequential):
    """The reference ``conv2d_bn``: convolution without bias -> :class:`ShiftBatchNorm` -> optional ReLU.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 3 or 1 in the reference ("same" padding).
        activation: apply a ReLU at the end.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, activation: bool = True) -> None:
        layers: list[nn.Module] = [
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            ShiftBatchNorm(spatial_dims, out_channels),
        ]
        if activation:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class MultiResBlock(nn.Module):
    """Three chained 3x3 :class:`ConvBN` (a 3x3, 5x5 and 7x7 receptive field), concatenated, with a 1x1 shortcut.

    ``concat -> BN``, plus the 1x1 ``ConvBN`` shortcut (no ReLU) to the same width, then ``ReLU -> BN``
    (both batch norms with scale and shift). Output width ``sum(multires_widths(units, alpha))``:
    51 / 105 / 212 / 426 for U = 32 / 64 / 128 / 256.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        units: the U of the reference (32, 64, 128, 256 in a U-Net).
        alpha: width multiplier (1.67 in the reference).

    Raises:
        ValueError: when a convolution would get no channel (``alpha * units`` too small).
    """

    def __init__(self, spatial_dims: int, in_channels: int, units: int, alpha: float = MULTIRES_ALPHA) -> None:
        super().__init__()
        check_spatial_dims("MultiResBlock", spatial_dims)
        widths = multires_widths(units, alpha)
        if min(widths) < 1:
            raise ValueError(f"MultiResBlock: units={units}, alpha={alpha} gives convolution widths {widths}; each must be >= 1.")
        self.out_channels = sum(widths)
        self.shortcut = ConvBN(spatial_dims, in_channels, self.out_channels, kernel_size=1, activation=False)
        self.conv3 = ConvBN(spatial_dims, in_channels, widths[0])
        self.conv5 = ConvBN(spatial_dims, widths[0], widths[1])
        self.conv7 = ConvBN(spatial_dims, widths[1], widths[2])
        self.concat_norm = Norm[Norm.BATCH, spatial_dims](self.out_channels)
        self.relu = nn.ReLU()
        self.out_norm = Norm[Norm.BATCH, spatial_dims](self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        multi = self.concat_norm(torch.cat([a, b, c], dim=1))
        return self.out_norm(self.relu(multi + self.shortcut(x)))


class _ResPathStage(nn.Module):
    """``ReLU(ConvBN3x3(x) + ConvBN1x1(x)) -> BN``."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(spatial_dims, in_channels, channels, kernel_size=3)
        self.shortcut = ConvBN(spatial_dims, in_channels, channels, kernel_size=1, activation=False)
        self.relu = nn.ReLU()
        self.norm = Norm[Norm.BATCH, spatial_dims](channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.relu(self.conv(x) + self.shortcut(x)))


class ResPath(nn.Sequential):
    """The residual skip connection: ``length`` stages of a 3x3 and a 1x1 :class:`ConvBN` added, ReLU, BN.

    Paper 004 calls it the "residual skip connection" (Table 1): lengths 4 / 3 / 2 / 1 at 32 / 64 / 128 / 256
    filters, shallower where encoder and decoder features differ less.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        channels: filters of every stage (output width).
        length: number of stages (at least 1).

    Raises:
        ValueError: for ``length`` < 1 or ``channels`` < 1.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, length: int) -> None:
        check_spatial_dims("ResPath", spatial_dims)
        if length < 1 or channels < 1:
            raise ValueError(f"ResPath: length and channels must be >= 1, got length={length}, channels={channels}.")
        stages = [_ResPathStage(spatial_dims, in_channels if i == 0 else channels, channels) for i in range(length)]
        super().__init__(*stages)
        self.out_channels = channels


def keras_style_parameter_count(module: nn.Module) -> int:
    """The Keras ``model.summary()`` "Total params" of ``module``: parameters plus batch-norm statistics.

    Keras counts a batch norm's moving mean and variance as (non-trainable) parameters; PyTorch keeps them as
    buffers. Papers written with Keras (002, 003, 004) report this total.
    """
    statistics = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and m.running_var is not None
    )
    return sum(p.numel() for p in module.parameters()) + statistics
