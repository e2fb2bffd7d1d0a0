"""Connected-UNets / ConnectedUNets+ / ConnectedUNets++ (paper 004): blocks, bridge, parameter counts, TorchScript."""

from __future__ import annotations

import os
import tempfile
import unittest

import torch
from parameterized import parameterized
from torch import nn

from breastseg.networks import (
    ConnectedUNets,
    ConvBN,
    MultiResBlock,
    ResPath,
    ShiftBatchNorm,
    SumASPP,
    build_network,
    keras_style_parameter_count,
    multires_widths,
)

torch.set_num_threads(1)

TINY = {"features": (4, 8, 12, 16), "bottleneck_channels": 16}

# the papers' Keras-style totals (Table 3: 20.1 M, 23.5 M, 28.15 M; exact figures from the reference code)
PAPER_TOTALS = {"baseline": 20_052_673, "plus": 23_476_033, "plusplus": 28_153_792}

# measured with this implementation: (variant, in_channels, PyTorch parameters, Keras-style total)
COUNT_CASES = [
    ["baseline", 3, 20_036_545, 20_052_673],
    ["plus", 3, 23_445_697, 23_476_033],
    ["plusplus", 3, 28_105_728, 28_153_792],
    ["baseline", 1, 20_035_969, 20_052_097],
    ["plus", 1, 23_445_121, 23_475_457],
    ["plusplus", 1, 28_105_482, 28_153_546],
]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_widths(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


class TestMultiResBlock(unittest.TestCase):
    @parameterized.expand([[32, (8, 17, 26), 51], [64, (17, 35, 53), 105], [128, (35, 71, 106), 212], [256, (71, 142, 213), 426]])
    def test_widths_follow_table_2(self, units, convs, total):
        self.assertEqual(multires_widths(units), convs)
        block = MultiResBlock(2, in_channels=3, units=units).eval()
        self.assertEqual(block.out_channels, total)
        # shortcut 1x1 first, then the three chained 3x3 convolutions
        self.assertEqual(conv_widths(block), [total, *convs])
        with torch.no_grad():
            out = block(torch.randn(2, 3, 8, 8))
        self.assertEqual(tuple(out.shape), (2, total, 8, 8))

    def test_conv_units_have_no_bias_and_no_learnable_scale(self):
        unit = ConvBN(2, 3, 8)
        self.assertIsNone(unit[0].bias)
        self.assertIsInstance(unit[1], ShiftBatchNorm)
        self.assertEqual(parameter_count(unit), 3 * 8 * 9 + 8)  # kernel + shift only
        self.assertEqual(keras_style_parameter_count(unit), 3 * 8 * 9 + 8 + 2 * 8)

    def test_too_small_width_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "MultiResBlock"):
            MultiResBlock(2, 1, units=2)


class TestResPath(unittest.TestCase):
    @parameterized.expand([[32, 4], [64, 3], [128, 2], [256, 1]])
    def test_table_1_lengths(self, channels, length):
        path = ResPath(2, in_channels=51, channels=channels, length=length).eval()
        self.assertEqual(len(path), length)
        kernels = [m.kernel_size for m in path.modules() if isinstance(m, nn.Conv2d)]
        self.assertEqual(kernels.count((3, 3)), length)
        self.assertEqual(kernels.count((1, 1)), length)
        with torch.no_grad():
            out = path(torch.randn(1, 51, 8, 8))
        self.assertEqual(tuple(out.shape), (1, channels, 8, 8))

    def test_invalid_length(self):
        with self.assertRaisesRegex(ValueError, "length"):
            ResPath(2, 8, 8, length=0)


