"""BReMS-Net of paper 000 (Sarfraz et al.): ResNet-50 encoder, MHD, BFA, multi-level fusion and PRM.

The paper's equations fix the modules; what they leave open is decided here and stated in the class
docstring (and in ``bundles/brems_net/docs/README.md``). No reference code exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import ResNetFeatures
from torch import nn

from ._checks import check_divisible

__all__ = [
    "BReMSNet",
    "BremsNet",
    "MultiScaleHybridDilated",
    "BoundaryFeatureAuxiliary",
    "PredictionGuidedRefinement",
    "BREMS_NET_VARIANTS",
    "RESNET50_STAGE_CHANNELS",
    "load_torchvision_resnet50_weights",
]

#: Channels of the ResNet-50 stem and of ``layer1`` ... ``layer4`` (resolutions 1/2, 1/4, 1/8, 1/16, 1/32).
RESNET50_STAGE_CHANNELS = (64, 256, 512, 1024, 2048)

#: Table 3 of the paper: variant name -> module switches (each trained with the same decoder and AW-loss).
BREMS_NET_VARIANTS: dict[str, dict[str, bool]] = {
    "resnet": {"mhd": False, "bfa": False, "prm": False},
    "resnet_mhd": {"mhd": True, "bfa": False, "prm": False},
    "resnet_bfa": {"mhd": False, "bfa": True, "prm": False},
    "resnet_mhd_bfa": {"mhd": True, "bfa": True, "prm": False},
    "brems_net": {"mhd": True, "bfa": True, "prm": True},
}


class MultiScaleHybridDilated(nn.Module):
    """MHD module, Eqs. 5-9: four channel groups, a 1x1 conv each, hierarchical 3x3 convs with dilation 1, 2, 3
    on groups 1-3 (each adding the previous branch's output), identity on group 4, concatenation and a 1x1 fusion.

    Every convolution is conv -> norm -> activation (the paper writes none; MONAI's default order).

    Args:
        spatial_dims: number of spatial dimensions.
        channels: input and output channels; must be divisible by 4.
        act: activation after every convolution.
        norm: normalisation after every convolution.

    Raises:
        ValueError: when ``channels`` is not a positive multiple of 4.
    """

    def __init__(self, spatial_dims: int, channels: int, act: str | tuple = "relu", norm: str | tuple = "batch") -> None:
        super().__init__()
        if channels < 4 or channels % 4 != 0:
            raise ValueError(f"MHD channels must be a positive multiple of 4 (four groups), got {channels}.")
        group = channels // 4
        self.group = group

        def conv(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> Convolution:
            return Convolution(spatial_dims, c_in, c_out, kernel_size=kernel, dilation=dilation, act=act, norm=norm, bias=False)

        self.expand = nn.ModuleList([conv(group, group, 1) for _ in range(4)])
        self.branch1 = conv(group, group, 3, dilation=1)
        self.branch2 = conv(group, group, 3, dilation=2)
        self.branch3 = conv(group, group, 3, dilation=3)
        self.fuse = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.group, dim=1)
        sub: list[torch.Tensor] = []
        for index, expand in enumerate(self.expand):
            sub.append(expand(groups[index]))
        y1 = self.branch1(sub[0])
        y2 = self.branch2(sub[1] + y1)
        y3 = self.branch3(sub[2] + y2)
        return self.fuse(torch.cat([y1, y2, y3, sub[3]], dim=1))


class BoundaryFeatureAuxiliary(nn.Module):
    """BFA module, Eqs. 10-11: ``W = sigmoid(Conv1x1(Concat(F - MaxPool_a(F), F - MaxPool_b(F))))``.

    The max-pools have stride 1 and "same" padding (the paper gives no sizes). ``forward`` applies the
    boundary weights to the decoder features as ``D * (1 + W)``: the paper only says they are "added to the
    decoder restoration"; this keeps every decoder feature and amplifies it up to twice at boundaries.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the skip feature ``F`` (the MHD output).
        out_channels: channels of the decoder features ``D`` the weights apply to.
        pool_sizes: the two max-pool kernel sizes (odd).

    Raises:
        ValueError: when ``pool_sizes`` does not hold two odd sizes >= 3.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = (3, 5)) -> None:
        super().__init__()
        pool_sizes = tuple(int(k) for k in pool_sizes)
        if len(pool_sizes) != 2 or any(k < 3 or k % 2 == 0 for k in pool_sizes):
            raise ValueError(f"BFA needs two odd max-pool sizes >= 3 (Eq. 10, j = 1, 2), got {pool_sizes}.")
        self.pool_a = nn.MaxPool2d(pool_sizes[0], stride=1, padding=pool_sizes[0] // 2)
        self.pool_b = nn.MaxPool2d(pool_sizes[1], stride=1, padding=pool_sizes[1] // 2)
        self.weight_conv = Convolution(spatial_dims, 2 * in_channels, out_channels, kernel_size=1, conv_only=True)

    def boundary_weights(self, skip: torch.Tensor) -> torch.Tensor:
        """``W_s`` of Eq. 11, in ``(0, 1)``, with the decoder's channel count."""
        edges = torch.cat([skip - self.pool_a(skip), skip - self.pool_b(skip)], dim=1)
        return torch.sigmoid(self.weight_conv(edges))

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return decoder * (1.0 + self.boundary_weights(skip))


class _NoBoundary(nn.Module):
    """Stand-in for a switched-off BFA (ablation variants): the decoder features pass unchanged."""

    def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return decoder


class PredictionGuidedRefinement(nn.Module):
    """PRM, Eqs. 1-4, on the fused features ``F``.

    ``P_c = sigmoid(Conv1x1(F))``, ``A = sigmoid(Conv3x3(P_c))``, ``F_r = F * A`` (A broadcast over channels),
    ``P_f = sigmoid(Conv1x1(Conv3x3(F_r)))``. ``forward`` returns the logits of ``P_c`` and ``P_f`` (the sigmoids
    of Eqs. 1 and 4 belong to the loss and the post-processing); the attention uses the probability ``P_c``.
    No normalisation or activation sits between the two convolutions of Eq. 4, as written.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: channels of ``F``.
        out_channels: channels of the predictions.
    """

    def __init__(self, spatial_dims: int, channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.coarse = Convolution(spatial_dims, channels, out_channels, kernel_size=1, conv_only=True)
        self.attention = Convolution(spatial_dims, out_channels, 1, kernel_size=3, conv_only=True)
        self.refine = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)
        self.final = Convolution(spatial_dims, channels, out_channels, kernel_size=1, conv_only=True)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(coarse logits, refined logits)`` at the resolution of ``fused``."""
        coarse = self.coarse(fused)
        attention = torch.sigmoid(self.attention(torch.sigmoid(coarse)))
        refined = self.final(self.refine(fused * attention))
        return coarse, refined


class _DecoderStage(nn.Module):
    """Bilinear x2 up-sampling of the deeper stage, concatenation with the skip, one 3x3 conv, boundary weights."""

    def __init__(
        self, spatial_dims: int, deep_channels: int, skip_channels: int, out_channels: int, boundary: nn.Module, act, norm
    ) -> None:
        super().__init__()
        self.conv = Convolution(spatial_dims, deep_channels + skip_channels, out_channels, kernel_size=3, act=act, norm=norm, bias=False)
        self.boundary = boundary

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.boundary(self.conv(torch.cat([up, skip], dim=1)), skip)


class BReMSNet(nn.Module):
    """BReMS-Net: prediction-guided coarse-to-fine refinement with boundary-aware multi-scale dilated fusion.

    Based on: Sarfraz, Ling, Ijaz, "BReMS-Net: Prediction-Guided Coarse-to-Fine Refinement with Boundary-Aware
    Multi-Scale Dilated Fusion for Robust Breast Mass Segmentation" (paper 000 of breastseg), Eqs. 1-11.

    Layout (choices where the paper is silent are marked *):

    - encoder: torchvision-equivalent ResNet-50 (MONAI ``ResNetFeatures``), maps 64@1/2, 256@1/4, 512@1/8,
      1024@1/16, 2048@1/32; random initialisation or a LOCAL torchvision ImageNet file (``pretrained_weights``);
    - * lateral 1x1 conv + norm + act from each of ``layer1`` ... ``layer4`` to ``decoder_channels`` (finest
      first), then the MHD (Eqs. 5-9) on each of these four lateral maps: the encoder's own stages stay
      ResNet-50, and MHD at decoder width costs ``~2.94 C^2`` parameters per stage instead of ``2.94 x``
      256^2...2048^2 (16.4 M for all four stages at full width);
    - decoder: three stages (1/16, 1/8, 1/4), each bilinear x2 up-sampling, concatenation with the stage's
      MHD map and one 3x3 conv + norm + act, with the BFA weights of that MHD map applied as ``D * (1 + W)``;
      a fourth stage at 1/2 takes the stem's map (no MHD or BFA: the stem is not a residual stage);
    - * multi-level fusion: the four decoder maps up-sampled to 1/2, concatenated, 1x1 then 3x3 conv to
      ``fusion_channels`` = ``F``;
    - PRM (Eqs. 1-4) on ``F``; both predictions are up-sampled bilinearly x2 to the input size;
    - * 5 supervised outputs (Table 1), in training as a list, final first: ``P_f``, ``P_c``, and 1x1 side heads
      on the decoder stages at 1/4, 1/8 and 1/16, all at input resolution. Without PRM the fused prediction
      ``P_c`` is final and 4 outputs remain. In ``eval()`` only the final logits are returned.

    Args:
        spatial_dims: 2 (mammograms; the encoder and the bilinear up-sampling are 2-D).
        in_channels: input channels.
        out_channels: output channels (logits).
        decoder_channels: widths of the lateral/MHD maps and decoder stages at 1/4, 1/8, 1/16, 1/32 (each a
            multiple of 4), finest first.
        stem_decoder_channels: width of the decoder stage at 1/2.
        fusion_channels: width of the fused features ``F``.
        mhd: build the MHD modules (Table 3 switch).
        bfa: build the BFA modules (Table 3 switch).
        prm: build the PRM (Table 3 switch, the "proposed model").
        bfa_pool_sizes: the two max-pool sizes of Eq. 10.
        act: activation of every conv block.
        norm: normalisation of every conv block.
        deep_supervision: return the list of supervised outputs in training.
        pretrained_weights: path of a local torchvision ``resnet50-*.pth`` for the encoder.

    Raises:
        ValueError: for ``spatial_dims`` other than 2 or malformed widths.

    Examples::

        >>> net = BReMSNet(in_channels=1, out_channels=1)
        >>> [o.shape[-1] for o in net.train()(torch.zeros(2, 1, 64, 64))]
        [64, 64, 64, 64, 64]
        >>> net.eval()(torch.zeros(1, 1, 64, 96)).shape
        torch.Size([1, 1, 64, 96])
    """

    __jit_unused_properties__ = ["head_names"]
    # a constant for TorchScript, so that only the branch of the built variant is compiled
    __constants__ = ["has_prm"]

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        decoder_channels: Sequence[int] = (64, 128, 256, 512),
        stem_decoder_channels: int = 32,
        fusion_channels: int = 32,
        mhd: bool = True,
        bfa: bool = True,
        prm: bool = True,
        bfa_pool_sizes: Sequence[int] = (3, 5),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        deep_supervision: bool = True,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"BReMSNet: spatial_dims must be 2 (2-D ResNet-50 and bilinear up-sampling), got {spatial_dims!r}.")
        widths = tuple(int(c) for c in decoder_channels)
        if len(widths) != 4 or any(c < 4 or c % 4 for c in widths):
            raise ValueError(f"decoder_channels must hold four positive multiples of 4 (1/4 ... 1/32), got {tuple(decoder_channels)}.")
        if stem_decoder_channels < 1 or fusion_channels < 1:
            raise ValueError(
                f"stem_decoder_channels and fusion_channels must be positive, got {stem_decoder_channels}, {fusion_channels}."
            )
        self.in_channels = in_channels
        self.size_divisor = 32  # five stride-2 steps in the encoder
        self.deep_supervision = deep_supervision
        self.variant = {"mhd": bool(mhd), "bfa": bool(bfa), "prm": bool(prm)}
        self.has_prm = bool(prm)

        self.encoder = ResNetFeatures("resnet50", pretrained=False, spatial_dims=2, in_channels=in_channels)
        if pretrained_weights is not None:
            load_torchvision_resnet50_weights(self.encoder, pretrained_weights)

        def block(c_in: int, c_out: int, kernel: int) -> Convolution:
            return Convolution(2, c_in, c_out, kernel_size=kernel, act=act, norm=norm, bias=False)

        stage_channels = RESNET50_STAGE_CHANNELS[1:]
        self.laterals = nn.ModuleList([block(c_in, c_out, 1) for c_in, c_out in zip(stage_channels, widths)])
        self.mhd = nn.ModuleList([MultiScaleHybridDilated(2, c, act, norm) if mhd else nn.Identity() for c in widths])

        def boundary(skip: int, decoder: int) -> nn.Module:
            return BoundaryFeatureAuxiliary(2, skip, decoder, bfa_pool_sizes) if bfa else _NoBoundary()

        self.decode16 = _DecoderStage(2, widths[3], widths[2], widths[2], boundary(widths[2], widths[2]), act, norm)
        self.decode8 = _DecoderStage(2, widths[2], widths[1], widths[1], boundary(widths[1], widths[1]), act, norm)
        self.decode4 = _DecoderStage(2, widths[1], widths[0], widths[0], boundary(widths[0], widths[0]), act, norm)
        self.decode2 = _DecoderStage(2, widths[0], RESNET50_STAGE_CHANNELS[0], stem_decoder_channels, _NoBoundary(), act, norm)
        fused_in = stem_decoder_channels + widths[0] + widths[1] + widths[2]
        self.fusion = nn.Sequential(block(fused_in, fusion_channels, 1), block(fusion_channels, fusion_channels, 3))
        self.side_heads = nn.ModuleList(
            [Convolution(2, c, out_channels, kernel_size=1, conv_only=True) for c in (widths[0], widths[1], widths[2])]
        )
        if prm:
            self.refinement: nn.Module = PredictionGuidedRefinement(2, fusion_channels, out_channels)
        else:
            self.refinement = Convolution(2, fusion_channels, out_channels, kernel_size=1, conv_only=True)

    @property
    def head_names(self) -> list[str]:
        """Names of the supervised outputs, in the order of the training-mode list."""
        names = ["refined", "coarse"] if self.has_prm else ["fused"]
        return names + ["side_1_4", "side_1_8", "side_1_16"]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Map ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``; H and W multiples of 32.

        In training with ``deep_supervision`` returns the supervised outputs (see :py:attr:`head_names`).

        Raises:
            ValueError: naming the size when H or W is not a multiple of 32.
        """
        size = x.shape[2:]
        check_divisible("BReMSNet", list(size), self.size_divisor)
        features = self.encoder(x)
        skips: list[torch.Tensor] = []
        index = 0
        for lateral, mhd in zip(self.laterals, self.mhd):
            skips.append(mhd(lateral(features[index + 1])))
            index += 1
        d16 = self.decode16(skips[3], skips[2])
        d8 = self.decode8(d16, skips[1])
        d4 = self.decode4(d8, skips[0])
        d2 = self.decode2(d4, features[0])
        half = d2.shape[2:]
        levels = [d2] + [F.interpolate(d, size=half, mode="bilinear", align_corners=False) for d in (d4, d8, d16)]
        fused = self.fusion(torch.cat(levels, dim=1))
        predictions = self._predict(fused)
        final = F.interpolate(predictions[0], size=size, mode="bilinear", align_corners=False)
        if not (self.training and self.deep_supervision):
            return final
        outputs = [final]
        for prediction in predictions[1:]:
            outputs.append(F.interpolate(prediction, size=size, mode="bilinear", align_corners=False))
        for head, decoded in zip(self.side_heads, (d4, d8, d16)):
            outputs.append(F.interpolate(head(decoded), size=size, mode="bilinear", align_corners=False))
        return outputs

    def _predict(self, fused: torch.Tensor) -> list[torch.Tensor]:
        """``[P_f, P_c]`` logits with the PRM, ``[fused prediction]`` without."""
        if self.has_prm:
            coarse, refined = self.refinement(fused)
            return [refined, coarse]
        return [self.refinement(fused)]

    @torch.jit.unused
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing a checkpoint of another variant with the keys that differ.

        Raises:
            ValueError: when ``strict`` and the checkpoint's keys are not this network's (another Table 3
                variant, other widths or another network); the message names the mismatched keys.
        """
        if strict:
            own = set(self.state_dict())
            given = set(state_dict)
            missing, unexpected = sorted(own - given), sorted(given - own)
            if missing or unexpected:
                raise ValueError(
                    f"checkpoint does not match this BReMS-Net variant {self.variant}: "
                    f"missing keys {_by_module(missing)}; unexpected keys {_by_module(unexpected)}. "
                    "Build the network with the switches the checkpoint was trained with."
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _by_module(keys: list[str]) -> str:
    """State-dict keys grouped by their module two levels down (``mhd.0``, ``decode8.boundary``), with counts."""
    if not keys:
        return "none"
    groups: dict[str, int] = {}
    for key in keys:
        module = ".".join(key.split(".")[:2])
        groups[module] = groups.get(module, 0) + 1
    return ", ".join(f"{module}.* ({n})" for module, n in groups.items())


def _preview(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} ... ({len(keys)} in all)"


def load_torchvision_resnet50_weights(encoder: ResNetFeatures, path: str | os.PathLike) -> ResNetFeatures:
    """Load a LOCAL torchvision ResNet-50 state dict (``resnet50-*.pth``) into ``encoder``; never downloads.

    MONAI's ``ResNetFeatures("resnet50")`` has torchvision's key names; the classifier (``fc.*``) is skipped.
    A 3-channel stem kernel is summed over colour for a 1-channel encoder.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file and the keys when it is not a torchvision ResNet-50 state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(source).__name__}.")
    target = encoder.state_dict()
    weights = {k: v for k, v in source.items() if not k.startswith("fc.")}
    missing = sorted(k for k in target if k not in weights and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in weights if k not in target)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a torchvision ResNet-50 state dict; missing keys {_preview(missing)}; "
            f"unexpected keys {_preview(unexpected)}."
        )
    stem = weights["conv1.weight"]
    if stem.shape[1] != encoder.conv1.in_channels:
        if encoder.conv1.in_channels != 1:
            raise ValueError(
                f"{path}: conv1.weight has {stem.shape[1]} input channels, the encoder {encoder.conv1.in_channels} "
                "(only equal counts or 1-channel input can be adapted)."
            )
        weights["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(target[k].shape)})" for k, v in weights.items() if v.shape != target[k].shape]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape: {_preview(wrong)}.")
    for key, value in target.items():
        weights.setdefault(key, value)
    nn.Module.load_state_dict(encoder, weights, strict=True)
    return encoder


BremsNet = BReMSNet
