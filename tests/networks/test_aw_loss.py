"""AW-loss (paper 000, Eqs. 12-15) against a direct computation; detached weights; logged terms."""

from __future__ import annotations

import unittest

import torch
from ignite.engine import Engine

from breastseg.networks import AWLoss
from breastseg.workflows.engine.loss_terms import LossTermsAverage

torch.set_num_threads(1)


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Eqs. 12-13 written out: p_true = p for lesion pixels, 1 - p otherwise; mean over pixels."""
    p = torch.sigmoid(logits.double())
    p_true = torch.where(target > 0.5, p, 1 - p)
    return (-((1 - p_true) ** gamma) * torch.log(p_true)).mean()


class TestAWLoss(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.target = (torch.rand(2, 1, 8, 8) > 0.7).float()
        self.heads = [torch.randn(2, 1, 8, 8, requires_grad=True) * s for s in (0.5, 1.0, 2.0, 3.0, 4.0)]

    def test_matches_equations_14_and_15(self):
        loss = AWLoss(gamma=2.0)
        value = loss(self.heads, self.target)
        focal_losses = torch.stack([focal(h, self.target) for h in self.heads])
        weights = focal_losses / focal_losses.sum()
        torch.testing.assert_close(value.double(), (weights * focal_losses).sum(), rtol=1e-5, atol=1e-6)
        # with the weights of Eq. 14 plugged in, the loss is sum FL^2 / sum FL
        torch.testing.assert_close(value.double(), (focal_losses**2).sum() / focal_losses.sum(), rtol=1e-5, atol=1e-6)

    def test_weights_are_detached(self):
        heads = [h.detach().requires_grad_(True) for h in self.heads]
        AWLoss()(heads, self.target).backward()
        focal_losses = [focal(h, self.target) for h in heads]
        total = sum(float(f) for f in focal_losses)
        for head, fl in zip(heads, focal_losses):
            (expected,) = torch.autograd.grad(fl * (float(fl) / total), head)
            torch.testing.assert_close(head.grad.double(), expected.double(), rtol=1e-4, atol=1e-8)

    def test_terms_name_every_head(self):
        names = ["refined", "coarse", "side_1_4", "side_1_8", "side_1_16"]
        loss = AWLoss(head_names=names)
        loss(self.heads, self.target)
        self.assertEqual(set(loss.terms), {f"aw_{kind}_{n}" for kind in ("weight", "focal") for n in names})
        self.assertAlmostEqual(sum(loss.terms[f"aw_weight_{n}"] for n in names), 1.0, places=6)
        # the head with the largest focal loss gets the largest weight
        largest = max(names, key=lambda n: loss.terms[f"aw_focal_{n}"])
        self.assertEqual(largest, max(names, key=lambda n: loss.terms[f"aw_weight_{n}"]))

    def test_single_tensor_and_low_resolution_head(self):
        single = AWLoss()(self.heads[0], self.target)
        torch.testing.assert_close(single.double(), focal(self.heads[0], self.target), rtol=1e-5, atol=1e-6)
        small = torch.randn(2, 1, 4, 4)
        expected = focal(small, self.target[..., ::2, ::2])  # nearest down-sampling of the target
        torch.testing.assert_close(AWLoss()([small], self.target).double(), expected, rtol=1e-5, atol=1e-6)

    def test_invalid_use(self):
        with self.assertRaisesRegex(ValueError, "gamma"):
            AWLoss(gamma=-1)
        with self.assertRaisesRegex(ValueError, "distinct"):
            AWLoss(head_names=["a", "a"])
        with self.assertRaisesRegex(ValueError, "2 head names.*received 5 outputs"):
            AWLoss(head_names=["a", "b"])(self.heads, self.target)
        with self.assertRaisesRegex(ValueError, "empty"):
            AWLoss()([], self.target)


class TestLossTermsAverage(unittest.TestCase):
    def test_epoch_means_reach_engine_metrics(self):
        loss = AWLoss(head_names=["a", "b"])
        batches = [[torch.randn(1, 1, 4, 4) for _ in range(2)] for _ in range(3)]
        target = torch.ones(1, 1, 4, 4)
        seen = []

        def step(engine, batch):
            loss(batch, target)
            seen.append(dict(loss.terms))

        engine = Engine(step)
        handler = LossTermsAverage(loss)
        handler.attach(engine)
        handler.attach(engine)  # idempotent
        engine.run(batches, max_epochs=1)
        for key in ("aw_weight_a", "aw_focal_b"):
            expected = sum(s[key] for s in seen) / len(seen)
            self.assertAlmostEqual(engine.state.metrics[key], expected, places=6)

    def test_loss_without_terms_is_refused(self):
        with self.assertRaisesRegex(AttributeError, "MSELoss has no attribute 'terms'"):
            LossTermsAverage(torch.nn.MSELoss())


if __name__ == "__main__":
    unittest.main()
