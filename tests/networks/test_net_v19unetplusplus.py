"""v19U-Net++ (paper 002): Xnet wiring, parameter count, shapes, TorchScript, local VGG19 weights."""

from __future__ import annotations

import hashlib
import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import V19UNetPlusPlus, build_network, load_torchvision_vgg19_weights

torch.set_num_threads(1)

TINY = (2, 3, 4, 5, 2)

SHAPE_CASES = [
    # init kwargs, input shape, expected output shape
    [{"decoder_features": TINY}, (2, 3, 32, 64), (2, 1, 32, 64)],
    [{"decoder_features": TINY, "in_channels": 1, "out_channels": 2}, (1, 1, 64, 32), (1, 2, 64, 32)],
    [{"decoder_features": TINY, "spatial_dims": 3}, (1, 3, 32, 32, 32), (1, 1, 32, 32, 32)],
]


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def torchvision_vgg19_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's ``vgg19()`` key names and shapes (listed here by hand)."""
    generator = torch.Generator().manual_seed(0)
    convs = [  # (features index, in, out)
        (0, 3, 64), (2, 64, 64),
        (5, 64, 128), (7, 128, 128),
        (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
        (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
        (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
    ]  # fmt: skip
    state = {}
    for index, c_in, c_out in convs:
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) * 0.01
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=generator) * 0.01
    state["classifier.6.weight"] = torch.zeros(10, 4)
    state["classifier.6.bias"] = torch.zeros(10)
    return state


class TestV19UNetPlusPlus(unittest.TestCase):
    @parameterized.expand(SHAPE_CASES)
    def test_shape(self, kwargs, input_shape, expected_shape):
        net = V19UNetPlusPlus(**kwargs).eval()
        with torch.no_grad():
            out = net(torch.randn(input_shape))
        self.assertIsInstance(out, torch.Tensor)
        self.assertEqual(tuple(out.shape), expected_shape)

    def test_parameter_count_matches_keras_xnet(self):
        net = V19UNetPlusPlus(in_channels=3, out_channels=1)
        count = parameter_count(net)
        self.assertEqual(count, 29_460_257)  # notes §3: PyTorch replica of Xnet(backbone_name='vgg19')
        self.assertEqual(sum(parameter_count(block) for block in net.blocks), 20_024_384)  # VGG19 convolutions
        self.assertEqual(parameter_count(V19UNetPlusPlus(in_channels=1)), 29_459_105)

    def test_xnet_wiring(self):
        net = V19UNetPlusPlus()
        self.assertEqual([len(column) for column in net.columns], [5, 4, 3, 2, 1])
        self.assertEqual(len(net.encoder_convolutions()), 16)
        first_conv = [[node.convs.conv_0.conv for node in column] for column in net.columns]
        # X^{i,1}: up(block(i+1)_pool) + block(i+1)_conv_last, i.e. twice the VGG width of row i
        self.assertEqual([c.in_channels for c in first_conv[0]], [128, 256, 512, 1024, 1024])
        # rows 0..4 are 32, 64, 128, 256 and 16 wide (Xnet's decoder_filters indexed by 3 - i)
        self.assertEqual([c.out_channels for c in first_conv[0]], [32, 64, 128, 256, 16])
        # X^{3,2} = up(X^{4,1}: 16) + X^{3,0} (512) + X^{3,1} (256)
        self.assertEqual(first_conv[1][3].in_channels, 16 + 512 + 256)
        # X^{0,5} = up(X^{1,4}: 64) + X^{0,0} (64) + 4 x 32
        self.assertEqual(first_conv[4][0].in_channels, 64 + 64 + 4 * 32)
        self.assertIsNone(first_conv[4][0].bias)
        self.assertEqual(net.head.kernel_size, (3, 3))
        encoder_norms = [m for block in net.blocks for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.assertEqual(encoder_norms, [])

    def test_one_tensor_in_training_and_eval(self):
        net = V19UNetPlusPlus(decoder_features=TINY)
        x = torch.randn(2, 3, 32, 32)
        self.assertIsInstance(net.train()(x), torch.Tensor)
        with torch.no_grad():
            self.assertIsInstance(net.eval()(x), torch.Tensor)

    def test_torchscript_round_trip(self):
        net = V19UNetPlusPlus(decoder_features=TINY).eval()
        x = torch.randn(1, 3, 32, 64)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "v19unetplusplus.ts")
            torch.jit.save(torch.jit.script(net), path)
            loaded = torch.jit.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))

    def test_registered_in_factory(self):
        net = build_network("v19unetplusplus", in_channels=3, out_channels=1, decoder_features=TINY)
        self.assertIsInstance(net, V19UNetPlusPlus)

    def test_indivisible_input_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"\[48, 64\].*divisible by 32"):
            V19UNetPlusPlus(decoder_features=TINY)(torch.zeros(1, 3, 48, 64))

    @parameterized.expand(
        [
            [{"decoder_features": (32, 64, 128, 256)}, "five positive"],
            [{"decoder_features": (32, 64, 0, 256, 16)}, "five positive"],
            [{"spatial_dims": 1}, "spatial_dims"],
            [{"spatial_dims": 3, "pretrained_weights": "vgg19.pth"}, "2D"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            V19UNetPlusPlus(**kwargs)


class TestTorchvisionVGG19Weights(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.state = torchvision_vgg19_state_dict()
        cls.path = os.path.join(cls.tmp.name, "vgg19.pth")
        torch.save(cls.state, cls.path)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def save(self, state, name: str) -> str:
        path = os.path.join(self.tmp.name, name)
        torch.save(state, path)
        return path

    def test_every_encoder_convolution_is_loaded(self):
        with open(self.path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        net = V19UNetPlusPlus(decoder_features=TINY, pretrained_weights=self.path)
        convs = net.encoder_convolutions()
        torch.testing.assert_close(convs[0].weight.data, self.state["features.0.weight"])
        torch.testing.assert_close(convs[4].bias.data, self.state["features.10.bias"])  # block3_conv1
        torch.testing.assert_close(convs[15].weight.data, self.state["features.34.weight"])  # block5_conv4
        with open(self.path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)  # reading never modifies the file

    def test_grey_input_sums_the_colour_kernels(self):
        net = V19UNetPlusPlus(in_channels=1, decoder_features=TINY, pretrained_weights=self.path)
        expected = self.state["features.0.weight"].sum(dim=1, keepdim=True)
        torch.testing.assert_close(net.encoder_convolutions()[0].weight.data, expected)

    @parameterized.expand(
        [
            [
                "missing",
                lambda s: {k: v for k, v in s.items() if k != "features.21.bias"},
                r"missing keys: \['features\.21",
            ],
            ["unexpected", lambda s: {**s, "features.37.weight": torch.zeros(1)}, r"unexpected keys: \['features\.37"],
            ["shape", lambda s: {**s, "features.2.weight": torch.zeros(64, 64, 1, 1)}, r"\(64, 64, 1, 1\)"],
            ["not a state dict", lambda s: [1, 2], "expected a state dict"],
        ]
    )
    def test_bad_files_are_named(self, name, corrupt, message):
        path = self.save(corrupt(dict(self.state)), f"{name.replace(' ', '_')}.pth")
        with self.assertRaisesRegex(ValueError, message) as raised:
            load_torchvision_vgg19_weights(V19UNetPlusPlus(decoder_features=TINY), path)
        self.assertIn(path, str(raised.exception))

    def test_missing_file(self):
        with self.assertRaisesRegex(FileNotFoundError, "no-such-vgg19.pth"):
            V19UNetPlusPlus(pretrained_weights=os.path.join(self.tmp.name, "no-such-vgg19.pth"))


if __name__ == "__main__":
    unittest.main()
