"""ResNet-34 encoder shared by the paper-001 baselines (U-Net, PSPNet, LinkNet), with a local weight loader.

The paper's baseline numbers match ``segmentation_models_pytorch`` defaults, whose encoder is torchvision's
ResNet-34. MONAI's ``ResNetFeatures("resnet34")`` uses the parameter-free "A" shortcut (average pooling plus
zero channels, whose ``out.data`` also cuts the gradient of the shortcut) and is not TorchScript-able, so this
encoder builds MONAI's :py:class:`monai.networks.nets.ResNet` with the torchvision topology instead: 7x7/2 stem,
3x3/2 max-pool, basic blocks ``[3, 4, 6, 3]``, "B" shortcut (1x1 conv + BN, no bias). Its parameter names are
exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer4.2.bn2``), so torchvision weights load
without renaming beyond dropping the classifier.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["ResNet34Encoder", "load_torchvision_resnet34_weights", "RESNET34_STAGE_CHANNELS"]

#: Output channels of the stem and of ``layer1`` ... ``layer4`` (resolutions 1/2, 1/4, 1/8, 1/16, 1/32).
RESNET34_STAGE_CHANNELS = (64, 64, 128, 256, 512)


class ResNet34Encoder(ResNet):
    """Torchvision-equivalent ResNet-34 trunk returning the feature map of every stage.

    Args:
        spatial_dims: number of spatial dimensions (2 for mammograms).
        in_channels: number of input channels.
        depth: number of feature maps returned, 3 to 5. ``depth=3`` stops after ``layer2`` (1/8 resolution,
            what smp's PSPNet uses); its ``layer3``/``layer4`` are not built at all (smp builds and never uses them).
        pretrained_weights: path of a LOCAL torchvision ResNet-34 state dict (``resnet34-*.pth``) to load,
            see :py:func:`load_torchvision_resnet34_weights`. ``None`` keeps MONAI's random initialisation.

    Raises:
        ValueError: when ``depth`` is not 3, 4 or 5.
    """

    def __init__(
        self, spatial_dims: int = 2, in_channels: int = 1, depth: int = 5, pretrained_weights: str | None = None
    ) -> None:
        if depth not in (3, 4, 5):
            raise ValueError(f"depth must be 3, 4 or 5 (number of feature maps returned), got {depth!r}.")
        super().__init__(
            block="basic",
            layers=[3, 4, 6, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        # the classifier pieces of monai's ResNet are never used by an encoder
        del self.avgpool, self.fc
        self.depth = depth
        # unused stages become parameter-free placeholders so that TorchScript still finds the attributes
        if depth < 5:
            self.layer4 = nn.Identity()
        if depth < 4:
            self.layer3 = nn.Identity()
        self.out_channels = RESNET34_STAGE_CHANNELS[:depth]
        if pretrained_weights is not None:
            load_torchvision_resnet34_weights(self, pretrained_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``depth`` feature maps, finest first: 64@1/2, 64@1/4, 128@1/8[, 256@1/16[, 512@1/32]]."""
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.layer1(self.maxpool(x))
        features.append(x)
        x = self.layer2(x)
        features.append(x)
        if self.depth > 3:
            x = self.layer3(x)
            features.append(x)
        if self.depth > 4:
            x = self.layer4(x)
            features.append(x)
        return features


def _stage_of(key: str) -> int:
    """Stage index of a torchvision ResNet key: 0 for the stem, 1-4 for ``layerN``, 5 for the classifier."""
    if key.startswith("layer") and key[5:6].isdigit():
        return int(key[5])
    return 5 if key.startswith("fc.") else 0


def _adapt_first_conv(weight: torch.Tensor, in_channels: int, path: str) -> torch.Tensor:
    """Fit the RGB stem kernel to ``in_channels``: grey input sums the three colour kernels (smp does the same)."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(
        f"{path}: conv1.weight has {weight.shape[1]} input channels; the encoder has {in_channels} "
        "(only equal counts or 1-channel input can be adapted)."
    )


def load_torchvision_resnet34_weights(encoder: ResNet34Encoder, path: str | os.PathLike) -> ResNet34Encoder:
    """Load a local torchvision ResNet-34 state dict into ``encoder``; never downloads anything.

    Key names are torchvision's and match the encoder's one to one. The classifier (``fc.*``) and, for a shallow
    encoder, the stages it does not build are skipped on purpose. ``num_batches_tracked`` buffers may be absent
    (older torchvision files lack them) and then keep the encoder's values. A 3-channel stem is summed over
    colour for a 1-channel encoder.

    Args:
        encoder: the encoder to fill in place.
        path: local ``.pth`` file holding a plain state dict (loaded with ``weights_only=True``).

    Returns:
        ``encoder``, for chaining.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a state dict, has unexpected or missing keys, or a tensor of the
            wrong shape; the message names the file and the keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(source).__name__}.")

    target = encoder.state_dict()
    skipped_stages = {stage for stage in range(1, 5) if stage >= encoder.depth} | {5}
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in source.items():
        if key in target:
            mapped[key] = value
        elif _stage_of(key) not in skipped_stages:
            unexpected.append(key)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise ValueError(
            f"{path}: not a torchvision ResNet-34 state dict; "
            f"missing keys: {_preview(missing)}; unexpected keys: {_preview(unexpected)}."
        )
    mapped["conv1.weight"] = _adapt_first_conv(mapped["conv1.weight"], encoder.conv1.in_channels, path)
    wrong_shapes = [
        f"{k} {tuple(v.shape)} (expected {tuple(target[k].shape)})"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if wrong_shapes:
        raise ValueError(f"{path}: tensors of the wrong shape: {_preview(wrong_shapes)}.")
    for key, value in target.items():
        mapped.setdefault(key, value)
    encoder.load_state_dict(mapped, strict=True)
    return encoder


def _preview(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} ... ({len(items)} in all)"
