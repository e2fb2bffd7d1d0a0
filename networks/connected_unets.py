"""Connected-UNets (Baccouche et al. 2021), ConnectedUNets+ and ConnectedUNets++ (Sarker et al. 2022), paper 004."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from ._checks import check_divisible, check_spatial_dims
from .multires import MULTIRES_ALPHA, MultiResBlock, ResPath

__all__ = ["ConnectedUNets", "ConnectedUnets", "SumASPP", "ConvReluNormBlock", "CONNECTED_UNETS_VARIANTS", "ASPP_DILATIONS"]

#: ``baseline`` = Connected-UNets, ``plus`` = ConnectedUNets+, ``plusplus`` = ConnectedUNets++.
CONNECTED_UNETS_VARIANTS = ("baseline", "plus", "plusplus")

#: ASPP dilation rates: paper 004 Table 2 (the default) and the uploaded code / Baccouche et al.
ASPP_DILATIONS = {"table2": (6, 8, 12), "code": (6, 12, 18)}


class SumASPP(nn.Module):
    """Atrous spatial pyramid pooling with **summed** branches (ResUNet++ / Connected-UNets form).

    A plain 3x3 convolution and one dilated 3x3 convolution per rate, each with bias and followed by batch
    norm (no activation), are summed, then a 1x1 convolution with bias. Unlike MONAI ``SimpleASPP`` the
    branches are not concatenated and nothing is activated.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: filters of every branch and of the final 1x1 convolution.
        dilations: dilation rates of the dilated branches.

    Raises:
        ValueError: when ``dilations`` is empty or holds a rate < 1.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilations: Sequence[int] = (6, 8, 12)) -> None:
        super().__init__()
        check_spatial_dims("SumASPP", spatial_dims)
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"SumASPP: dilations must be a non-empty sequence of rates >= 1, got {dilations}.")
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        self.branches = nn.ModuleList(
            [nn.Sequential(conv(in_channels, out_channels, 3, padding=rate, dilation=rate), norm(out_channels)) for rate in dilations + (1,)]
        )
        self.project = conv(out_channels, out_channels, 1)
        self.dilations = dilations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(1, dtype=x.dtype, device=x.device)
        for branch in self.branches:
            total = total + branch(x)
        return self.project(total)


class ConvReluNormBlock(nn.Sequential):
    """The Connected-UNets encoder/decoder block: [3x3 conv (bias) -> ReLU -> batch norm] x 2 (that order).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        channels: filters of both convolutions (output width).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int) -> None:
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        super().__init__(
            conv(in_channels, channels, 3, padding=1), nn.ReLU(), norm(channels),
            conv(channels, channels, 3, padding=1), nn.ReLU(), norm(channels),
        )
        self.out_channels = channels


class _EncoderStage(nn.Module):
    """A block and the skip connection leaving it (a ResPath, or identity for the baseline)."""

    def __init__(self, block: nn.Module, skip: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.skip = skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.block(x)
        return out, self.skip(out)


class _BridgedEncoderStage(nn.Module):
    """Encoder stage of U-Net 2: ``block(cat(ReLU(conv3x3(lower)), link(decoded)))`` plus its skip.

    ``lower`` is the previous U-Net-2 stage after pooling (the last U-Net-1 decoder output at the top level);
    ``decoded`` is the U-Net-1 decoder output of this resolution, through a ResPath (``link``) except at the
    top level, where it is the same tensor as ``lower`` ("concatenated with itself").
    """

    def __init__(self, spatial_dims: int, lower_channels: int, channels: int, link: nn.Module, block: nn.Module, skip: nn.Module) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](lower_channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.link = link
        self.block = block
        self.skip = skip

    def forward(self, lower: torch.Tensor, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.block(torch.cat([self.relu(self.conv(lower)), self.link(decoded)], dim=1))
        return out, self.skip(out)


class _DecoderStage(nn.Module):
    """2x2/2 transposed convolution (bias) to the level's U, concatenated with the skip, then a block."""

    def __init__(self, spatial_dims: int, lower_channels: int, channels: int, block: nn.Module) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](lower_channels, channels, 2, stride=2)
        self.block = block

    def forward(self, lower: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(lower), skip], dim=1))


