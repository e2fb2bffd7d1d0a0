"""Name-based network factory and registry."""

from __future__ import annotations

import re
import unittest

import torch
from parameterized import parameterized

from breastseg.networks import NETWORK_REGISTRY, LinkNet, PSPNet, UNet, UNetPlusPlus, build_network, register_network

torch.set_num_threads(1)


class TestNetworkFactory(unittest.TestCase):
    @parameterized.expand(
        [
            ["unetplusplus", UNetPlusPlus, {"features": (4, 8, 16, 32, 64)}],
            ["unet", UNet, {}],
            ["pspnet", PSPNet, {}],
            ["linknet", LinkNet, {}],
        ]
    )
    def test_builds_by_name(self, name, network, kwargs):
        net = build_network(name, spatial_dims=2, in_channels=1, out_channels=2, **kwargs)
        self.assertIsInstance(net, network)
        with torch.no_grad():
            self.assertEqual(tuple(net.eval()(torch.zeros(1, 1, 32, 32)).shape), (1, 2, 32, 32))

    def test_keyword_arguments_reach_the_constructor(self):
        net = build_network("unetplusplus", features=(4, 8, 16), deep_supervision=True)
        self.assertEqual(len(net.heads), 2)
        with self.assertRaises(TypeError):
            build_network("unet", deep_supervision=True)

    def test_unknown_name_lists_known_names(self):
        # every bundle registers its own networks: the message lists whatever is registered, sorted
        self.assertTrue({"linknet", "pspnet", "unet", "unetplusplus"} <= set(NETWORK_REGISTRY))
        message = r"unknown network 'unet\+\+'; known networks: " + re.escape(", ".join(sorted(NETWORK_REGISTRY)))
        with self.assertRaisesRegex(ValueError, message):
            build_network("unet++")

    def test_register_extends_and_protects_the_registry(self):
        name = "test-factory-tiny-unetplusplus"
        self.addCleanup(NETWORK_REGISTRY.pop, name, None)
        register_network(name, lambda **kw: UNetPlusPlus(features=(4, 8), **kw))
        self.assertIsInstance(build_network(name), UNetPlusPlus)
        with self.assertRaisesRegex(ValueError, "already registered"):
            register_network(name, UNet)
        with self.assertRaisesRegex(ValueError, "already registered"):
            register_network("unet", UNet)
        with self.assertRaisesRegex(ValueError, "non-empty"):
            register_network("", UNet)
        with self.assertRaises(TypeError):
            register_network("not-callable", 3)
        self.assertNotIn("not-callable", NETWORK_REGISTRY)


if __name__ == "__main__":
    unittest.main()
