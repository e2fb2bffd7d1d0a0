"""Paper 001 baselines on a ResNet-34 encoder (U-Net, PSPNet, LinkNet): shapes, counts vs smp, TorchScript."""

from __future__ import annotations

import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import LinkNet, PSPNet, ResNet34Encoder, UNet

torch.set_num_threads(1)

SHAPE_CASES = [
    # network, init kwargs, input shape, expected output shape
    [UNet, {}, (2, 1, 32, 64), (2, 1, 32, 64)],
    [UNet, {"in_channels": 3, "out_channels": 2}, (1, 3, 96, 64), (1, 2, 96, 64)],
    [LinkNet, {}, (2, 1, 32, 64), (2, 1, 32, 64)],
    [LinkNet, {"upsample_kernel_size": 2, "out_channels": 3}, (1, 1, 96, 64), (1, 3, 96, 64)],
    [PSPNet, {}, (2, 1, 40, 56), (2, 1, 40, 56)],
    [PSPNet, {"in_channels": 3, "bin_sizes": (1, 2)}, (1, 3, 64, 64), (1, 1, 64, 64)],
]

# exact counts of this implementation; smp's resnet34 defaults (3 input channels) are 24,436,369 (Unet),
# 21,771,937 (Linknet) and 21,437,985 (PSPNet, of which 19,936,768 are layer3/layer4 weights it never runs)
COUNT_CASES = [
    [UNet, {"in_channels": 3}, 24_436_369],
    [UNet, {"in_channels": 1}, 24_430_097],
    [LinkNet, {"in_channels": 3}, 21_771_937],
    [LinkNet, {"in_channels": 1}, 21_765_665],
    [LinkNet, {"in_channels": 3, "upsample_kernel_size": 2}, 21_507_745],
    [PSPNet, {"in_channels": 3}, 21_437_985 - 19_936_768],
    [PSPNet, {"in_channels": 1}, 1_494_945],
]

DIVISIBILITY_CASES = [[UNet, (1, 1, 32, 48), 32], [LinkNet, (1, 1, 48, 32), 32], [PSPNet, (1, 1, 36, 40), 8]]


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class TestResNetBaselines(unittest.TestCase):
    @parameterized.expand(SHAPE_CASES)
    def test_shape(self, network, kwargs, input_shape, expected_shape):
        net = network(**kwargs).eval()
        with torch.no_grad():
            out = net(torch.randn(input_shape))
        self.assertEqual(tuple(out.shape), expected_shape)

    @parameterized.expand(COUNT_CASES)
    def test_parameter_count(self, network, kwargs, expected):
        self.assertEqual(parameter_count(network(**kwargs)), expected)

    def test_encoder_matches_torchvision_resnet34(self):
        encoder = ResNet34Encoder(spatial_dims=2, in_channels=3)
        self.assertEqual(parameter_count(encoder), 21_284_672)  # torchvision resnet34 without its fc layer
        names = set(encoder.state_dict())
        self.assertIn("layer2.0.downsample.0.weight", names)
        self.assertIn("layer4.2.bn2.running_var", names)
        self.assertIsNone(encoder.layer2[0].downsample[0].bias)
        shapes = [tuple(f.shape) for f in encoder(torch.zeros(1, 3, 64, 64))]
        self.assertEqual(shapes, [(1, 64, 32, 32), (1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)])

    def test_shallow_encoder_builds_no_unused_stages(self):
        encoder = ResNet34Encoder(spatial_dims=2, in_channels=1, depth=3)
        self.assertFalse(any(k.startswith(("layer3", "layer4")) for k in encoder.state_dict()))
        self.assertEqual(len(encoder(torch.zeros(1, 1, 32, 32))), 3)
        with self.assertRaisesRegex(ValueError, "depth"):
            ResNet34Encoder(depth=6)

    @parameterized.expand([[UNet, (2, 1, 64, 96)], [LinkNet, (2, 1, 64, 96)], [PSPNet, (2, 1, 40, 56)]])
    def test_torchscript_round_trip(self, network, input_shape):
        net = network().eval()
        x = torch.randn(input_shape)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "net.ts")
            torch.jit.save(torch.jit.script(net), path)
            loaded = torch.jit.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))

    def test_three_dimensional_input(self):
        with torch.no_grad():
            out = PSPNet(spatial_dims=3, bin_sizes=(1, 2)).eval()(torch.randn(1, 1, 16, 16, 24))
        self.assertEqual(tuple(out.shape), (1, 1, 16, 16, 24))

    @parameterized.expand(DIVISIBILITY_CASES)
    def test_indivisible_input_is_rejected(self, network, input_shape, divisor):
        with self.assertRaisesRegex(ValueError, f"{network.__name__}.*divisible by {divisor}"):
            network().eval()(torch.zeros(input_shape))

    @parameterized.expand(
        [
            [UNet, {"features": (64, 32)}, "features"],
            [UNet, {"spatial_dims": 1}, "spatial_dims"],
            [LinkNet, {"upsample_kernel_size": 3}, "upsample_kernel_size"],
            [LinkNet, {"final_channels": 0}, "final_channels"],
            [PSPNet, {"bin_sizes": ()}, "bin_sizes"],
            [PSPNet, {"dropout": -0.1}, "dropout"],
        ]
    )
    def test_invalid_arguments(self, network, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            network(**kwargs)


if __name__ == "__main__":
    unittest.main()
