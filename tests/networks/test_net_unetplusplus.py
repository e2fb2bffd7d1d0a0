"""UNet++ (Zhou et al. 2018 Nest_Net): shapes, deep-supervision contract, parameter counts, TorchScript."""

from __future__ import annotations

import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import UNetPlusPlus

torch.set_num_threads(1)

TINY = (4, 8, 16, 32, 64)

SHAPE_CASES = [
    # init kwargs, input shape, expected output shape
    [{"features": TINY}, (2, 1, 32, 48), (2, 1, 32, 48)],
    [{"features": TINY, "out_channels": 2}, (1, 1, 64, 64), (1, 2, 64, 64)],
    [{"features": TINY, "in_channels": 3, "norm": "batch"}, (2, 3, 48, 16), (2, 1, 48, 16)],
    [{"features": (4, 8, 16), "spatial_dims": 3}, (1, 1, 8, 12, 16), (1, 1, 8, 12, 16)],
]

# measured with this implementation; the reference Nest_Net docstring gives 9,041,601 (in=1, one head)
COUNT_CASES = [
    [{}, 9_041_601],
    [{"deep_supervision": True}, 9_041_700],
    [{"in_channels": 3}, 9_042_177],
    [{"norm": "batch"}, 9_048_897],
]


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class TestUNetPlusPlus(unittest.TestCase):
    @parameterized.expand(SHAPE_CASES)
    def test_shape(self, kwargs, input_shape, expected_shape):
        net = UNetPlusPlus(**kwargs).eval()
        with torch.no_grad():
            out = net(torch.randn(input_shape))
        self.assertIsInstance(out, torch.Tensor)
        self.assertEqual(tuple(out.shape), expected_shape)

    @parameterized.expand(COUNT_CASES)
    def test_parameter_count(self, kwargs, expected):
        count = parameter_count(UNetPlusPlus(**kwargs))
        self.assertEqual(count, expected)
        self.assertLess(abs(count - 9_041_601) / 9_041_601, 0.01)

    def test_reference_node_layout(self):
        net = UNetPlusPlus()
        self.assertEqual(len(net.encoders), 5)
        self.assertEqual([len(column) for column in net.columns], [4, 3, 2, 1])
        node = net.columns[3][0]  # X^{0,4}: up(X^{1,3}) + X^{0,0..3} = 5 x 32 input channels
        self.assertEqual(node.upsample.deconv.kernel_size, (2, 2))
        self.assertEqual(node.upsample.deconv.stride, (2, 2))
        self.assertEqual(node.convs.conv_0.conv.in_channels, 5 * 32)
        self.assertEqual(sum(isinstance(m, torch.nn.Dropout) for m in net.modules()), 2 * (5 + 10))
        self.assertFalse(any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()))

    def test_deep_supervision_train_returns_heads_final_first(self):
        torch.manual_seed(0)
        net = UNetPlusPlus(features=TINY, dropout=0.0, deep_supervision=True)
        x = torch.randn(2, 1, 32, 48)
        with torch.no_grad():
            heads = net.train()(x)
            final = net.eval()(x)
        self.assertIsInstance(heads, list)
        self.assertEqual(len(heads), 4)
        for head in heads:
            self.assertEqual(tuple(head.shape), (2, 1, 32, 48))
        # without dropout/BN train and eval compute the same graph, so the first head is the eval output
        torch.testing.assert_close(heads[0], final)
        self.assertFalse(torch.allclose(heads[1], final))

    def test_eval_and_plain_training_return_one_tensor(self):
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            self.assertIsInstance(UNetPlusPlus(features=TINY, deep_supervision=True).eval()(x), torch.Tensor)
            self.assertIsInstance(UNetPlusPlus(features=TINY).train()(x), torch.Tensor)

    def test_dropout_active_only_in_training(self):
        net = UNetPlusPlus(features=TINY, dropout=0.5)
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(net.eval()(x), net(x))
            self.assertFalse(torch.allclose(net.train()(x), net(x)))

    def test_torchscript_round_trip(self):
        net = UNetPlusPlus(features=TINY, deep_supervision=True).eval()
        x = torch.randn(2, 1, 32, 48)
        scripted = torch.jit.script(net)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "unetplusplus.ts")
            torch.jit.save(scripted, path)
            loaded = torch.jit.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))
            loaded.train()
            self.assertEqual(len(loaded(x)), 4)

    def test_indivisible_input_is_rejected(self):
        net = UNetPlusPlus(features=TINY).eval()
        with self.assertRaisesRegex(ValueError, r"\[40, 48\].*divisible by 16"):
            net(torch.zeros(1, 1, 40, 48))

    @parameterized.expand(
        [
            [{"features": (32,)}, "features"],
            [{"features": (32, 0, 64)}, "features"],
            [{"dropout": 1.0}, "dropout"],
            [{"spatial_dims": 1}, "spatial_dims"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            UNetPlusPlus(**kwargs)


if __name__ == "__main__":
    unittest.main()
