"""Paper 001 Dice loss and the deep-supervision wrapper (one tensor or a list of heads)."""

from __future__ import annotations

import unittest

import torch
from monai.losses import DiceLoss
from parameterized import parameterized

from breastseg.networks import DeepSupervisionWrapper, dice_loss

torch.set_num_threads(1)


def blob_target(size: int = 32) -> torch.Tensor:
    target = torch.zeros(2, 1, size, size)
    target[:, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    return target


class TestDiceLoss(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.target = blob_target()
        self.logits = torch.randn(2, 1, 32, 32)

    def test_tensor_input_is_sigmoid_dice(self):
        expected = DiceLoss(sigmoid=True)(self.logits, self.target)
        torch.testing.assert_close(dice_loss()(self.logits, self.target), expected)

    def test_perfect_logits_give_near_zero_loss(self):
        perfect = (self.target * 2 - 1) * 50.0
        self.assertLess(dice_loss()(perfect, self.target).item(), 1e-4)

    @parameterized.expand(
        [
            ["same", None, [1.0, 1.0, 1.0, 1.0]],
            ["exp", None, [1.0, 0.5, 0.25, 0.125]],
            ["two", None, [1.0, 0.5, 0.5, 0.5]],
            ["same", [4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]],
        ]
    )
    def test_list_is_weighted_sum_main_head_first(self, weight_mode, weights, expected_weights):
        heads = [torch.randn(2, 1, 32, 32) for _ in range(4)]
        single = DiceLoss(sigmoid=True)
        expected = sum(w * single(h, self.target) for w, h in zip(expected_weights, heads))
        torch.testing.assert_close(dice_loss(weight_mode=weight_mode, weights=weights)(heads, self.target), expected)

    def test_smaller_head_gets_resized_target(self):
        small = torch.randn(2, 1, 16, 16)
        expected = DiceLoss(sigmoid=True)(small, self.target[:, :, ::2, ::2])
        torch.testing.assert_close(dice_loss()([small], self.target), expected)

    def test_gradients_reach_every_head(self):
        heads = [torch.randn(2, 1, 32, 32, requires_grad=True) for _ in range(3)]
        dice_loss()(heads, self.target).backward()
        for head in heads:
            self.assertGreater(head.grad.abs().sum().item(), 0.0)

    def test_nan_is_not_masked(self):
        bad = self.logits.clone()
        bad[0, 0, 0, 0] = float("nan")
        self.assertTrue(torch.isnan(dice_loss()(bad, self.target)))
        self.assertTrue(torch.isnan(dice_loss()([self.logits, bad], self.target)))

    def test_weight_count_must_match_heads(self):
        with self.assertRaisesRegex(ValueError, "2 loss weights were given for 3 deep-supervision heads"):
            dice_loss(weights=[1.0, 0.5])([self.logits] * 3, self.target)

    @parameterized.expand(
        [
            [{"weight_mode": "linear"}, "weight_mode"],
            [{"weights": [1.0, -1.0]}, "weights"],
            [{"weights": []}, "weights"],
        ]
    )
    def test_invalid_arguments(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            DeepSupervisionWrapper(DiceLoss(sigmoid=True), **kwargs)

    def test_empty_or_missing_input(self):
        with self.assertRaisesRegex(ValueError, "empty list"):
            dice_loss()([], self.target)
        with self.assertRaisesRegex(ValueError, "None"):
            dice_loss()(None, self.target)


if __name__ == "__main__":
    unittest.main()
