"""Networks and losses of the breastseg bundles (paper 001: UNet++ and its U-Net / PSPNet / LinkNet baselines)."""

from .factory import NETWORK_REGISTRY, build_network, register_network
from .linknet import LinkNet, Linknet
from .losses import WEIGHT_MODES, DeepSupervisionWrapper, dice_loss
from .pspnet import PSPNet, PspNet
from .resnet_encoder import RESNET34_STAGE_CHANNELS, ResNet34Encoder, load_torchvision_resnet34_weights
from .unet import UNet, Unet
from .unetplusplus import NestedUNet, UNetPlusPlus, UnetPlusPlus

__all__ = [
    "NETWORK_REGISTRY",
    "build_network",
    "register_network",
    "UNetPlusPlus",
    "UnetPlusPlus",
    "NestedUNet",
    "UNet",
    "Unet",
    "PSPNet",
    "PspNet",
    "LinkNet",
    "Linknet",
    "ResNet34Encoder",
    "RESNET34_STAGE_CHANNELS",
    "load_torchvision_resnet34_weights",
    "DeepSupervisionWrapper",
    "dice_loss",
    "WEIGHT_MODES",
]
