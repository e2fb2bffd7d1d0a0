"""U-Net with a ResNet-34 encoder: paper 001's U-Net baseline (the ``segmentation_models_pytorch`` default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from ._checks import check_divisible, check_spatial_dims
from .resnet_encoder import RESNET34_STAGE_CHANNELS, ResNet34Encoder

__all__ = ["UNet", "Unet"]


def _nearest_x2(spatial_dims: int) -> UpSample:
    return UpSample(spatial_dims, scale_factor=2, mode="nontrainable", interp_mode="nearest", align_corners=None)


class _UpConcatBlock(nn.Module):
    """Nearest x2 up-sampling, concatenation with the encoder skip, then two 3x3 conv-norm-act."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: str | tuple,
        norm: str | tuple | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.upsample = _nearest_x2(spatial_dims)
        self.convs = TwoConv(spatial_dims, in_channels + skip_channels, out_channels, act, norm, norm is None, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net decoder on a torchvision-equivalent ResNet-34 encoder, returning logits at input resolution.

    Based on: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
    MICCAI 2015, https://doi.org/10.1007/978-3-319-24574-4_28; the encoder is He et al., "Deep Residual Learning
    for Image Recognition", CVPR 2016. Paper 001 compares UNet++ against this U-Net; its numbers match the
    ``segmentation_models_pytorch`` ``Unet("resnet34")`` default, which this network rebuilds from MONAI blocks:
    five decoder blocks (nearest x2 up-sampling, concatenation with the encoder map of the same resolution,
    [3x3 conv -> BN -> ReLU] x 2, widths 256-128-64-32-16; the last block has no skip) and a 3x3 head.
    24,436,369 parameters for 3 input channels (smp's figure, exactly) and 24,430,097 for 1.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels (1 for grey mammograms).
        out_channels: number of output channels (logits).
        features: widths of the five decoder blocks, coarsest first.
        act: decoder activation.
        norm: decoder normalisation; with ``None`` the decoder convolutions get a bias instead.
        dropout: decoder dropout after each activation (smp has none).
        pretrained_weights: LOCAL torchvision ResNet-34 state dict for the encoder (never downloaded);
            ``None`` keeps random initialisation.

    Raises:
        ValueError: for ``spatial_dims`` other than 2/3 or ``features`` not holding five positive widths.

    Examples::

        >>> net = UNet(spatial_dims=2, in_channels=1, out_channels=1)
        >>> net(torch.zeros(2, 1, 64, 96)).shape
        torch.Size([2, 1, 64, 96])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (256, 128, 64, 32, 16),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims("UNet", spatial_dims)
        features = tuple(int(f) for f in features)
        if len(features) != 5 or min(features) < 1:
            raise ValueError(f"UNet: features must hold five positive decoder widths, got {features}.")
        self.encoder = ResNet34Encoder(spatial_dims, in_channels, depth=5, pretrained_weights=pretrained_weights)
        skip_channels = RESNET34_STAGE_CHANNELS[-2::-1]  # 256, 128, 64, 64: finest skip last
        block_inputs = (RESNET34_STAGE_CHANNELS[-1],) + features[:-1]
        self.blocks = nn.ModuleList(
            [
                _UpConcatBlock(spatial_dims, c_in, c_skip, c_out, act, norm, dropout)
                for c_in, c_skip, c_out in zip(block_inputs[:4], skip_channels, features[:4])
            ]
        )
        # the last block reaches input resolution, where the encoder has no feature map to concatenate
        self.final_block = nn.Sequential(
            _nearest_x2(spatial_dims),
            TwoConv(spatial_dims, features[3], features[4], act, norm, norm is None, dropout),
        )
        self.head = Conv[Conv.CONV, spatial_dims](features[4], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Every spatial side must be a multiple of 32.
        """
        check_divisible("UNet", x.shape[2:], 32)
        features = self.encoder(x)
        x = features[-1]
        for k, block in enumerate(self.blocks):
            x = block(x, features[len(features) - 2 - k])
        return self.head(self.final_block(x))


Unet = UNet
