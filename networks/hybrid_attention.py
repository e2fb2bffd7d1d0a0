"""Paper 003's hybrid attention network: DenseNet-121 encoder, Transformer Attention Module, SFEB skips.

Based on: Aslam et al., "Hybrid attention network for breast tumor segmentation in ultrasound". The attention
module follows the self-aware attention of TransAttUNet (Chen et al., cited as [46]) as the paper describes it:
Transformer Self-Attention (TSA, eq. 1-4) on learned position encodings and Global Spatial Attention (GSA,
eq. 5). The Spatial Feature Enhancement Block (SFEB, eq. 6-15) refines every skip connection.

Where the paper is silent or contradicts its own parameter counts, this module chooses (and the bundle docs
state): a 256-channel bottleneck, SFEBs at 64/128/256/256 channels (the only exact fit of Table 2's "+SFEB"
count), a decoder of one 3x3 convolution per stage with widths 256/192/128/64/32, TAM outputs fused with the
input by a sum, and raw logits out (the sigmoid belongs to the loss and the post-processing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv
from torch import nn

from ._checks import check_divisible
from .densenet_encoder import DENSENET121_SKIP_CHANNELS, DenseNet121Encoder

__all__ = [
    "ABLATION_VARIANTS",
    "SpatialFeatureEnhancementBlock",
    "LearnedPositionEncoding",
    "TransformerSelfAttention",
    "GlobalSpatialAttention",
    "TransformerAttentionModule",
    "HybridAttentionNet",
    "HybridAttentionUNet",
]

#: Table 2's ablation variants as constructor switches (each adds one component to the previous one).
ABLATION_VARIANTS: dict[str, dict[str, bool]] = {
    "baseline": {"conv_block": False, "sfeb": False, "tam": False},
    "convblock": {"conv_block": True, "sfeb": False, "tam": False},
    "convblock_sfeb": {"conv_block": True, "sfeb": True, "tam": False},
    "full": {"conv_block": True, "sfeb": True, "tam": True},
}

_NORM = "batch"
_ACT = ("relu", {"inplace": True})


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> Convolution:
    return Convolution(2, in_channels, out_channels, kernel_size=kernel_size, act=_ACT, norm=_NORM, bias=bias)


class SpatialFeatureEnhancementBlock(nn.Module):
    """SFEB (eq. 6-15): ``F = ReLU(BN(conv3x3([GMP(I1), GAP(I1)]))) * sigmoid(BN(conv1x1(GAP(I)))) + I``
    with ``I1 = ReLU(BN(conv3x3(I)))``.

    The pooling is global, as the paper writes, so both attention factors are per-channel vectors broadcast
    onto the input; the "3x3" convolution of eq. 11 then sees a 1x1 map and only its centre tap acts. All
    convolutions carry a bias (the Keras default behind the paper's counts): 28 C^2 + 9 C parameters.

    Args:
        channels: input and output channels ``C``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"SFEB channels must be positive, got {channels}.")
        self.local = _conv_bn_relu(channels, channels, 3, bias=True)
        self.pooled = _conv_bn_relu(2 * channels, channels, 3, bias=True)
        self.gate = Convolution(2, channels, channels, kernel_size=1, act="sigmoid", norm=_NORM, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``; batch norm on the pooled vectors needs B > 1 in training."""
        local = self.local(x)
        pooled = torch.cat([torch.amax(local, dim=(2, 3), keepdim=True), local.mean(dim=(2, 3), keepdim=True)], 1)
        features = self.pooled(pooled)
        weights = self.gate(x.mean(dim=(2, 3), keepdim=True))
        return features * weights + x


class LearnedPositionEncoding(nn.Module):
    """Learned row and column embeddings (``C/2`` features each) concatenated into ``C`` channels per position.

    Args:
        channels: ``C``, even.
        max_positions: table length, the largest height or width accepted (32 = 1024 px input at 1/32).
    """

    def __init__(self, channels: int, max_positions: int = 32) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"position encoding channels must be even and positive, got {channels}.")
        if max_positions < 1:
            raise ValueError(f"max_positions must be positive, got {max_positions}.")
        self.max_positions = max_positions
        self.rows = nn.Parameter(torch.empty(max_positions, channels // 2))
        self.columns = nn.Parameter(torch.empty(max_positions, channels // 2))
        nn.init.uniform_(self.rows)
        nn.init.uniform_(self.columns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(1, C, H, W)`` encoding for a ``(B, C, H, W)`` map."""
        height, width = x.shape[2], x.shape[3]
        if height > self.max_positions or width > self.max_positions:
            raise ValueError(
                f"position encoding: feature map {height}x{width} exceeds max_positions={self.max_positions}."
            )
        columns = self.columns[:width].t()[:, None, :].expand(-1, height, -1)
        rows = self.rows[:height].t()[:, :, None].expand(-1, -1, width)
        return torch.cat([columns, rows], dim=0).unsqueeze(0)


class TransformerSelfAttention(nn.Module):
    """TSA (eq. 1-4): channel attention ``softmax(Q K^T / sqrt(d_k)) V`` on position-encoded features.

    ``Q``, ``K`` and ``V`` are learned 1x1 projections (``W_q``, ``W_k``, ``W_v``, no bias) of ``F + PE``, flattened
    to ``C x HW``; the attention map is ``C x C`` and ``d_k = HW``, the length of the vectors whose dot products
    it holds. The position encoding is added: the paper "concatenates" embeddings, which in TransAttUNet are the
    row and column halves concatenated into ``C`` channels (see :py:class:`LearnedPositionEncoding`).

    Args:
        channels: ``C``.
        max_positions: see :py:class:`LearnedPositionEncoding`.
    """

    def __init__(self, channels: int, max_positions: int = 32) -> None:
        super().__init__()
        self.position = LearnedPositionEncoding(channels, max_positions)
        self.query = Conv[Conv.CONV, 2](channels, channels, kernel_size=1, bias=False)
        self.key = Conv[Conv.CONV, 2](channels, channels, kernel_size=1, bias=False)
        self.value = Conv[Conv.CONV, 2](channels, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        batch, channels, height, width = x.shape
        x = x + self.position(x)
        query = self.query(x).flatten(2)
        key = self.key(x).flatten(2)
        value = self.value(x).flatten(2)
        attention = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(height * width), dim=-1)
        return (attention @ value).view(batch, channels, height, width)


class GlobalSpatialAttention(nn.Module):
    """GSA (eq. 5): spatial attention ``softmax(F1cc^T F2cc / sqrt(C'))`` over ``HW x HW`` applied to ``F^c``.

    ``F`` is embedded by 1x1 convolutions into ``F^c`` (``C`` channels, the values) and ``F^cc`` (``C' = C/2``);
    as the paper writes, ``F1cc`` and ``F2cc`` are both reshapes of the one ``F^cc``, so the map is symmetric.

    Args:
        channels: ``C``, even.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"GSA channels must be even and positive, got {channels}.")
        self.embed = Conv[Conv.CONV, 2](channels, channels // 2, kernel_size=1)
        self.value = Conv[Conv.CONV, 2](channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        batch, channels, height, width = x.shape
        embedded = self.embed(x).flatten(2)  # (B, C', HW)
        attention = torch.softmax(embedded.transpose(1, 2) @ embedded / math.sqrt(embedded.shape[1]), dim=-1)
        values = self.value(x).flatten(2)  # (B, C, HW)
        return (values @ attention.transpose(1, 2)).view(batch, channels, height, width)


class TransformerAttentionModule(nn.Module):
    """TAM: ``F + TSA(F) + GSA(F)``.

    The paper concatenates TSA, GSA and the input yet states a ``C``-channel output; a sum (TransAttUNet's
    fusion) keeps ``C`` channels without the ``3C -> C`` reduction that Table 2's "+TAM" count leaves no room for.

    Args:
        channels: ``C``, even.
        max_positions: see :py:class:`LearnedPositionEncoding`.
    """

    def __init__(self, channels: int, max_positions: int = 32) -> None:
        super().__init__()
        self.tsa = TransformerSelfAttention(channels, max_positions)
        self.gsa = GlobalSpatialAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tsa(x) + self.gsa(x)


class _DecoderStage(nn.Module):
    """Bilinear x2 up-sampling, the skip projected (1x1) and optionally SFEB-refined, concatenation, 3x3 conv."""

    def __init__(self, in_channels: int, skip_channels: int, skip_width: int, out_channels: int, sfeb: bool) -> None:
        super().__init__()
        self.upsample = UpSample(2, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False)
        self.project: nn.Module = (
            _conv_bn_relu(skip_channels, skip_width, 1, bias=False) if skip_channels != skip_width else nn.Identity()
        )
        self.sfeb: nn.Module = SpatialFeatureEnhancementBlock(skip_width) if sfeb else nn.Identity()
        self.fuse = _conv_bn_relu(in_channels + skip_width, out_channels, 3, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.upsample(x), self.sfeb(self.project(skip))], dim=1))


class HybridAttentionNet(nn.Module):
    """DenseNet-121 encoder, ConvBlock + TAM bottleneck, SFEB skips, light bilinear decoder; logits out.

    Encoder skips (64@1/2, 256@1/4, 512@1/8, 1024@1/16) are projected by 1x1 conv-BN-ReLU to ``skip_widths``
    (64/128/256/256, where the SFEBs sit); the 1024@1/32 map is reduced to ``bottleneck_channels`` (1x1), passed
    through the ConvBlock (3x3 conv with bias, BN, ReLU) and the TAM, then decoded by four stages (bilinear x2,
    concatenation with the skip, 3x3 conv-BN-ReLU to ``features[k]``), a full-resolution stage and a 1x1 head.

    Parameters (1 input channel / 3, the paper's Table 2 in brackets): baseline 10,200,929 / 10,207,201
    (10,498,945), +ConvBlock 10,791,521 / 10,797,793 (11,089,537), +SFEB 15,041,313 / 15,047,585 (15,339,329),
    +TAM (the default) 15,344,801 / 15,351,073 (15,427,713: -0.54 % / -0.50 %). ConvBlock and SFEB add exactly
    the paper's deltas; this TAM adds 303,488 where the paper's adds 88,384, because the paper's TSA has learned
    Q/K/V projections (3 x 65,536 at C = 256) that TransAttUNet, whose count the paper's matches, does not.

    Args:
        spatial_dims: 2 (the position encoding and attention are 2D).
        in_channels: input channels (1 for grey ultrasound; 3 to load RGB ImageNet weights unchanged).
        out_channels: output channels (logits).
        features: decoder widths at 1/16, 1/8, 1/4, 1/2 and 1/1.
        bottleneck_channels: width of the ConvBlock and the TAM (even).
        skip_widths: widths of the projected skips at 1/2, 1/4, 1/8, 1/16 (the SFEB widths).
        conv_block: include the bottleneck ConvBlock.
        sfeb: include the SFEBs.
        tam: include the Transformer Attention Module.
        max_positions: position-table length, the largest bottleneck side (input side / 32).
        pretrained_weights: LOCAL torchvision DenseNet-121 state dict for the encoder (never downloaded).

    Raises:
        ValueError: for ``spatial_dims`` other than 2, five ``features`` or four ``skip_widths`` not positive.

    Examples::

        >>> net = HybridAttentionNet(in_channels=1, out_channels=1)
        >>> net.eval()(torch.zeros(1, 1, 256, 256)).shape
        torch.Size([1, 1, 256, 256])
        >>> HybridAttentionNet(**ABLATION_VARIANTS["baseline"])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (256, 192, 128, 64, 32),
        bottleneck_channels: int = 256,
        skip_widths: Sequence[int] = (64, 128, 256, 256),
        conv_block: bool = True,
        sfeb: bool = True,
        tam: bool = True,
        max_positions: int = 32,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"HybridAttentionNet: spatial_dims must be 2, got {spatial_dims!r}.")
        features = tuple(int(f) for f in features)
        skip_widths = tuple(int(w) for w in skip_widths)
        if len(features) != 5 or min(features) < 1:
            raise ValueError(f"HybridAttentionNet: features must hold five positive widths, got {features}.")
        if len(skip_widths) != 4 or min(skip_widths) < 1:
            raise ValueError(f"HybridAttentionNet: skip_widths must hold four positive widths, got {skip_widths}.")
        self.encoder = DenseNet121Encoder(2, in_channels, pretrained_weights)
        self.reduce = _conv_bn_relu(DENSENET121_SKIP_CHANNELS[-1], bottleneck_channels, 1, bias=False)
        self.conv_block: nn.Module = (
            _conv_bn_relu(bottleneck_channels, bottleneck_channels, 3, bias=True) if conv_block else nn.Identity()
        )
        self.tam: nn.Module = (
            TransformerAttentionModule(bottleneck_channels, max_positions) if tam else nn.Identity()
        )
        stage_inputs = (bottleneck_channels,) + features[:3]
        encoder_skips = DENSENET121_SKIP_CHANNELS[3::-1]  # 1024@1/16 ... 64@1/2
        self.stages = nn.ModuleList(
            [
                _DecoderStage(c_in, c_skip, width, c_out, sfeb)
                for c_in, c_skip, width, c_out in zip(stage_inputs, encoder_skips, skip_widths[::-1], features[:4])
            ]
        )
        self.final = nn.Sequential(
            UpSample(2, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False),
            _conv_bn_relu(features[3], features[4], 3, bias=False),
        )
        self.head = Conv[Conv.CONV, 2](features[4], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``; H and W multiples of 32."""
        check_divisible("HybridAttentionNet", x.shape[2:], 32)
        skips = self.encoder(x)
        x = self.tam(self.conv_block(self.reduce(skips[4])))
        for k, stage in enumerate(self.stages):
            x = stage(x, skips[3 - k])
        return self.head(self.final(x))


HybridAttentionUNet = HybridAttentionNet
