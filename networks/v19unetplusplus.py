"""v19U-Net++ of paper 002: a VGG19 encoder with the nested decoder wired as the Keras ``Xnet(backbone_name='vgg19')``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from ._checks import check_divisible, check_spatial_dims

__all__ = [
    "V19UNetPlusPlus",
    "V19UnetPlusPlus",
    "VGG19_BLOCK_CHANNELS",
    "VGG19_CONVS_PER_BLOCK",
    "load_torchvision_vgg19_weights",
]

#: Output width of the five VGG19 blocks (``block1`` ... ``block5``).
VGG19_BLOCK_CHANNELS = (64, 128, 256, 512, 512)
#: Number of 3x3 convolutions in each VGG19 block (16 in all).
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)


class _XnetNode(nn.Module):
    """Node X^{i,j}: nearest x2 up-sampling of the lower input, concatenated with the same-row inputs, then
    (3x3 conv without bias -> batch norm -> ReLU) x 2, as Xnet's ``Upsample2D_block`` with batch norm."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.convs = TwoConv(spatial_dims, in_channels, channels, act="relu", norm="batch", bias=False, dropout=0.0)

    def forward(self, lower: torch.Tensor, same_row: list[torch.Tensor]) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(lower)] + same_row, dim=1))


class V19UNetPlusPlus(nn.Module):
    """UNet++ with a VGG19 encoder, the "v19U-Net++" of paper 002 (patch segmenter of the two-stage pipeline).

    Based on: Yan, Conze, Lathuilière, et al., "Two-stage multi-scale breast mass segmentation for full
    mammogram analysis without user intervention", Biocybernetics and Biomedical Engineering 2021 (Sect. 3.3),
    which builds UNet++ (Zhou et al., https://doi.org/10.1007/978-3-030-00889-5_1) on a VGG19 encoder in Keras;
    the graph here is the one the Keras ``Xnet(backbone_name='vgg19')`` builds:

    - encoder: the 16 VGG19 convolutions (3x3 + bias + ReLU, no normalisation), 2x2 max-pooling after each of
      the five blocks; column 0 of row i is the last convolution of block i+1 (``block1_conv2`` ...
      ``block5_conv4``).
    - column 1 takes as lower input the *pooled* output of its own row's block, X^{i,1} = f(up(block(i+1)_pool),
      X^{i,0}) (Xnet's wiring, not the next encoder stage's output); column j >= 2 takes X^{i+1,j-1} and
      concatenates X^{i,0} ... X^{i,j-1}.
    - row widths: Xnet indexes ``decoder_filters=(256, 128, 64, 32, 16)`` by ``3 - i``, so rows 0..4 get
      32, 64, 128, 256 and 16 channels (the default ``decoder_features``); the decoder is not symmetric.
    - output: a 3x3 convolution (with bias) of X^{0,5}, raw logits (the Keras model's sigmoid belongs to the
      post-processing). Xnet has no deep supervision, so this network returns one tensor in every mode.

    29,460,257 parameters at 3 input channels and one output (encoder 20,024,384). Decoder convolutions are
    He-normal initialised (Keras ``he_normal`` in Xnet's ``ConvRelu``); encoder convolutions keep PyTorch's
    defaults unless ``pretrained_weights`` names a local torchvision ``vgg19`` state dict.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3; pretrained weights need 2).
        in_channels: number of input channels (a 3-channel stem is summed over colour for 1 channel).
        out_channels: number of output channels (logits).
        decoder_features: widths of decoder rows 0..4.
        pretrained_weights: optional path of a local torchvision VGG19 state dict (``features.<n>.weight``);
            never downloaded.

    Raises:
        ValueError: for ``spatial_dims`` other than 2/3, ``decoder_features`` that are not five positive
            widths, or pretrained weights with ``spatial_dims=3``.

    Examples::

        >>> net = V19UNetPlusPlus(spatial_dims=2, in_channels=3, out_channels=1).eval()
        >>> net(torch.zeros(1, 3, 64, 96)).shape
        torch.Size([1, 1, 64, 96])

    See Also:
        :py:class:`breastseg.networks.UNetPlusPlus`: the plain-encoder UNet++ of paper 001.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        decoder_features: Sequence[int] = (32, 64, 128, 256, 16),
        pretrained_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims("V19UNetPlusPlus", spatial_dims)
        decoder_features = tuple(int(f) for f in decoder_features)
        if len(decoder_features) != len(VGG19_BLOCK_CHANNELS) or min(decoder_features) < 1:
            raise ValueError(f"decoder_features must hold five positive widths, got {decoder_features}.")
        if pretrained_weights is not None and spatial_dims != 2:
            raise ValueError(f"pretrained VGG19 weights are 2D; spatial_dims must be 2, got {spatial_dims}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.size_divisor = 2 ** len(VGG19_BLOCK_CHANNELS)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)

        blocks = []
        channels = in_channels
        for width, count in zip(VGG19_BLOCK_CHANNELS, VGG19_CONVS_PER_BLOCK):
            layers: list[nn.Module] = []
            for _ in range(count):
                layers += [conv(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

        rows = len(VGG19_BLOCK_CHANNELS)
        # columns[j - 1][i] is node X^{i,j}; column j has rows 0 .. rows - j
        columns = []
        for column in range(1, rows + 1):
            nodes = []
            for row in range(rows - column + 1):
                lower = VGG19_BLOCK_CHANNELS[row] if column == 1 else decoder_features[row + 1]
                same_row = VGG19_BLOCK_CHANNELS[row] + (column - 1) * decoder_features[row]
                nodes.append(_XnetNode(spatial_dims, lower + same_row, decoder_features[row]))
            columns.append(nn.ModuleList(nodes))
        self.columns = nn.ModuleList(columns)
        self.head = conv(decoder_features[0], out_channels, kernel_size=3, padding=1)
        self.columns.apply(self._he_normal)
        self.head.apply(self._he_normal)
        if pretrained_weights is not None:
            load_torchvision_vgg19_weights(self, pretrained_weights)

    @staticmethod
    def _he_normal(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``; sides divisible by 32."""
        check_divisible("V19UNetPlusPlus", x.shape[2:], self.size_divisor)
        grid: list[list[torch.Tensor]] = []
        pooled: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            grid.append([x])
            x = self.pool(x)
            pooled.append(x)
        for column, nodes in enumerate(self.columns):
            for row, node in enumerate(nodes):
                lower = pooled[row] if column == 0 else grid[row + 1][column]
                grid[row].append(node(lower, grid[row]))
        return self.head(grid[0][-1])

    def encoder_convolutions(self) -> list[nn.Module]:
        """The 16 encoder convolutions in VGG19 order (``block1_conv1`` ... ``block5_conv4``)."""
        return [layer for block in self.blocks for layer in block if isinstance(layer, (nn.Conv2d, nn.Conv3d))]


