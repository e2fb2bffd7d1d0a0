"""Loading a LOCAL torchvision ResNet-34 state dict into the baselines' encoder."""

from __future__ import annotations

import hashlib
import os
import tempfile
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import PSPNet, ResNet34Encoder, UNet, load_torchvision_resnet34_weights

torch.set_num_threads(1)


def torchvision_resnet34_state_dict(stages: int = 4, batch_counters: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's ResNet-34 key names and shapes (written out here, not derived from MONAI)."""
    generator = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def add(name: str, *shape: int) -> None:
        state[name] = torch.randn(*shape, generator=generator)

    def add_bn(prefix: str, channels: int) -> None:
        add(f"{prefix}.weight", channels)
        add(f"{prefix}.bias", channels)
        add(f"{prefix}.running_mean", channels)
        state[f"{prefix}.running_var"] = torch.rand(channels, generator=generator) + 0.5
        if batch_counters:
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    add("conv1.weight", 64, 3, 7, 7)
    add_bn("bn1", 64)
    in_planes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512)[:stages], (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            add(f"{prefix}.conv1.weight", planes, in_planes if block == 0 else planes, 3, 3)
            add_bn(f"{prefix}.bn1", planes)
            add(f"{prefix}.conv2.weight", planes, planes, 3, 3)
            add_bn(f"{prefix}.bn2", planes)
            if block == 0 and stage > 1:
                add(f"{prefix}.downsample.0.weight", planes, in_planes, 1, 1)
                add_bn(f"{prefix}.downsample.1", planes)
        in_planes = planes
    add("fc.weight", 1000, 512)
    add("fc.bias", 1000)
    return state


class TestTorchvisionResNet34Weights(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.full = torchvision_resnet34_state_dict()
        cls.full_path = os.path.join(cls.tmp.name, "resnet34-full.pth")
        torch.save(cls.full, cls.full_path)
        # stem + layer1 + layer2 are enough for the error cases, checked on a depth-3 encoder
        cls.shallow = torchvision_resnet34_state_dict(stages=2)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def save(self, state, name: str) -> str:
        path = os.path.join(self.tmp.name, name)
        torch.save(state, path)
        return path

    def test_three_channel_unet_gets_every_tensor(self):
        with open(self.full_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        net = UNet(in_channels=3, pretrained_weights=self.full_path)
        loaded = net.encoder.state_dict()
        for key, value in self.full.items():
            if not key.startswith("fc."):
                torch.testing.assert_close(loaded[key], value, msg=key)
        with open(self.full_path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)  # reading never modifies the file

    def test_grey_input_sums_the_colour_kernels(self):
        net = UNet(in_channels=1, pretrained_weights=self.full_path)
        torch.testing.assert_close(net.encoder.conv1.weight.data, self.full["conv1.weight"].sum(dim=1, keepdim=True))
        torch.testing.assert_close(net.encoder.layer4[2].conv2.weight.data, self.full["layer4.2.conv2.weight"])

    def test_pspnet_skips_the_stages_it_does_not_build(self):
        net = PSPNet(in_channels=1, pretrained_weights=self.full_path)
        loaded = net.encoder.layer2[0].downsample[1].running_var
        torch.testing.assert_close(loaded, self.full["layer2.0.downsample.1.running_var"])

    def test_missing_batch_counters_are_tolerated(self):
        state = {k: v for k, v in self.shallow.items() if not k.endswith("num_batches_tracked")}
        path = self.save(state, "old.pth")
        encoder = load_torchvision_resnet34_weights(ResNet34Encoder(in_channels=3, depth=3), path)
        torch.testing.assert_close(encoder.bn1.running_mean, self.shallow["bn1.running_mean"])

    def test_loaded_network_runs(self):
        net = PSPNet(in_channels=3, pretrained_weights=self.full_path).eval()
        with torch.no_grad():
            self.assertTrue(torch.isfinite(net(torch.randn(1, 3, 32, 32))).all())

    @parameterized.expand(
        [
            ["unexpected", lambda s: {**s, "layer1.0.conv3.weight": torch.zeros(1)}, r"unexpected keys: layer1\.0"],
            ["missing", lambda s: {k: v for k, v in s.items() if k != "layer2.1.bn1.bias"}, r"missing keys: layer2\.1"],
            ["shape", lambda s: {**s, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, r"\(64, 64, 1, 1\)"],
            ["prefixed", lambda s: {f"module.{k}": v for k, v in s.items()}, r"unexpected keys: module\.conv1\.weight"],
            ["not a state dict", lambda s: [1, 2, 3], "expected a state dict"],
        ]
    )
    def test_bad_files_are_named(self, name, corrupt, message):
        path = self.save(corrupt(dict(self.shallow)), f"{name.replace(' ', '_')}.pth")
        with self.assertRaisesRegex(ValueError, message) as raised:
            load_torchvision_resnet34_weights(ResNet34Encoder(in_channels=3, depth=3), path)
        self.assertIn(path, str(raised.exception))

    def test_channel_count_that_cannot_be_adapted(self):
        path = self.save(self.shallow, "rgb.pth")
        with self.assertRaisesRegex(ValueError, "conv1.weight has 3 input channels; the encoder has 2"):
            ResNet34Encoder(in_channels=2, depth=3, pretrained_weights=path)

    def test_missing_file(self):
        with self.assertRaisesRegex(FileNotFoundError, "no-such-file.pth"):
            UNet(pretrained_weights=os.path.join(self.tmp.name, "no-such-file.pth"))


if __name__ == "__main__":
    unittest.main()
