"""UNet++ (nested U-Net) as the standard ``Nest_Net`` of Zhou et al. 2018, the network of paper 001."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.basic_unet import TwoConv
from torch import nn

from ._checks import check_divisible, check_spatial_dims

__all__ = ["UNetPlusPlus", "UnetPlusPlus", "NestedUNet"]


class _NestedNode(nn.Module):
    """Node X^{i,j}: 2x2/2 transposed conv of X^{i+1,j-1}, concatenated with X^{i,0..j-1}, then two 3x3 convs."""

    def __init__(
        self,
        spatial_dims: int,
        lower_channels: int,
        channels: int,
        column: int,
        act: str | tuple,
        norm: str | tuple | None,
        dropout: float,
        bias: bool,
    ) -> None:
        super().__init__()
        self.upsample = UpSample(spatial_dims, lower_channels, channels, scale_factor=2, mode="deconv", bias=True)
        self.convs = TwoConv(spatial_dims, channels * (column + 1), channels, act, norm, bias, dropout)

    def forward(self, lower: torch.Tensor, same_row: list[torch.Tensor]) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(lower)] + same_row, dim=1))


class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skip pathways and optional deep supervision.

    Based on: Zhou, Rahman Siddiquee, Tajbakhsh, Liang, "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation", DLMIA 2018, https://doi.org/10.1007/978-3-030-00889-5_1, as used by paper 001 (UNet++ for
    breast-mass segmentation, "around 9 million parameters").

    The defaults reproduce the reference ``Nest_Net``: widths 32-64-128-256-512, each node is
    [3x3 conv (+bias) -> ReLU -> Dropout(0.5)] x 2 without normalisation, 2x2 max-pooling, 2x2/2 transposed
    convolutions to the row's width, and 1x1 heads; 9,041,601 parameters for one input channel and one head.
    Convolutions are initialised He-normal with zero bias, as the reference (its L2 1e-4 kernel penalty belongs
    to the optimiser's weight decay, not to the network). Nodes are MONAI ``TwoConv`` blocks, which drop out before
    the activation; for ReLU that equals the reference's ReLU -> Dropout.

    Deep-supervision contract (as MONAI ``DynUNet``/``SegResNetDS``): with ``deep_supervision=True`` the network
    has one head on each of X^{0,1} ... X^{0,L}; in ``train()`` mode it returns the list of their logits,
    **final head (X^{0,L}) first**, then X^{0,L-1} ... X^{0,1}, all at input resolution, which is the order
    :py:class:`monai.losses.DeepSupervisionLoss` weights (level 0 = main output). In ``eval()`` mode it always
    returns one tensor, the final head's logits (the reference's accurate mode, averaging all heads, is not
    used). With ``deep_supervision=False`` only the final head exists.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (logits).
        features: widths of rows 0..L (at least two); the network has L = ``len(features) - 1`` poolings.
        act: activation after every 3x3 conv, a name or ``(name, kwargs)``.
        norm: normalisation after every 3x3 conv (``None`` in the reference; e.g. ``"batch"``).
        dropout: dropout probability after every activation (0.5 in the reference).
        bias: whether the 3x3 convolutions have a bias.
        deep_supervision: build one head per column of row 0 and return them all in training.

    Raises:
        ValueError: for ``spatial_dims`` other than 2/3, fewer than two or non-positive ``features``, or
            ``dropout`` outside [0, 1).

    Examples::

        >>> net = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=1, deep_supervision=True)
        >>> heads = net.train()(torch.zeros(2, 1, 32, 48))  # final head first
        >>> len(heads), heads[0].shape
        (4, torch.Size([2, 1, 32, 48]))
        >>> net.eval()(torch.zeros(2, 1, 32, 48)).shape
        torch.Size([2, 1, 32, 48])

    See Also:
        :py:class:`monai.networks.nets.BasicUNetPlusPlus`: LeakyReLU + norm, wider row-0 deconvs,
        9.1 M parameters at these widths.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        act: str | tuple = "relu",
        norm: str | tuple | None = None,
        dropout: float = 0.5,
        bias: bool = True,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims("UNetPlusPlus", spatial_dims)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features must hold at least two positive widths, got {features}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.deep_supervision = deep_supervision
        self.size_divisor = 2 ** (len(features) - 1)

        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        encoder_inputs = (in_channels,) + features[:-1]
        self.encoders = nn.ModuleList(
            [
                TwoConv(spatial_dims, c_in, c_out, act, norm, bias, dropout)
                for c_in, c_out in zip(encoder_inputs, features)
            ]
        )
        # columns[j - 1][i] is node X^{i,j}; column j has one node fewer than column j - 1
        self.columns = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        _NestedNode(spatial_dims, features[row + 1], features[row], column, act, norm, dropout, bias)
                        for row in range(len(features) - column)
                    ]
                )
                for column in range(1, len(features))
            ]
        )
        head_count = len(features) - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(
            [Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1) for _ in range(head_count)]
        )
        self.apply(self._he_normal)

    @staticmethod
    def _he_normal(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Map ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

        Every spatial side must be divisible by ``2 ** (len(features) - 1)`` (16 by default).
        Returns a list (final head first) only in training with ``deep_supervision=True``.
        """
        check_divisible("UNetPlusPlus", x.shape[2:], self.size_divisor)
        grid: list[list[torch.Tensor]] = []
        for row, encoder in enumerate(self.encoders):
            x = encoder(x if row == 0 else self.pool(x))
            grid.append([x])
        for column in self.columns:
            for row, node in enumerate(column):
                grid[row].append(node(grid[row + 1][len(grid[row]) - 1], grid[row]))

        top_row = grid[0]
        if self.training and self.deep_supervision:
            outputs: list[torch.Tensor] = []
            for k, head in enumerate(self.heads):
                outputs.append(head(top_row[len(top_row) - 1 - k]))
            return outputs
        return self.heads[0](top_row[-1])


UnetPlusPlus = NestedUNet = UNetPlusPlus
