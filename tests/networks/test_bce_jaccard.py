"""Paper 003's BCE + soft Jaccard loss against eq. 16-18 on small tensors."""

from __future__ import annotations

import math
import unittest

import torch

from breastseg.networks import BCEJaccardLoss, bce_jaccard_loss

torch.set_num_threads(1)


class TestBCEJaccardLoss(unittest.TestCase):
    def test_hand_computed_value(self):
        logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
        target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-3))]
        g = [0.0, 1.0, 0.0, 1.0]
        bce = -sum(gi * math.log(pi) + (1 - gi) * math.log(1 - pi) for pi, gi in zip(p, g)) / 4  # eq. 16, mean
        intersection = sum(pi * gi for pi, gi in zip(p, g))
        jaccard = 1 - intersection / (sum(p) + sum(g) - intersection)  # eq. 17
        loss = BCEJaccardLoss(smooth=0.0)(logits, target)
        self.assertAlmostEqual(float(loss), bce + jaccard, places=5)  # eq. 18

    def test_per_image_jaccard_averaged_and_batch_option(self):
        torch.manual_seed(0)
        logits, target = torch.randn(3, 1, 4, 4), (torch.rand(3, 1, 4, 4) > 0.5).float()
        per_image = torch.stack([BCEJaccardLoss(bce_weight=0.0, smooth=0.0)(logits[i : i + 1], target[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(BCEJaccardLoss(bce_weight=0.0, smooth=0.0)(logits, target), per_image.mean())
        p = torch.sigmoid(logits)
        whole = 1 - (p * target).sum() / (p + target - p * target).sum()
        torch.testing.assert_close(BCEJaccardLoss(bce_weight=0.0, batch=True, smooth=0.0)(logits, target), whole)

    def test_empty_mask_predicted_empty_is_near_zero_not_nan(self):
        loss = bce_jaccard_loss()(torch.full((1, 1, 4, 4), -30.0), torch.zeros(1, 1, 4, 4))
        self.assertTrue(math.isfinite(float(loss)))
        self.assertLess(float(loss), 1e-4)

    def test_gradient_flows_and_bad_arguments_raise(self):
        logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
        bce_jaccard_loss()(logits, torch.ones(1, 1, 4, 4)).backward()
        self.assertTrue((logits.grad < 0).all())
        with self.assertRaisesRegex(ValueError, "shape"):
            bce_jaccard_loss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
        with self.assertRaisesRegex(ValueError, "weights"):
            BCEJaccardLoss(bce_weight=0.0, jaccard_weight=0.0)


if __name__ == "__main__":
    unittest.main()
