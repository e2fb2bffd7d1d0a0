"""Name-based network factory: bundles pick a network by name and extend the registry with their own."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .brems_net import BReMSNet
from .connected_unets import ConnectedUNets
from .hybrid_attention import HybridAttentionNet
from .linknet import LinkNet
from .monai_baselines import monai_attention_unet, monai_basic_unet
from .pspnet import PSPNet
from .unet import UNet
from .unetplusplus import UNetPlusPlus
from .v19unetplusplus import V19UNetPlusPlus
from .yolov3 import YOLOv3

__all__ = ["NETWORK_REGISTRY", "register_network", "build_network"]

#: Network name -> constructor taking ``(spatial_dims, in_channels, out_channels, **kwargs)`` by keyword.
NETWORK_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unetplusplus": UNetPlusPlus,
    "connected_unets": ConnectedUNets,
    "unet": UNet,
    "pspnet": PSPNet,
    "linknet": LinkNet,
    "brems_net": BReMSNet,
    "hybrid_attention": HybridAttentionNet,
    "basic_unet": monai_basic_unet,
    "attention_unet": monai_attention_unet,
    "v19unetplusplus": V19UNetPlusPlus,
    "yolov3": YOLOv3,
}


def register_network(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add ``constructor`` to :py:data:`NETWORK_REGISTRY` under ``name``.

    Raises:
        ValueError: when ``name`` is empty or already registered (a bundle must not replace another's network).
        TypeError: when ``constructor`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"network name must be a non-empty string, got {name!r}.")
    if name in NETWORK_REGISTRY:
        raise ValueError(f"network name {name!r} is already registered to {NETWORK_REGISTRY[name]!r}.")
    if not callable(constructor):
        raise TypeError(f"constructor for network {name!r} must be callable, got {type(constructor).__name__}.")
    NETWORK_REGISTRY[name] = constructor


def build_network(
    name: str, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, **kwargs
) -> nn.Module:
    """Build the registered network ``name``; extra keyword arguments go to its constructor.

    Examples::

        >>> build_network("unetplusplus", deep_supervision=True)
        >>> build_network("pspnet", in_channels=1, pretrained_weights="/data/weights/resnet34-b627a593.pth")

    Raises:
        ValueError: when ``name`` is not registered; the message lists the known names.
    """
    if name not in NETWORK_REGISTRY:
        known = ", ".join(sorted(NETWORK_REGISTRY))
        raise ValueError(f"unknown network {name!r}; known networks: {known}.")
    return NETWORK_REGISTRY[name](
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
    )
