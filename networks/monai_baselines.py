"""MONAI's U-Net and Attention U-Net as paper 003's baselines, with the widths of the original papers.

Paper 003 compares against U-Net (Ronneberger et al.), UNet++ (Zhou et al.; the project's
:py:class:`breastseg.networks.UNetPlusPlus`) and Attention U-Net (Oktay et al.). These constructors give MONAI's
networks the project's ``(spatial_dims, in_channels, out_channels, **kwargs)`` factory signature and the
original 64-1024 channel widths; every MONAI keyword can be overridden.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import AttentionUnet, BasicUNet
from torch import nn

__all__ = ["monai_basic_unet", "monai_attention_unet"]


def monai_basic_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    features: Sequence[int] = (64, 128, 256, 512, 1024, 64),
    **kwargs,
) -> nn.Module:
    """MONAI ``BasicUNet`` with Ronneberger's widths 64-1024 (batch norm, transposed-conv up-sampling).

    31,112,065 parameters for one input channel (the paper's no-BN 3-channel U-Net: 34,513,345).
    Input sides must be multiples of 16.
    """
    return BasicUNet(spatial_dims, in_channels, out_channels, features=tuple(features), **kwargs)


def monai_attention_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 1,
    channels: Sequence[int] = (64, 128, 256, 512, 1024),
    strides: Sequence[int] = (2, 2, 2, 2),
    **kwargs,
) -> nn.Module:
    """MONAI ``AttentionUnet`` with Oktay's widths 64-1024 and four down-samplings (31,739,185 parameters for
    one input channel); input sides must be multiples of 16.
    """
    return AttentionUnet(spatial_dims, in_channels, out_channels, channels=tuple(channels), strides=tuple(strides), **kwargs)