def _torchvision_conv_indices() -> list[int]:
    """Indices of the convolutions in torchvision's ``vgg19().features`` (conv, ReLU pairs; a pool ends a block)."""
    indices = []
    position = 0
    for count in VGG19_CONVS_PER_BLOCK:
        for _ in range(count):
            indices.append(position)
            position += 2
        position += 1
    return indices


def load_torchvision_vgg19_weights(network: V19UNetPlusPlus, path: str | os.PathLike) -> V19UNetPlusPlus:
    """Load the convolutions of a local torchvision VGG19 state dict into ``network``'s encoder.

    Keys ``features.<n>.weight``/``.bias`` are used and ``classifier.*`` is skipped; nothing is downloaded and the
    file is read with ``weights_only=True``. A 3-channel first kernel is summed over colour for a 1-channel
    network (a grey image replicated in RGB gives the same output).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a VGG19 state dict or a shape does not fit (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained VGG19 weights not found: {path}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(source).__name__}.")
    convolutions = network.encoder_convolutions()
    expected = {}
    for conv, index in zip(convolutions, _torchvision_conv_indices()):
        expected[f"features.{index}.weight"] = conv.weight
        expected[f"features.{index}.bias"] = conv.bias
    features = {k for k in source if not k.startswith("classifier.")}
    missing = sorted(set(expected) - features)
    unexpected = sorted(features - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a torchvision VGG19 state dict; missing keys: {missing[:5]} ({len(missing)} in all); "
            f"unexpected keys: {unexpected[:5]} ({len(unexpected)} in all)."
        )
    loaded = {}
    for key, parameter in expected.items():
        value = source[key]
        if key == "features.0.weight" and value.shape[1] == 3 and parameter.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != parameter.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(parameter.shape)}.")
        loaded[key] = value
    with torch.no_grad():
        for key, parameter in expected.items():
            parameter.copy_(loaded[key])
    return network


V19UnetPlusPlus = V19UNetPlusPlus
