"""A few real Adam + Dice steps on a synthetic blob batch must lower the loss of every network."""

from __future__ import annotations

import unittest

import torch
from parameterized import parameterized

from breastseg.networks import build_network, dice_loss

torch.set_num_threads(1)


def blob_batch(batch: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images with one bright disc of random centre and radius on noise; the disc is the label."""
    generator = torch.Generator().manual_seed(seed)
    grid_y, grid_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        cy, cx = torch.randint(8, size - 8, (2,), generator=generator).tolist()
        radius = torch.randint(4, 8, (1,), generator=generator).item()
        labels[b, 0] = ((grid_y - cy) ** 2 + (grid_x - cx) ** 2 <= radius**2).float()
    images = labels * 0.6 + 0.2 + 0.1 * torch.randn(batch, 1, size, size, generator=generator)
    return images, labels


CASES = [
    ["unetplusplus", {"features": (8, 16, 32, 64, 128), "dropout": 0.0, "deep_supervision": True}, 8],
    ["unet", {}, 8],
    ["pspnet", {}, 8],
    ["linknet", {}, 8],
]


class TestNetworkTraining(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_training_lowers_the_loss(self, name, kwargs, steps):
        torch.manual_seed(0)
        images, labels = blob_batch()
        net = build_network(name, spatial_dims=2, in_channels=1, out_channels=1, **kwargs).train()
        loss_fn = dice_loss()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)  # the paper's optimiser and learning rate
        # training-mode losses: after a handful of steps the BN running statistics used by eval() are not settled
        losses = []
        for _ in range(steps):
            optimizer.zero_grad()
            outputs = net(images)
            self.assertEqual(isinstance(outputs, list), bool(kwargs.get("deep_supervision")))
            loss = loss_fn(outputs, labels)
            self.assertTrue(torch.isfinite(loss))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        self.assertLess(losses[-1], 0.97 * losses[0], f"{name}: Dice loss per step {losses}")

if __name__ == "__main__":
    unittest.main()
