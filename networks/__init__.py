"""Networks and losses of the breastseg bundles (paper 001: UNet++ and its U-Net / PSPNet / LinkNet baselines)."""

from .aw_loss import AdaptiveWeightLoss, AWLoss
from .bce_jaccard import BCEJaccardLoss, bce_jaccard_loss
from .connected_unets import CONNECTED_UNETS_VARIANTS, ConnectedUNets, ConnectedUnets, ConvReluNormBlock, SumASPP
from .brems_net import (
    BREMS_NET_VARIANTS,
    RESNET50_STAGE_CHANNELS,
    BoundaryFeatureAuxiliary,
    BremsNet,
    BReMSNet,
    MultiScaleHybridDilated,
    PredictionGuidedRefinement,
    load_torchvision_resnet50_weights,
)
from .densenet_encoder import DENSENET121_SKIP_CHANNELS, DenseNet121Encoder, load_torchvision_densenet121_weights
from .factory import NETWORK_REGISTRY, build_network, register_network
from .hybrid_attention import (
    ABLATION_VARIANTS,
    GlobalSpatialAttention,
    HybridAttentionNet,
    HybridAttentionUNet,
    LearnedPositionEncoding,
    SpatialFeatureEnhancementBlock,
    TransformerAttentionModule,
    TransformerSelfAttention,
)
from .linknet import LinkNet, Linknet
from .losses import WEIGHT_MODES, DeepSupervisionWrapper, dice_loss
from .monai_baselines import monai_attention_unet, monai_basic_unet
from .multires import ConvBN, MultiResBlock, ResPath, ShiftBatchNorm, keras_style_parameter_count, multires_widths
from .pspnet import PSPNet, PspNet
from .resnet_encoder import RESNET34_STAGE_CHANNELS, ResNet34Encoder, load_torchvision_resnet34_weights
from .unet import UNet, Unet
from .unetplusplus import NestedUNet, UNetPlusPlus, UnetPlusPlus
from .v19unetplusplus import (
    VGG19_BLOCK_CHANNELS,
    VGG19_CONVS_PER_BLOCK,
    V19UNetPlusPlus,
    V19UnetPlusPlus,
    load_torchvision_vgg19_weights,
)
from .yolo_loss import YOLOv3Loss, YoloV3Loss, assign_targets
from .yolov3 import (
    COCO_ANCHORS,
    DARKNET53_STAGE_CHANNELS,
    DARKNET53_STAGE_UNITS,
    YOLO_STRIDES,
    Darknet53,
    YOLOv3,
    YoloV3,
    decode_boxes,
    decode_head,
    validate_anchors,
)

__all__ = [
    "ConnectedUNets",
    "ConnectedUnets",
    "CONNECTED_UNETS_VARIANTS",
    "SumASPP",
    "ConvReluNormBlock",
    "MultiResBlock",
    "ResPath",
    "ConvBN",
    "ShiftBatchNorm",
    "multires_widths",
    "keras_style_parameter_count",
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
    "BReMSNet",
    "BremsNet",
    "BREMS_NET_VARIANTS",
    "MultiScaleHybridDilated",
    "BoundaryFeatureAuxiliary",
    "PredictionGuidedRefinement",
    "RESNET50_STAGE_CHANNELS",
    "load_torchvision_resnet50_weights",
    "AWLoss",
    "AdaptiveWeightLoss",
    "HybridAttentionNet",
    "HybridAttentionUNet",
    "ABLATION_VARIANTS",
    "SpatialFeatureEnhancementBlock",
    "LearnedPositionEncoding",
    "TransformerSelfAttention",
    "GlobalSpatialAttention",
    "TransformerAttentionModule",
    "DenseNet121Encoder",
    "DENSENET121_SKIP_CHANNELS",
    "load_torchvision_densenet121_weights",
    "BCEJaccardLoss",
    "bce_jaccard_loss",
    "monai_basic_unet",
    "monai_attention_unet",
    "V19UNetPlusPlus",
    "V19UnetPlusPlus",
    "VGG19_BLOCK_CHANNELS",
    "VGG19_CONVS_PER_BLOCK",
    "load_torchvision_vgg19_weights",
    "YOLOv3",
    "YoloV3",
    "Darknet53",
    "COCO_ANCHORS",
    "YOLO_STRIDES",
    "DARKNET53_STAGE_CHANNELS",
    "DARKNET53_STAGE_UNITS",
    "decode_boxes",
    "decode_head",
    "validate_anchors",
    "YOLOv3Loss",
    "YoloV3Loss",
    "assign_targets",
]