class TestSumASPP(unittest.TestCase):
    def test_branches_are_summed_then_projected(self):
        aspp = SumASPP(2, in_channels=6, out_channels=4, dilations=(6, 8, 12)).eval()
        dilations = sorted(m.dilation for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        self.assertEqual(dilations, [(1, 1), (6, 6), (8, 8), (12, 12)])
        self.assertEqual(aspp.project.kernel_size, (1, 1))
        # four 3x3 branches (with bias) + BN each, 4 -> 4 1x1 projection: summing keeps the width at 4
        self.assertEqual(parameter_count(aspp), 4 * (6 * 4 * 9 + 4 + 2 * 4) + 4 * 4 + 4)
        x = torch.randn(2, 6, 16, 16)
        with torch.no_grad():
            expected = aspp.project(sum(branch(x) for branch in aspp.branches))
            torch.testing.assert_close(aspp(x), expected)
        self.assertEqual(tuple(aspp(x).shape), (2, 4, 16, 16))

    def test_dilations_do_not_change_the_count(self):
        self.assertEqual(parameter_count(SumASPP(2, 8, 8, (6, 8, 12))), parameter_count(SumASPP(2, 8, 8, (6, 12, 18))))

    def test_invalid_dilations(self):
        with self.assertRaisesRegex(ValueError, "dilations"):
            SumASPP(2, 4, 4, dilations=(0, 6))


class TestConnectedUNets(unittest.TestCase):
    @parameterized.expand(COUNT_CASES)
    def test_parameter_counts(self, variant, in_channels, torch_count, keras_total):
        net = ConnectedUNets(in_channels=in_channels, variant=variant)
        self.assertEqual(parameter_count(net), torch_count)
        self.assertEqual(keras_style_parameter_count(net), keras_total)
        self.assertLess(abs(keras_total - PAPER_TOTALS[variant]) / PAPER_TOTALS[variant], 0.005)

    @parameterized.expand([["baseline", 32 + 32, 64 + 64], ["plus", 32 + 32, 64 + 64], ["plusplus", 32 + 51, 64 + 64]])
    def test_bridge_into_the_second_unet(self, variant, top_in, second_in):
        net = ConnectedUNets(variant=variant)
        top, second = net.encoder2[0], net.encoder2[1]
        # top level: 3x3 conv (32) of the last decoder-1 output, concatenated with that output itself
        self.assertEqual((top.conv.kernel_size, top.conv.out_channels), ((3, 3), 32))
        self.assertIsInstance(top.link, nn.Identity)
        first_conv = next(m for m in top.block.modules() if isinstance(m, nn.Conv2d))
        self.assertEqual(first_conv.in_channels, top_in)
        # lower levels: 3x3 conv of the pooled U-Net-2 map beside decoder-1's output (through a ResPath of 3 for +/++)
        self.assertEqual(second.conv.out_channels, 64)
        self.assertEqual(next(m for m in second.block.modules() if isinstance(m, nn.Conv2d)).in_channels, second_in)
        if variant == "baseline":
            self.assertIsInstance(second.link, nn.Identity)
        else:
            self.assertEqual([len(stage.link) for stage in net.encoder2[1:]], [3, 2, 1])
            self.assertEqual([len(stage.skip) for stage in net.encoder2], [4, 3, 2, 1])

    def test_bridge_stage_shapes(self):
        net = ConnectedUNets(variant="plusplus", **TINY)
        decoded = torch.randn(2, net.encoder2[1].link[0].conv[0].in_channels, 8, 8)
        lower = torch.randn(2, net.encoder2[1].conv.in_channels, 8, 8)
        with torch.no_grad():
            out, skip = net.eval().encoder2[1](lower, decoded)
        self.assertEqual(tuple(out.shape), (2, sum(multires_widths(8)), 8, 8))
        self.assertEqual(tuple(skip.shape), (2, 8, 8, 8))

    @parameterized.expand([["baseline"], ["plus"], ["plusplus"]])
    def test_eval_returns_one_logit_tensor(self, variant):
        net = ConnectedUNets(variant=variant, **TINY).eval()
        with torch.no_grad():
            out = net(torch.randn(2, 1, 32, 48))
        self.assertIsInstance(out, torch.Tensor)
        self.assertEqual(tuple(out.shape), (2, 1, 32, 48))
        self.assertLess(out.min().item(), 0.0)  # raw logits, no sigmoid inside

    def test_three_dimensional_and_multi_channel(self):
        net = ConnectedUNets(spatial_dims=3, in_channels=2, out_channels=3, **TINY).eval()
        with torch.no_grad():
            self.assertEqual(tuple(net(torch.randn(1, 2, 16, 16, 16)).shape), (1, 3, 16, 16, 16))

    def test_registered_in_the_factory(self):
        net = build_network("connected_unets", in_channels=1, out_channels=1, variant="plus", **TINY)
        self.assertIsInstance(net, ConnectedUNets)
        self.assertEqual(net.variant, "plus")

    def test_torchscript_round_trip(self):
        net = ConnectedUNets(variant="plusplus", **TINY).eval()
        x = torch.randn(1, 1, 32, 32)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "connected_unets.ts")
            torch.jit.save(torch.jit.script(net), path)
            loaded = torch.jit.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))

    def test_indivisible_input_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"\[40, 48\].*divisible by 16"):
            ConnectedUNets(**TINY).eval()(torch.zeros(1, 1, 40, 48))

    @parameterized.expand(
        [
            [{"variant": "plus2"}, "variant"],
            [{"features": (32,), "respath_lengths": (1,)}, "features"],
            [{"respath_lengths": (4, 3)}, "respath_lengths"],
            [{"spatial_dims": 1}, "spatial_dims"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            ConnectedUNets(**kwargs)


if __name__ == "__main__":
    unittest.main()
