"""YOLOv3 loss: best-anchor assignment, terms computed by hand, ignore rule, gradients, training on one image."""

from __future__ import annotations

import math
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import COCO_ANCHORS, YOLOv3, YOLOv3Loss, assign_targets, decode_boxes

torch.set_num_threads(1)

# two near-identical small anchors make the ignore rule observable on hand-made heads
CLOSE_ANCHORS = ((10, 10), (11, 11), (30, 30), (40, 40), (50, 50), (60, 60), (100, 100), (110, 110), (120, 120))
GRIDS_64x96 = [(8, 12), (4, 6), (2, 3)]
LOG2 = math.log(2.0)


def zero_heads(batch: int = 1, classes: int = 1, requires_grad: bool = False) -> list[torch.Tensor]:
    return [torch.zeros(batch, 3, h, w, 5 + classes, requires_grad=requires_grad) for h, w in GRIDS_64x96]


class TestAssignTargets(unittest.TestCase):
    def test_best_anchor_picks_head_and_cell(self):
        anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float32)
        boxes = torch.tensor(
            [
                [14.0, 20.0, 26.0, 34.0],  # 12 x 14 -> anchor 0 (10 x 13), stride 8, centre (20, 27)
                [0.0, 0.0, 120.0, 100.0],  # 120 x 100 -> anchor 6 (116 x 90), stride 32, centre (60, 50)
                [30.0, 0.0, 90.0, 44.0],  # 60 x 44 -> anchor 4 (62 x 45), stride 16, centre (60, 22)
                [-20.0, 50.0, 6.0, 70.0],  # centre outside the image on the left: clamped to column 0
            ]
        )
        self.assertEqual(
            assign_targets(boxes, anchors, GRIDS_64x96),
            [(0, 0, 3, 2), (2, 0, 1, 1), (1, 1, 1, 3), (0, 2, 7, 0)],
        )


class TestYOLOv3Loss(unittest.TestCase):
    def test_terms_by_hand_on_zero_logits(self):
        # zero logits decode every prediction to its anchor, centred in its cell; the ground truth is exactly
        # anchor 0 in cell (row 2, col 2) of the stride-8 head: centre (20, 20), 10 x 10
        loss = YOLOv3Loss(anchors=CLOSE_ANCHORS)
        target = [torch.tensor([[15.0, 15.0, 25.0, 25.0]])]
        terms = loss.components(zero_heads(), target)
        scale = 2.0 - 100.0 / (64 * 96)
        torch.testing.assert_close(terms["box"], torch.tensor(2 * LOG2 * scale))  # BCE(0, 0.5) per offset, log 1 = 0
        torch.testing.assert_close(terms["class"], torch.tensor(LOG2))
        # every prediction costs log 2; anchor 1 at the same cell (IoU 100/121 >= 0.5) is ignored
        predictions = 3 * sum(h * w for h, w in GRIDS_64x96)
        torch.testing.assert_close(terms["objectness"], torch.tensor((predictions - 1) * LOG2))
        strict = YOLOv3Loss(anchors=CLOSE_ANCHORS, ignore_threshold=0.9).components(zero_heads(), target)
        torch.testing.assert_close(strict["objectness"], torch.tensor(predictions * LOG2))

    def test_weights_and_batch_normalisation(self):
        target = [torch.tensor([[15.0, 15.0, 25.0, 25.0, 0.0]]), torch.zeros(0, 5)]
        terms = YOLOv3Loss(anchors=CLOSE_ANCHORS).components(zero_heads(batch=2), target)
        single = YOLOv3Loss(anchors=CLOSE_ANCHORS).components(zero_heads(), target[:1])
        predictions = 3 * sum(h * w for h, w in GRIDS_64x96)
        # the image without lesion adds only background objectness; everything is divided by the batch size
        torch.testing.assert_close(terms["box"], single["box"] / 2)
        torch.testing.assert_close(terms["objectness"], (single["objectness"] + predictions * LOG2) / 2)
        weighted = YOLOv3Loss(anchors=CLOSE_ANCHORS, box_weight=2.0, objectness_weight=0.5, class_weight=0.0)
        expected = 2.0 * terms["box"] + 0.5 * terms["objectness"]
        torch.testing.assert_close(weighted(zero_heads(batch=2), target), expected)

    def test_box_and_class_gradients_only_at_the_assigned_anchor(self):
        heads = zero_heads(classes=2, requires_grad=True)
        target = [torch.tensor([[15.0, 15.0, 25.0, 25.0, 1.0]])]
        terms = YOLOv3Loss(anchors=CLOSE_ANCHORS, num_classes=2).components(heads, target)
        (terms["box"] + terms["class"]).backward()
        nonzero = heads[0].grad.abs().sum(dim=-1).nonzero().tolist()
        self.assertEqual(nonzero, [[0, 0, 2, 2]])
        self.assertIsNone(heads[1].grad)  # other heads are not even in the graph of these terms
        # class 1 is the target: its logit is pushed up, class 0 down
        grad = heads[0].grad[0, 0, 2, 2]
        self.assertLess(grad[6].item(), 0.0)
        self.assertGreater(grad[5].item(), 0.0)
        self.assertEqual(grad[4].item(), 0.0)  # objectness is not part of these two terms

    def test_training_finds_the_box(self):
        torch.manual_seed(0)
        net = YOLOv3(in_channels=1, base_channels=4)
        loss = YOLOv3Loss()
        x = torch.rand(2, 1, 64, 96)
        targets = [torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.zeros(0, 4)]
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
        first = None
        for _ in range(60):
            optimiser.zero_grad()
            value = loss(net.train()(x), targets)
            value.backward()
            optimiser.step()
            first = value.item() if first is None else first
        self.assertLess(value.item(), first / 5)
        with torch.no_grad():
            found = decode_boxes(net.eval()(x), conf_threshold=0.5, image_size=(64, 96))
        self.assertEqual(found[0].shape[0], 1)
        torch.testing.assert_close(found[0][0, :4], targets[0][0], atol=4.0, rtol=0.0)
        self.assertEqual(found[1].shape[0], 0)

    @parameterized.expand(
        [
            ["inverted box", [torch.tensor([[20.0, 10.0, 10.0, 30.0]])], r"targets\[0\] box 0 .* empty or inverted"],
            ["bad class", [torch.tensor([[0.0, 0.0, 10.0, 10.0, 1.0]])], r"targets\[0\] has class indices"],
            ["bad layout", [torch.zeros(2, 3)], r"targets\[0\] must be \(M, 4\)"],
            ["batch size", [torch.zeros(0, 4), torch.zeros(0, 4)], "2 target tensors for a batch of 1"],
        ]
    )
    def test_bad_targets_are_named(self, name, targets, message):
        with self.assertRaisesRegex(ValueError, message):
            YOLOv3Loss()(zero_heads(), targets)

    def test_bad_heads_and_arguments(self):
        with self.assertRaisesRegex(ValueError, "expected 3 heads"):
            YOLOv3Loss()(zero_heads()[:2], [torch.zeros(0, 4)])
        with self.assertRaisesRegex(ValueError, r"head 0 must be \(B, 3, h, w, 7\)"):
            YOLOv3Loss(num_classes=2)(zero_heads(), [torch.zeros(0, 4)])
        with self.assertRaisesRegex(ValueError, "ignore_threshold"):
            YOLOv3Loss(ignore_threshold=1.5)
        with self.assertRaisesRegex(ValueError, "class_weight"):
            YOLOv3Loss(class_weight=-1.0)


if __name__ == "__main__":
    unittest.main()
