"""DenseNet-121 encoder returning the skip features of paper 003, with a local torchvision weight loader.

MONAI's :py:class:`monai.networks.nets.DenseNet121` ``features`` has torchvision's layer names and parameters
(6,953,856 with a 3-channel input), except that each dense layer keeps its modules in a ``layers`` sub-module
(``denseblock1.denselayer1.layers.norm1`` for torchvision's ``denseblock1.denselayer1.norm1``). The encoder
taps the feature maps the Keras reference names ``conv1/relu``, ``pool2_relu``, ``pool3_relu``, ``pool4_relu``
and ``relu``: 64@1/2, 256@1/4, 512@1/8, 1024@1/16 and 1024@1/32.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from monai.networks.nets import DenseNet121
from torch import nn

__all__ = ["DenseNet121Encoder", "DENSENET121_SKIP_CHANNELS", "load_torchvision_densenet121_weights"]

#: Channels of the maps returned by :py:class:`DenseNet121Encoder`, finest first (1/2 ... 1/32).
DENSENET121_SKIP_CHANNELS = (64, 256, 512, 1024, 1024)

# torchvision files older than v0.3 name dense-layer modules "norm.1" instead of "norm1"
_OLD_LAYER_NAME = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\.(.+)$")
_LAYER_NAME = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12])\.(.+)$")


class DenseNet121Encoder(nn.Module):
    """The convolutional trunk of DenseNet-121 (``features``), returning five maps.

    Args:
        spatial_dims: number of spatial dimensions (2 for ultrasound frames).
        in_channels: number of input channels.
        pretrained_weights: LOCAL torchvision ``densenet121`` state dict (never downloaded), see
            :py:func:`load_torchvision_densenet121_weights`; ``None`` keeps MONAI's initialisation.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, pretrained_weights: str | None = None) -> None:
        super().__init__()
        self.features = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1).features
        if pretrained_weights is not None:
            load_torchvision_densenet121_weights(self, pretrained_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Map ``(B, in_channels, H, W)`` to ``[64@1/2, 256@1/4, 512@1/8, 1024@1/16, 1024@1/32]``."""
        f = self.features
        stem = f.relu0(f.norm0(f.conv0(x)))
        x = f.denseblock1(f.pool0(stem))
        skip4 = f.transition1.relu(f.transition1.norm(x))
        x = f.denseblock2(f.transition1.pool(f.transition1.conv(skip4)))
        skip8 = f.transition2.relu(f.transition2.norm(x))
        x = f.denseblock3(f.transition2.pool(f.transition2.conv(skip8)))
        skip16 = f.transition3.relu(f.transition3.norm(x))
        x = f.denseblock4(f.transition3.pool(f.transition3.conv(skip16)))
        bottom = torch.relu(f.norm5(x))
        return [stem, skip4, skip8, skip16, bottom]


def _monai_name(key: str) -> str | None:
    """A torchvision ``densenet121`` key as named in :py:class:`DenseNet121Encoder`; ``None`` for the classifier."""
    if not key.startswith("features."):
        return None
    old = _OLD_LAYER_NAME.match(key)
    if old:
        key = f"{old.group(1)}.{old.group(2)}{old.group(3)}.{old.group(4)}"
    new = _LAYER_NAME.match(key)
    if new:
        key = f"{new.group(1)}.layers.{new.group(2)}.{new.group(3)}"
    return key


def load_torchvision_densenet121_weights(encoder: DenseNet121Encoder, path: str | os.PathLike) -> DenseNet121Encoder:
    """Load a local torchvision DenseNet-121 state dict into ``encoder``; never downloads anything.

    Both torchvision key styles are accepted (``norm.1`` and ``norm1``); the classifier is skipped. A 3-channel
    stem is summed over colour for a 1-channel encoder (a grey image replicated in RGB gives the same output).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a DenseNet-121 state dict (the message names the file and the keys).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(source).__name__}.")
    target = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in source.items():
        name = _monai_name(key)
        if name is None:
            continue
        if name not in target:
            unexpected.append(key)
            continue
        if name == "features.conv0.weight" and value.shape[1] == 3 and target[name].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != target[name].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(target[name].shape)}.")
        mapped[name] = value
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise ValueError(
            f"{path}: not a torchvision DenseNet-121 state dict; missing keys: {missing[:5]} "
            f"({len(missing)} in all); unexpected keys: {unexpected[:5]} ({len(unexpected)} in all)."
        )
    encoder.load_state_dict(mapped, strict=False)
    return encoder
