"""PSPNet with a ResNet-34 encoder: paper 001's PSPNet baseline (the ``segmentation_models_pytorch`` default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

from ._checks import check_divisible, check_spatial_dims
from .resnet_encoder import RESNET34_STAGE_CHANNELS, ResNet34Encoder

__all__ = ["PSPNet", "PspNet"]


class _PyramidPooling(nn.Module):
    """Average-pool to each bin size, 1x1 conv to ``in/len(bins)`` channels, resize back, concatenate with the input."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        bin_sizes: Sequence[int],
        act: str | tuple,
        norm: str | tuple | None,
    ) -> None:
        super().__init__()
        branch_channels = in_channels // len(bin_sizes)
        # a 1x1 bin holds one value per sample: batch norm over it is undefined at batch size 1, so that branch
        # gets a bias instead (as smp)
        self.branches = nn.ModuleList(
            [
                nn.Sequential(
                    Pool[Pool.ADAPTIVEAVG, spatial_dims](size),
                    Convolution(
                        spatial_dims,
                        in_channels,
                        branch_channels,
                        kernel_size=1,
                        act=act,
                        norm=norm if size > 1 else None,
                        bias=norm is None or size == 1,
                    ),
                )
                for size in bin_sizes
            ]
        )
        self.out_channels = in_channels + branch_channels * len(bin_sizes)
        self.interp_mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pyramid: list[torch.Tensor] = []
        for branch in self.branches:
            pyramid.append(F.interpolate(branch(x), size=size, mode=self.interp_mode, align_corners=True))
        pyramid.append(x)
        return torch.cat(pyramid, dim=1)


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network on the 1/8-resolution stage of a ResNet-34, returning logits at input size.

    Based on: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017,
    https://doi.org/10.1109/CVPR.2017.660. Paper 001's PSPNet numbers match the ``segmentation_models_pytorch``
    ``PSPNet("resnet34")`` default (``encoder_depth=3``), which this network rebuilds from MONAI blocks:
    the ResNet-34 stem, ``layer1`` and ``layer2`` (128 channels at 1/8), pyramid pooling with bins 1/2/3/6
    (1x1 conv to 32 channels each, bilinear resize, concatenation), 1x1 conv to 512 + BN + ReLU, channel
    dropout 0.2, a 3x3 head and bilinear x8 up-sampling (align_corners=True, as smp).

    1,501,217 parameters for 3 input channels (1,494,945 for 1). smp reports 21,437,985 because its encoder also
    builds ``layer3``/``layer4`` (19,936,768 parameters) that ``encoder_depth=3`` never runs; the computation is
    the same.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels (1 for grey mammograms).
        out_channels: number of output channels (logits).
        psp_channels: width of the 1x1 conv after pyramid pooling (smp ``psp_out_channels``).
        bin_sizes: output sizes of the pyramid's adaptive average pools.
        act: decoder activation.
        norm: decoder normalisation; with ``None`` the 1x1 convolutions get a bias instead.
        dropout: channel-dropout probability before the head (smp ``psp_dropout``).
        pretrained_weights: LOCAL torchvision ResNet-34 state dict for the encoder (never downloaded); its
            ``layer3``/``layer4`` tensors are not used.

    Raises:
        ValueError: for ``spatial_dims`` other than 2/3, empty or non-positive ``bin_sizes``, a non-positive
            ``psp_channels`` or ``dropout`` outside [0, 1).

    Examples::

        >>> net = PSPNet(spatial_dims=2, in_channels=1, out_channels=1)
        >>> net(torch.zeros(2, 1, 40, 56)).shape
        torch.Size([2, 1, 40, 56])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        psp_channels: int = 512,
        bin_sizes: Sequence[int] = (1, 2, 3, 6),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float = 0.2,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims("PSPNet", spatial_dims)
        bin_sizes = tuple(int(s) for s in bin_sizes)
        if not bin_sizes or min(bin_sizes) < 1:
            raise ValueError(f"PSPNet: bin_sizes must hold positive sizes, got {bin_sizes}.")
        if psp_channels < 1:
            raise ValueError(f"PSPNet: psp_channels must be positive, got {psp_channels!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PSPNet: dropout must be in [0, 1), got {dropout!r}.")
        self.encoder = ResNet34Encoder(spatial_dims, in_channels, depth=3, pretrained_weights=pretrained_weights)
        self.pyramid = _PyramidPooling(spatial_dims, RESNET34_STAGE_CHANNELS[2], bin_sizes, act, norm)
        self.bottleneck = Convolution(
            spatial_dims, self.pyramid.out_channels, psp_channels, kernel_size=1, act=act, norm=norm, bias=norm is None
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        self.head = Conv[Conv.CONV, spatial_dims](psp_channels, out_channels, kernel_size=3, padding=1)
        self.upsample = UpSample(
            spatial_dims, scale_factor=8, mode="nontrainable", interp_mode="linear", align_corners=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Every spatial side must be a multiple of 8.
        """
        check_divisible("PSPNet", x.shape[2:], 8)
        x = self.encoder(x)[-1]
        return self.upsample(self.head(self.dropout(self.bottleneck(self.pyramid(x)))))


PspNet = PSPNet
