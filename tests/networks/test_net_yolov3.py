"""YOLOv3 / Darknet-53 (paper 002's detector): cfg layout, parameter counts, non-square shapes, decoding."""

from __future__ import annotations

import math
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import COCO_ANCHORS, YOLOv3, build_network, decode_boxes, decode_head

torch.set_num_threads(1)


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count(net: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


class TestYOLOv3FullWidth(unittest.TestCase):
    """The cfg network itself (61.5 M parameters), built once."""

    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.net = YOLOv3(in_channels=3, num_classes=1)

    def test_parameter_counts(self):
        self.assertEqual(parameter_count(self.net), 61_523_734)  # notes §3, nc=1
        self.assertEqual(parameter_count(self.net.backbone), 40_584_928)  # cfg layers 0-74
        self.assertEqual(parameter_count(YOLOv3(num_classes=80)), 61_949_149)  # the published COCO figure

    def test_cfg_layout(self):
        # 75 convolutional layers, 72 of them conv + BN + LeakyReLU(0.1), 3 linear detection convs with bias
        self.assertEqual(count(self.net, torch.nn.Conv2d), 75)
        self.assertEqual(count(self.net, torch.nn.BatchNorm2d), 72)
        slopes = {m.negative_slope for m in self.net.modules() if isinstance(m, torch.nn.LeakyReLU)}
        self.assertEqual(slopes, {0.1})
        self.assertEqual(count(self.net, torch.nn.LeakyReLU), 72)
        self.assertEqual([len(stage) - 1 for stage in self.net.backbone.stages], [1, 2, 8, 8, 4])
        for head in (self.net.head8, self.net.head16, self.net.head32):
            self.assertEqual(head.detect.out_channels, 18)
            self.assertIsNotNone(head.detect.bias)

    def test_non_square_shapes(self):
        x = torch.randn(1, 3, 64, 96)
        heads = self.net.train()(x)
        self.assertEqual([tuple(h.shape) for h in heads], [(1, 3, 8, 12, 6), (1, 3, 4, 6, 6), (1, 3, 2, 3, 6)])
        with torch.no_grad():
            decoded = self.net.eval()(x)
        self.assertEqual(tuple(decoded.shape), (1, 3 * (96 + 24 + 6), 6))
        self.assertTrue(((decoded[..., 4:] >= 0) & (decoded[..., 4:] <= 1)).all())


class TestYOLOv3(unittest.TestCase):
    @parameterized.expand([[(1, 1, 32, 64)], [(2, 1, 96, 32)], [(1, 1, 160, 320)]])
    def test_sides_multiple_of_32(self, shape):
        net = YOLOv3(in_channels=1, base_channels=4).eval()
        with torch.no_grad():
            out = net(torch.zeros(shape))
        h, w = shape[2], shape[3]
        cells = sum((h // s) * (w // s) for s in (8, 16, 32))
        self.assertEqual(tuple(out.shape), (shape[0], 3 * cells, 6))

    def test_indivisible_input_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"\[64, 80\].*divisible by 32"):
            YOLOv3(in_channels=1, base_channels=4)(torch.zeros(1, 1, 64, 80))

    def test_objectness_prior(self):
        net = YOLOv3(in_channels=1, base_channels=4, prior_probability=0.01).eval()
        bias = net.head8.detect.bias.view(3, 6)
        torch.testing.assert_close(torch.sigmoid(bias[:, 4:]), torch.full((3, 2), 0.01))
        torch.testing.assert_close(bias[:, :4], torch.zeros(3, 4))

    def test_registered_in_factory(self):
        net = build_network("yolov3", in_channels=1, out_channels=1, base_channels=4)
        self.assertIsInstance(net, YOLOv3)
        with self.assertRaisesRegex(ValueError, "out_channels"):
            build_network("yolov3", out_channels=2, base_channels=4)

    def test_checkpoint_with_other_anchors_or_classes_refuses_to_load(self):
        state = YOLOv3(in_channels=1, base_channels=4).state_dict()
        YOLOv3(in_channels=1, base_channels=4).load_state_dict(state)  # same configuration loads
        other_anchors = [(w + 1, h + 1) for w, h in COCO_ANCHORS]
        with self.assertRaisesRegex(ValueError, "anchors .* differ from the configured anchors"):
            YOLOv3(in_channels=1, base_channels=4, anchors=other_anchors).load_state_dict(state)
        with self.assertRaisesRegex(ValueError, "checkpoint has 1 classes.*num_classes=1"):
            YOLOv3(in_channels=1, base_channels=4, num_classes=2).load_state_dict(state)

    @parameterized.expand(
        [
            [{"spatial_dims": 3}, "spatial_dims"],
            [{"num_classes": 0}, "num_classes"],
            [{"base_channels": 5}, "base_channels"],
            [{"prior_probability": 1.0}, "prior_probability"],
            [{"anchors": COCO_ANCHORS[:8]}, "nine positive"],
            [{"anchors": COCO_ANCHORS[::-1]}, "sorted by area"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            YOLOv3(**kwargs)


class TestDecoding(unittest.TestCase):
    def test_decode_head_geometry(self):
        head = torch.zeros(1, 3, 2, 3, 6)  # 2 x 3 grid at stride 16
        head[0, 1, 1, 2, 0:4] = torch.tensor([math.inf, -math.inf, math.log(2.0), 0.0])  # offsets 1 and 0, width x2
        anchors = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
        decoded = decode_head(head, anchors, stride=16)
        self.assertEqual(tuple(decoded.shape), (1, 3, 2, 3, 6))
        # zero logits: centre of the cell, anchor size, probabilities 0.5
        torch.testing.assert_close(decoded[0, 0, 0, 1], torch.tensor([24 - 5, 8 - 10, 24 + 5, 8 + 10, 0.5, 0.5]))
        # cell (row 1, col 2): centre x = (1 + 2) * 16 = 48, y = (0 + 1) * 16 = 16; width 2 * 30, height 40
        torch.testing.assert_close(decoded[0, 1, 1, 2, :4], torch.tensor([48 - 30, 16 - 20, 48 + 30, 16 + 20.0]))

    def test_decode_boxes_thresholds_nms_and_clipping(self):
        predictions = torch.tensor(
            [
                [
                    [10.0, 10.0, 50.0, 50.0, 0.9, 1.0],  # kept
                    [12.0, 12.0, 52.0, 52.0, 0.8, 1.0],  # IoU 0.82 with the first: suppressed
                    [60.0, -8.0, 100.0, 30.0, 0.9, 0.5],  # score 0.45, clipped to the 96 x 64 image
                    [0.0, 0.0, 20.0, 20.0, 0.5, 0.4],  # score 0.2 < 0.25: dropped
                ],
                [[0.0, 0.0, 20.0, 20.0, 0.1, 1.0]] + [[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]] * 3,
            ]
        )
        boxes = decode_boxes(predictions, conf_threshold=0.25, nms_threshold=0.45, image_size=(64, 96))
        torch.testing.assert_close(
            boxes[0], torch.tensor([[10.0, 10.0, 50.0, 50.0, 0.9], [60.0, 0.0, 96.0, 30.0, 0.45]])
        )
        self.assertEqual(tuple(boxes[1].shape), (0, 5))  # no detection: an empty tensor, not an error
        kept_both = decode_boxes(predictions[:1], conf_threshold=0.25, nms_threshold=0.9)[0]
        self.assertEqual(kept_both.shape[0], 3)
        self.assertEqual(decode_boxes(predictions[:1], max_detections=1)[0].shape[0], 1)

    def test_decode_boxes_rejects_bad_arguments(self):
        with self.assertRaisesRegex(ValueError, r"\(B, N, 5 \+ num_classes\)"):
            decode_boxes(torch.zeros(4, 6))
        with self.assertRaisesRegex(ValueError, "nms_threshold"):
            decode_boxes(torch.zeros(1, 4, 6), nms_threshold=1.5)


if __name__ == "__main__":
    unittest.main()