class ConnectedUNets(nn.Module):
    """Two cascaded U-Nets whose second encoder takes the first decoder's outputs: Connected-UNets and the
    ConnectedUNets+ / ConnectedUNets++ of paper 004.

    Based on: Baccouche, Garcia-Zapirain, Castillo Olea, Elmaghraby, "Connected-UNets: a deep learning
    architecture for breast mass segmentation", npj Breast Cancer 7, 151 (2021),
    https://doi.org/10.1038/s41523-021-00358-x; and Sarker, Sarker, Bebis, Tavakkoli, "ConnectedUNets++: Mass
    Segmentation from Whole Mammographic Images", ISVC 2022, https://doi.org/10.1007/978-3-031-20713-6_32.

    Graph (``features`` U = 32, 64, 128, 256 by default):

    * U-Net 1: encoder blocks, 2x2 max-pooling, :class:`SumASPP` (``bottleneck_channels``) on the last pooled map;
      decoder: 2x2/2 transposed conv to U, concatenated with the skip, block.
    * Bridge: the top decoder output goes through a 3x3 conv + ReLU and is concatenated with itself; at the
      lower levels the pooled U-Net-2 map goes through a 3x3 conv + ReLU and is concatenated with the U-Net-1
      decoder output of that level.
    * U-Net 2: the same encoder / ASPP / decoder; then :class:`SumASPP` (U of the top level) and a 1x1 conv.

    Variants:

    * ``baseline`` (Connected-UNets): :class:`ConvReluNormBlock` blocks, plain skips.
    * ``plus`` (ConnectedUNets+): the same blocks; every skip, and every link from U-Net-1's decoder into
      U-Net-2's encoder below the top level, is a :class:`~breastseg.networks.multires.ResPath` of
      ``respath_lengths`` stages (4/3/2/1, Table 1).
    * ``plusplus`` (ConnectedUNets++): ``plus`` with :class:`~breastseg.networks.multires.MultiResBlock` blocks
      (alpha 1.67: widths 51/105/212/426, Table 2).

    With three input channels (the reference code's) the Keras-style totals (parameters + batch-norm statistics,
    :func:`~breastseg.networks.multires.keras_style_parameter_count`) are 20,052,673 / 23,476,033 / 28,153,792,
    the papers' 20.1 M / 23.5 M / 28.15 M. Batch norms inside ``conv2d_bn`` units have no learnable scale, as in the
    reference (Keras ``scale=False``). Convolutions are initialised Glorot-uniform with zero bias (Keras defaults).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (logits; the paper applies a sigmoid to one channel).
        variant: one of :data:`CONNECTED_UNETS_VARIANTS`.
        features: U per level, top first (at least two levels).
        respath_lengths: ResPath stages per level, top first (``plus``/``plusplus`` only).
        bottleneck_channels: filters of the two bottleneck ASPP blocks.
        aspp_dilations: dilation rates of every ASPP block; Table 2's (6, 8, 12) by default, the uploaded code's
            (6, 12, 18) as an option (:data:`ASPP_DILATIONS`). Rates do not change the parameter count.
        alpha: MultiResBlock width multiplier (``plusplus`` only).

    Raises:
        ValueError: for an unknown ``variant``, ``spatial_dims`` other than 2/3, fewer than two or
            non-positive ``features``, or ``respath_lengths`` not matching ``features``.

    Examples::

        >>> net = ConnectedUNets(spatial_dims=2, in_channels=1, out_channels=1, variant="plusplus").eval()
        >>> net(torch.zeros(1, 1, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        variant: str = "plusplus",
        features: Sequence[int] = (32, 64, 128, 256),
        respath_lengths: Sequence[int] = (4, 3, 2, 1),
        bottleneck_channels: int = 512,
        aspp_dilations: Sequence[int] = ASPP_DILATIONS["table2"],
        alpha: float = MULTIRES_ALPHA,
    ) -> None:
        super().__init__()
        check_spatial_dims("ConnectedUNets", spatial_dims)
        if variant not in CONNECTED_UNETS_VARIANTS:
            raise ValueError(f"variant must be one of {CONNECTED_UNETS_VARIANTS}, got {variant!r}.")
        features = tuple(int(f) for f in features)
        respath_lengths = tuple(int(n) for n in respath_lengths)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features must hold at least two positive widths, got {features}.")
        if len(respath_lengths) != len(features):
            raise ValueError(f"respath_lengths {respath_lengths} must give one length per level of features {features}.")
        self.variant = variant
        self.size_divisor = 2 ** len(features)
        self._spatial_dims = spatial_dims
        self._alpha = alpha
        residual = variant != "baseline"

        def block(in_ch: int, units: int) -> nn.Module:
            if variant == "plusplus":
                return MultiResBlock(spatial_dims, in_ch, units, alpha)
            return ConvReluNormBlock(spatial_dims, in_ch, units)

        def skip(in_ch: int, level: int) -> tuple[nn.Module, int]:
            if not residual:
                return nn.Identity(), in_ch
            return ResPath(spatial_dims, in_ch, features[level], respath_lengths[level]), features[level]

        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)

        def unet_encoder(first_in: int) -> tuple[nn.ModuleList, list[int], list[int]]:
            stages, block_widths, skip_widths = [], [], []
            width = first_in
            for level, units in enumerate(features):
                enc = block(width, units)
                width = enc.out_channels
                link, link_width = skip(width, level)
                stages.append(_EncoderStage(enc, link))
                block_widths.append(width)
                skip_widths.append(link_width)
            return nn.ModuleList(stages), block_widths, skip_widths

        def unet_decoder(skip_widths: list[int]) -> tuple[nn.ModuleList, list[int]]:
            stages, widths = [], []
            width = bottleneck_channels
            for level in reversed(range(len(features))):
                units = features[level]
                dec = block(units + skip_widths[level], units)
                stages.append(_DecoderStage(spatial_dims, width, units, dec))
                width = dec.out_channels
                widths.append(width)
            return nn.ModuleList(stages), widths

        self.encoder1, enc1_widths, skip1_widths = unet_encoder(in_channels)
        self.bottleneck1 = SumASPP(spatial_dims, enc1_widths[-1], bottleneck_channels, aspp_dilations)
        self.decoder1, dec1_widths = unet_decoder(skip1_widths)
        decoded_widths = dec1_widths[::-1]  # top level first

        stages2, enc2_widths, skip2_widths = [], [], []
        lower_width = decoded_widths[0]
        for level, units in enumerate(features):
            if level == 0 or not residual:
                link, link_width = nn.Identity(), decoded_widths[level]
            else:
                link, link_width = ResPath(spatial_dims, decoded_widths[level], units, respath_lengths[level]), units
            enc = block(units + link_width, units)
            out_skip, out_skip_width = skip(enc.out_channels, level)
            stages2.append(_BridgedEncoderStage(spatial_dims, lower_width, units, link, enc, out_skip))
            lower_width = enc.out_channels
            enc2_widths.append(enc.out_channels)
            skip2_widths.append(out_skip_width)
        self.encoder2 = nn.ModuleList(stages2)
        self.bottleneck2 = SumASPP(spatial_dims, enc2_widths[-1], bottleneck_channels, aspp_dilations)
        self.decoder2, dec2_widths = unet_decoder(skip2_widths)
        self.output_aspp = SumASPP(spatial_dims, dec2_widths[-1], features[0], aspp_dilations)
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, 1)
        self.apply(self._glorot_uniform)

    @staticmethod
    def _glorot_uniform(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Every spatial side must be divisible by ``2 ** len(features)`` (16 by default; 224 = 14 x 16).
        """
        check_divisible("ConnectedUNets", x.shape[2:], self.size_divisor)
        levels = len(self.encoder1)
        skips: list[torch.Tensor] = []
        h = x
        for level, stage in enumerate(self.encoder1):
            h, s = stage(h if level == 0 else self.pool(h))
            skips.append(s)
        h = self.bottleneck1(self.pool(h))
        decoded: list[torch.Tensor] = []
        for step, stage in enumerate(self.decoder1):
            h = stage(h, skips[levels - 1 - step])
            decoded.append(h)
        skips2: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder2):
            h, s = stage(h if level == 0 else self.pool(h), decoded[levels - 1 - level])
            skips2.append(s)
        h = self.bottleneck2(self.pool(h))
        for step, stage in enumerate(self.decoder2):
            h = stage(h, skips2[levels - 1 - step])
        return self.head(self.output_aspp(h))


ConnectedUnets = ConnectedUNets
