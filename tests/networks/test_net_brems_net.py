"""BReMS-Net (paper 000): each module against its equation, the 5 outputs, variants, counts, TorchScript."""

from __future__ import annotations

import os
import tempfile
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

from breastseg.networks import (
    BREMS_NET_VARIANTS,
    BoundaryFeatureAuxiliary,
    BReMSNet,
    MultiScaleHybridDilated,
    PredictionGuidedRefinement,
    build_network,
    load_torchvision_resnet50_weights,
)

torch.set_num_threads(1)

SMALL = {"decoder_channels": (8, 8, 8, 8), "stem_decoder_channels": 4, "fusion_channels": 4}

# measured with this implementation (1 input channel unless stated); the paper reports no count
COUNT_CASES = [
    [{}, 28_491_535],
    [BREMS_NET_VARIANTS["resnet"], 27_281_764],
    [BREMS_NET_VARIANTS["resnet_mhd"], 28_309_764],
    [BREMS_NET_VARIANTS["resnet_bfa"], 27_454_244],
    [BREMS_NET_VARIANTS["resnet_mhd_bfa"], 28_482_244],
    [{"in_channels": 3}, 28_497_807],
]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def support(response: torch.Tensor) -> tuple[int, int]:
    """Height and width of the non-zero region of a (1, C, H, W) response."""
    nonzero = response.abs().sum(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(nonzero, as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


class TestMultiScaleHybridDilated(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        # linear blocks: the impulse response then shows exactly which convolutions each group passes through
        self.mhd = MultiScaleHybridDilated(2, 8, act=None, norm=None).eval()

    def test_shape_and_branch_dilations(self):
        self.assertEqual(tuple(self.mhd(torch.randn(2, 8, 9, 11)).shape), (2, 8, 9, 11))
        self.assertEqual(self.mhd.branch1.conv.dilation, (1, 1))
        self.assertEqual(self.mhd.branch2.conv.dilation, (2, 2))
        self.assertEqual(self.mhd.branch3.conv.dilation, (3, 3))
        self.assertTrue(all(e.conv.kernel_size == (1, 1) for e in self.mhd.expand))

    @parameterized.expand(
        [
            # group receiving the impulse -> receptive field of Eqs. 6-9
            [0, 3 + 4 + 6],  # y1 (3x3) feeds y2 (3x3, r=2) feeds y3 (3x3, r=3): 13x13
            [1, 5 + 6],  # x2 -> dConv r=2 -> y3 r=3: 11x11
            [2, 7],  # x3 -> dConv r=3: 7x7
            [3, 1],  # x4 is kept as it is (Eq. 9): only 1x1 convolutions
        ]
    )
    def test_receptive_field_of_each_group(self, group, extent):
        with torch.no_grad():
            bias_only = self.mhd(torch.zeros(1, 8, 31, 31))
            impulse = torch.zeros(1, 8, 31, 31)
            impulse[0, 2 * group, 15, 15] = 1.0
            response = self.mhd(impulse) - bias_only
        self.assertEqual(support(response), (extent, extent))

    def test_channels_must_split_in_four_groups(self):
        with self.assertRaisesRegex(ValueError, "multiple of 4"):
            MultiScaleHybridDilated(2, 6)


class TestBoundaryFeatureAuxiliary(unittest.TestCase):
    def test_weights_follow_equations_10_and_11(self):
        torch.manual_seed(0)
        bfa = BoundaryFeatureAuxiliary(2, 3, 5, pool_sizes=(3, 5))
        skip = torch.randn(2, 3, 12, 10)
        edges = torch.cat(
            [skip - F.max_pool2d(skip, 3, 1, 1), skip - F.max_pool2d(skip, 5, 1, 2)], dim=1
        )
        conv = bfa.weight_conv.conv
        expected = torch.sigmoid(F.conv2d(edges, conv.weight, conv.bias))
        with torch.no_grad():
            torch.testing.assert_close(bfa.boundary_weights(skip), expected)
            decoder = torch.randn(2, 5, 12, 10)
            torch.testing.assert_close(bfa(decoder, skip), decoder * (1 + expected))

    def test_flat_features_give_no_boundary_signal(self):
        bfa = BoundaryFeatureAuxiliary(2, 2, 2)
        flat, step = torch.full((1, 2, 8, 8), 3.0), torch.zeros(1, 2, 8, 8)
        step[..., 4:] = 1.0
        with torch.no_grad():
            constant = bfa.boundary_weights(flat)
            edged = bfa.boundary_weights(step)
        # F - MaxPool(F) is 0 on flat features: W = sigmoid(bias) everywhere
        torch.testing.assert_close(constant, torch.sigmoid(bfa.weight_conv.conv.bias).view(1, 2, 1, 1).expand(1, 2, 8, 8))
        # a step edge changes W only within the larger pool's radius (2 px) on the low side
        changed = (edged - constant).abs().sum(dim=(0, 1)) > 1e-7
        self.assertEqual(torch.nonzero(changed.any(dim=0)).flatten().tolist(), [2, 3])

    @parameterized.expand([[(3,)], [(3, 4)], [(1, 3)]])
    def test_pool_sizes_are_validated(self, sizes):
        with self.assertRaisesRegex(ValueError, "pool sizes"):
            BoundaryFeatureAuxiliary(2, 2, 2, pool_sizes=sizes)


class TestPredictionGuidedRefinement(unittest.TestCase):
    def test_outputs_follow_equations_1_to_4(self):
        torch.manual_seed(0)
        prm = PredictionGuidedRefinement(2, 6, 1)
        fused = torch.randn(2, 6, 9, 7)

        def conv(block, x, padding):
            return F.conv2d(x, block.conv.weight, block.conv.bias, padding=padding)

        coarse = conv(prm.coarse, fused, 0)  # Eq. 1 before the sigmoid
        attention = torch.sigmoid(conv(prm.attention, torch.sigmoid(coarse), 1))  # Eq. 2
        refined = conv(prm.final, conv(prm.refine, fused * attention, 1), 0)  # Eqs. 3-4 before the sigmoid
        with torch.no_grad():
            got_coarse, got_refined = prm(fused)
        torch.testing.assert_close(got_coarse, coarse)
        torch.testing.assert_close(got_refined, refined)
        self.assertEqual(prm.attention.conv.in_channels, 1)
        self.assertEqual(prm.attention.conv.out_channels, 1)


class TestBReMSNet(unittest.TestCase):
    def test_five_supervised_outputs_in_training_one_tensor_in_eval(self):
        torch.manual_seed(0)
        net = BReMSNet(**SMALL)
        x = torch.randn(2, 1, 64, 96)
        outputs = net.train()(x)
        self.assertEqual(len(outputs), 5)
        self.assertEqual(net.head_names, ["refined", "coarse", "side_1_4", "side_1_8", "side_1_16"])
        for output in outputs:
            self.assertEqual(tuple(output.shape), (2, 1, 64, 96))
        self.assertFalse(torch.allclose(outputs[0], outputs[1]))  # P_f and P_c are distinct heads
        with torch.no_grad():
            final = net.eval()(x)
        self.assertIsInstance(final, torch.Tensor)
        self.assertEqual(tuple(final.shape), (2, 1, 64, 96))

    def test_refined_output_is_prm_on_the_fused_features(self):
        torch.manual_seed(0)
        net = BReMSNet(**SMALL).eval()
        captured = {}
        net.fusion.register_forward_hook(lambda module, args, output: captured.setdefault("fused", output))
        x = torch.randn(1, 1, 64, 64)
        with torch.no_grad():
            final = net(x)
            _, refined = net.refinement(captured["fused"])
        torch.testing.assert_close(final, F.interpolate(refined, size=(64, 64), mode="bilinear", align_corners=False))

    @parameterized.expand([[name, kwargs] for name, kwargs in BREMS_NET_VARIANTS.items()])
    def test_ablation_variants_build_only_their_modules(self, name, kwargs):
        net = BReMSNet(**SMALL, **kwargs)
        modules = list(net.modules())
        self.assertEqual(any(isinstance(m, MultiScaleHybridDilated) for m in modules), kwargs["mhd"], name)
        self.assertEqual(sum(isinstance(m, BoundaryFeatureAuxiliary) for m in modules), 3 if kwargs["bfa"] else 0, name)
        self.assertEqual(any(isinstance(m, PredictionGuidedRefinement) for m in modules), kwargs["prm"], name)
        self.assertEqual(len(net.train()(torch.zeros(2, 1, 32, 32))), 5 if kwargs["prm"] else 4)

    @parameterized.expand(COUNT_CASES)
    def test_parameter_count(self, kwargs, expected):
        self.assertEqual(count(BReMSNet(**kwargs)), expected)

    def test_encoder_is_torchvision_resnet50(self):
        net = BReMSNet(in_channels=3)
        self.assertEqual(count(net.encoder), 23_508_032)  # torchvision resnet50 without its classifier

    def test_built_by_name(self):
        self.assertIsInstance(build_network("brems_net", in_channels=1, out_channels=1, **SMALL), BReMSNet)

    def test_torchscript_round_trip(self):
        torch.manual_seed(0)
        net = BReMSNet(**SMALL).eval()
        x = torch.randn(1, 1, 64, 64)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "brems.ts")
            torch.jit.save(torch.jit.script(net), path)
            loaded = torch.jit.load(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))

    def test_indivisible_input_is_refused_with_its_size(self):
        with self.assertRaisesRegex(ValueError, r"\[40, 64\].*divisible by 32"):
            BReMSNet(**SMALL).eval()(torch.zeros(1, 1, 40, 64))

    def test_checkpoint_of_another_variant_names_the_keys(self):
        full = BReMSNet(**SMALL)
        plain = BReMSNet(**SMALL, **BREMS_NET_VARIANTS["resnet"])
        with self.assertRaisesRegex(ValueError, r"variant \{'mhd': False.*missing keys refinement\.conv\.\* \(2\); unexpected keys .*mhd\.0\.\*") as caught:
            plain.load_state_dict(full.state_dict())
        self.assertIn("refinement.coarse", str(caught.exception))
        plain.load_state_dict(BReMSNet(**SMALL, **BREMS_NET_VARIANTS["resnet"]).state_dict())

    @parameterized.expand(
        [
            [{"spatial_dims": 3}, "spatial_dims"],
            [{"decoder_channels": (8, 8, 8)}, "decoder_channels"],
            [{"decoder_channels": (8, 8, 6, 8)}, "decoder_channels"],
            [{"fusion_channels": 0}, "fusion_channels"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            BReMSNet(**kwargs)


class TestResNet50Weights(unittest.TestCase):
    def test_local_torchvision_file_loads_with_grey_stem(self):
        torch.manual_seed(0)
        source = BReMSNet(in_channels=3, **SMALL).encoder.state_dict()
        source["fc.weight"], source["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "resnet50-0676ba61.pth")
            torch.save(source, path)
            net = BReMSNet(in_channels=1, pretrained_weights=path, **SMALL)
            loaded = net.encoder.state_dict()
            torch.testing.assert_close(loaded["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
            torch.testing.assert_close(loaded["layer4.2.conv3.weight"], source["layer4.2.conv3.weight"])
            del source["layer3.0.conv1.weight"]
            torch.save(source, path)
            with self.assertRaisesRegex(ValueError, "resnet50-0676ba61.pth.*missing keys layer3.0.conv1.weight"):
                load_torchvision_resnet50_weights(net.encoder, path)

    def test_missing_file(self):
        with self.assertRaisesRegex(FileNotFoundError, "nowhere.pth"):
            BReMSNet(pretrained_weights="/nonexistent/nowhere.pth", **SMALL)


if __name__ == "__main__":
    unittest.main()
