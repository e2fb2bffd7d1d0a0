"""LinkNet with a ResNet-34 encoder: paper 001's LinkNet baseline (the ``segmentation_models_pytorch`` default)."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from torch import nn

from ._checks import check_divisible, check_spatial_dims
from .resnet_encoder import RESNET34_STAGE_CHANNELS, ResNet34Encoder

__all__ = ["LinkNet", "Linknet"]


class _LinkDecoderBlock(nn.Sequential):
    """1x1 reduce to a quarter width -> x2 transposed conv -> 1x1 expand, each followed by norm and act."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        upsample_kernel_size: int,
        act: str | tuple,
        norm: str | tuple | None,
    ) -> None:
        mid_channels = in_channels // 4
        super().__init__(
            Convolution(spatial_dims, in_channels, mid_channels, kernel_size=1, act=act, norm=norm, bias=norm is None),
            Convolution(
                spatial_dims,
                mid_channels,
                mid_channels,
                strides=2,
                kernel_size=upsample_kernel_size,
                act=act,
                norm=norm,
                is_transposed=True,
                padding=(upsample_kernel_size - 2) // 2,
                output_padding=0,
            ),
            Convolution(spatial_dims, mid_channels, out_channels, kernel_size=1, act=act, norm=norm, bias=norm is None),
        )


class LinkNet(nn.Module):
    """LinkNet decoder on a torchvision-equivalent ResNet-34 encoder, returning logits at input resolution.

    Based on: Chaurasia, Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
    Segmentation", VCIP 2017, https://doi.org/10.1109/VCIP.2017.8305148. Paper 001's LinkNet numbers match the
    ``segmentation_models_pytorch`` ``Linknet("resnet34")`` default, which this network rebuilds from MONAI
    blocks: five decoder blocks (1x1 conv to a quarter width, x2 transposed conv, 1x1 conv to the next width,
    each with BN + ReLU; widths 512 -> 256 -> 128 -> 64 -> 64 -> 32), each output ADDED to the encoder map of the
    same resolution (none at input resolution), then a 1x1 head.

    The transposed conv defaults to smp's 4x4 kernel, stride 2, padding 1, with bias (21,771,937 parameters
    for 3 input channels, smp's figure exactly; 21,765,665 for 1). ``upsample_kernel_size=2`` gives the
    plain 2x2/2 transposed conv (21,507,745 for 3 channels).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels (1 for grey mammograms).
        out_channels: number of output channels (logits).
        final_channels: width of the last decoder block, before the head (smp ``prefinal_channels``).
        act: decoder activation.
        norm: decoder normalisation; with ``None`` the 1x1 convolutions get a bias instead.
        upsample_kernel_size: kernel of the x2 transposed convolutions, 4 (smp) or 2.
        pretrained_weights: LOCAL torchvision ResNet-34 state dict for the encoder (never downloaded).

    Raises:
        ValueError: for ``spatial_dims`` other than 2/3, ``upsample_kernel_size`` other than 2/4, or a
            non-positive ``final_channels``.

    Examples::

        >>> net = LinkNet(spatial_dims=2, in_channels=1, out_channels=1)
        >>> net(torch.zeros(2, 1, 64, 96)).shape
        torch.Size([2, 1, 64, 96])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        final_channels: int = 32,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        upsample_kernel_size: int = 4,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims("LinkNet", spatial_dims)
        if upsample_kernel_size not in (2, 4):
            raise ValueError(f"LinkNet: upsample_kernel_size must be 2 or 4, got {upsample_kernel_size!r}.")
        if final_channels < 1:
            raise ValueError(f"LinkNet: final_channels must be positive, got {final_channels!r}.")
        self.encoder = ResNet34Encoder(spatial_dims, in_channels, depth=5, pretrained_weights=pretrained_weights)
        widths = RESNET34_STAGE_CHANNELS[::-1] + (final_channels,)  # 512, 256, 128, 64, 64, 32
        self.blocks = nn.ModuleList(
            [
                _LinkDecoderBlock(spatial_dims, c_in, c_out, upsample_kernel_size, act, norm)
                for c_in, c_out in zip(widths[:-1], widths[1:])
            ]
        )
        self.head = Conv[Conv.CONV, spatial_dims](final_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Every spatial side must be a multiple of 32.
        """
        check_divisible("LinkNet", x.shape[2:], 32)
        features = self.encoder(x)
        x = features[-1]
        for k, block in enumerate(self.blocks):
            x = block(x)
            skip_index = len(features) - 2 - k
            if skip_index >= 0:
                x = x + features[skip_index]
        return self.head(x)


Linknet = LinkNet
