"""Paper 003's hybrid attention network: SFEB, TSA, GSA against their equations; Table 2 counts; TorchScript."""

from __future__ import annotations

import math
import os
import tempfile
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from breastseg.networks import (
    ABLATION_VARIANTS,
    DenseNet121Encoder,
    GlobalSpatialAttention,
    HybridAttentionNet,
    SpatialFeatureEnhancementBlock,
    TransformerAttentionModule,
    TransformerSelfAttention,
    build_network,
    load_torchvision_densenet121_weights,
)

torch.set_num_threads(1)

# measured with this implementation (1 / 3 input channels); the paper's Table 2 figure last
COUNT_CASES = [
    ["baseline", 10_200_929, 10_207_201, 10_498_945],
    ["convblock", 10_791_521, 10_797_793, 11_089_537],
    ["convblock_sfeb", 15_041_313, 15_047_585, 15_339_329],
    ["full", 15_344_801, 15_351_073, 15_427_713],
]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bn_eval(x: torch.Tensor, norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    return (x - norm.running_mean[None, :, None, None]) / torch.sqrt(norm.running_var[None, :, None, None] + norm.eps) * norm.weight[
        None, :, None, None
    ] + norm.bias[None, :, None, None]


def conv_bn(x: torch.Tensor, block: torch.nn.Module, padding: int) -> torch.Tensor:
    return bn_eval(F.conv2d(x, block.conv.weight, block.conv.bias, padding=padding), block.adn.N)


def randomise_norms(module: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so the equations are checked with real BN."""
    generator = torch.Generator().manual_seed(0)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)
            norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
            with torch.no_grad():
                norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(norm.num_features, generator=generator) * 0.1)


class TestBlocksFollowTheEquations(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_sfeb_equations_6_to_15(self):
        block = SpatialFeatureEnhancementBlock(6)
        randomise_norms(block)
        block.eval()
        x = torch.randn(2, 6, 5, 7)
        i1 = torch.relu(conv_bn(x, block.local, 1))  # eq. 7
        p_o = torch.cat([i1.amax(dim=(2, 3), keepdim=True), i1.mean(dim=(2, 3), keepdim=True)], 1)  # eq. 8-10
        f_c = torch.relu(conv_bn(p_o, block.pooled, 1))  # eq. 11
        f_cc = torch.sigmoid(conv_bn(x.mean(dim=(2, 3), keepdim=True), block.gate, 0))  # eq. 12-13
        expected = f_c * f_cc + x  # eq. 14-15
        torch.testing.assert_close(block(x), expected)
        self.assertEqual(count(block), 28 * 36 + 9 * 6)  # the notes' 28 C^2 + 9 C

    def test_tsa_is_channel_attention_with_learned_projections(self):
        block = TransformerSelfAttention(4, max_positions=5).eval()
        x = torch.randn(2, 4, 3, 5)
        position = torch.zeros(4, 3, 5)
        for i in range(3):
            for j in range(5):
                position[:, i, j] = torch.cat([block.position.columns[j], block.position.rows[i]])
        enriched = (x + position).flatten(2)  # (B, C, HW)
        q = torch.einsum("oc,bcn->bon", block.query.weight[:, :, 0, 0], enriched)  # eq. 1
        k = torch.einsum("oc,bcn->bon", block.key.weight[:, :, 0, 0], enriched)  # eq. 2
        v = torch.einsum("oc,bcn->bon", block.value.weight[:, :, 0, 0], enriched)  # eq. 3
        attention = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(15), dim=-1)  # eq. 4: C x C, d_k = HW
        self.assertEqual(attention.shape, (2, 4, 4))
        torch.testing.assert_close(block(x), (attention @ v).view(2, 4, 3, 5))

    def test_gsa_is_spatial_attention_over_positions(self):
        block = GlobalSpatialAttention(4).eval()
        x = torch.randn(2, 4, 3, 2)
        f_cc = F.conv2d(x, block.embed.weight, block.embed.bias).flatten(2)  # C' = C/2
        f_c = F.conv2d(x, block.value.weight, block.value.bias).flatten(2)
        self.assertEqual(f_cc.shape[1], 2)
        attention = torch.softmax(f_cc.transpose(1, 2) @ f_cc / math.sqrt(2), dim=-1)  # eq. 5: HW x HW
        self.assertEqual(attention.shape, (2, 6, 6))
        expected = torch.einsum("bcm,bnm->bcn", f_c, attention).view(2, 4, 3, 2)
        torch.testing.assert_close(block(x), expected)

    def test_tam_sums_input_tsa_and_gsa(self):
        block = TransformerAttentionModule(4, max_positions=4).eval()
        x = torch.randn(1, 4, 4, 4)
        torch.testing.assert_close(block(x), x + block.tsa(x) + block.gsa(x))

    def test_position_table_limits_the_bottleneck(self):
        block = TransformerSelfAttention(4, max_positions=2)
        with self.assertRaisesRegex(ValueError, "exceeds max_positions=2"):
            block(torch.zeros(1, 4, 3, 2))

    def test_bad_widths_raise(self):
        with self.assertRaisesRegex(ValueError, "even"):
            GlobalSpatialAttention(5)
        with self.assertRaisesRegex(ValueError, "spatial_dims must be 2"):
            HybridAttentionNet(spatial_dims=3)
        with self.assertRaisesRegex(ValueError, "five positive widths"):
            HybridAttentionNet(features=(8, 8, 8))


class TestHybridAttentionNet(unittest.TestCase):
    @parameterized.expand(COUNT_CASES)
    def test_table2_parameter_counts(self, variant, grey, rgb, paper):
        grey_net = HybridAttentionNet(in_channels=1, **ABLATION_VARIANTS[variant])
        self.assertEqual(count(grey_net), grey)
        self.assertEqual(count(HybridAttentionNet(in_channels=3, **ABLATION_VARIANTS[variant])), rgb)
        if variant == "full":
            self.assertLess(abs(rgb - paper) / paper, 0.01)
        if variant == "convblock":  # the ConvBlock adds exactly the paper's delta
            self.assertEqual(grey - COUNT_CASES[0][1], paper - COUNT_CASES[0][3])
        if variant == "convblock_sfeb":  # and so do the four SFEBs at 64/128/256/256
            self.assertEqual(grey - COUNT_CASES[1][1], paper - COUNT_CASES[1][3])

    def test_one_logit_map_and_torchscript(self):
        net = build_network("hybrid_attention", in_channels=1, out_channels=1).eval()
        x = torch.rand(2, 1, 64, 96)
        with torch.no_grad():
            out = net(x)
            self.assertEqual(out.shape, (2, 1, 64, 96))
            self.assertTrue(torch.isfinite(out).all())
            self.assertLess(float(out.min()), 0.0 + float(out.max()))  # logits, not a constant map
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "net.ts")
                torch.jit.script(net).save(path)
                torch.testing.assert_close(torch.jit.load(path)(x), out)

    def test_input_side_must_be_multiple_of_32(self):
        with self.assertRaisesRegex(ValueError, "divisible by 32"):
            HybridAttentionNet(**ABLATION_VARIANTS["baseline"])(torch.zeros(2, 1, 48, 64))

    def test_encoder_taps_densenet_skips(self):
        shapes = [tuple(f.shape) for f in DenseNet121Encoder(2, 1)(torch.zeros(1, 1, 64, 64))]
        self.assertEqual(shapes, [(1, 64, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 1024, 2, 2)])


class TestMonaiBaselines(unittest.TestCase):
    # measured: MONAI's networks at the original 64-1024 widths, one input channel
    @parameterized.expand([["basic_unet", 31_112_065], ["attention_unet", 31_739_185], ["unetplusplus", 9_041_601]])
    def test_registered_baselines(self, name, parameters):
        net = build_network(name, in_channels=1, out_channels=1).eval()
        self.assertEqual(count(net), parameters)
        with torch.no_grad():
            self.assertEqual(tuple(net(torch.zeros(1, 1, 32, 32)).shape), (1, 1, 32, 32))


class TestDenseNetWeights(unittest.TestCase):
    def test_torchvision_old_style_state_dict_loads_and_sums_rgb_stem(self):
        source = DenseNet121Encoder(2, 3)
        state = {}
        for key, value in source.state_dict().items():
            key = key.replace(".layers.", ".")
            for name in ("norm", "relu", "conv"):
                for k in ("1", "2"):
                    key = key.replace(f".{name}{k}.", f".{name}.{k}.")
            state[key] = value.clone()
        state["classifier.weight"] = torch.zeros(1000, 1024)
        self.assertIn("features.denseblock1.denselayer1.norm.1.weight", state)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "densenet121.pth")
            torch.save(state, path)
            grey = load_torchvision_densenet121_weights(DenseNet121Encoder(2, 1), path)
            torch.testing.assert_close(
                grey.features.conv0.weight, source.features.conv0.weight.sum(dim=1, keepdim=True)
            )
            torch.testing.assert_close(
                grey.features.denseblock4.denselayer16.layers.conv2.weight,
                source.features.denseblock4.denselayer16.layers.conv2.weight,
            )
            del state["features.norm5.weight"]
            torch.save(state, path)
            with self.assertRaisesRegex(ValueError, "norm5.weight"):
                load_torchvision_densenet121_weights(DenseNet121Encoder(2, 1), path)
        with self.assertRaises(FileNotFoundError):
            DenseNet121Encoder(2, 1, pretrained_weights="/nonexistent/densenet121.pth")


if __name__ == "__main__":
    unittest.main()
