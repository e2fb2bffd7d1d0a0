"""YOLOv3 with a Darknet-53 backbone (the original ``yolov3.cfg``), the mass detector of paper 002."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.data.box_utils import non_max_suppression
from monai.networks.blocks import Convolution
from torch import nn

from ._checks import check_divisible

__all__ = [
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
]

#: The nine anchors (width, height) of ``yolov3.cfg`` in input pixels, sorted by area; three per head.
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
#: Strides of the three heads, in the order the network returns them (anchors 0-2, 3-5, 6-8).
YOLO_STRIDES = (8, 16, 32)
#: Output width and number of residual units of the five Darknet-53 stages.
DARKNET53_STAGE_CHANNELS = (64, 128, 256, 512, 1024)
DARKNET53_STAGE_UNITS = (1, 2, 8, 8, 4)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> Convolution:
    """Darknet's convolutional layer: conv without bias -> batch norm -> LeakyReLU(0.1), "same" padding."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act=("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
        norm="batch",
        bias=False,
    )


class _ResidualUnit(nn.Module):
    """1x1 conv to half the width, 3x3 conv back, plus a linear shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = _conv(channels, channels // 2, 1)
        self.expand = _conv(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class Darknet53(nn.Module):
    """Darknet-53 convolutional trunk (layers 0-74 of ``yolov3.cfg``): a 3x3 conv to 32 channels, then five
    stages of a stride-2 3x3 conv and 1, 2, 8, 8, 4 residual units at 64 ... 1024 channels.

    Args:
        in_channels: number of input channels.
        base_channels: stem width (32 in the cfg); every stage width scales with it.

    Returns (forward):
        The outputs of the last three stages, at strides 8, 16 and 32 (256, 512 and 1024 channels at base 32).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 32) -> None:
        super().__init__()
        self.stem = _conv(in_channels, base_channels, 3)
        stages = []
        channels = base_channels
        for stage_channels, units in zip(DARKNET53_STAGE_CHANNELS, DARKNET53_STAGE_UNITS):
            width = stage_channels * base_channels // 32
            stages.append(
                nn.Sequential(_conv(channels, width, 3, stride=2), *[_ResidualUnit(width) for _ in range(units)])
            )
            channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[2:]


class _HeadBranch(nn.Module):
    """Five alternating 1x1 / 3x3 convs (``width`` / 2 ``width``), then a 3x3 conv and the linear 1x1 detection
    conv; ``route`` is the fifth conv's output, from which the next (finer) head is up-sampled."""

    def __init__(self, in_channels: int, width: int, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(in_channels, width, 1),
            _conv(width, 2 * width, 3),
            _conv(2 * width, width, 1),
            _conv(width, 2 * width, 3),
            _conv(2 * width, width, 1),
        )
        self.expand = _conv(width, 2 * width, 3)
        self.detect = nn.Conv2d(2 * width, outputs, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.body(x)
        return self.detect(self.expand(route)), route


class YOLOv3(nn.Module):
    """YOLOv3 detector: Darknet-53 with three heads at strides 32, 16 and 8 joined by the up-sampling path.

    Based on: Redmon, Farhadi, "YOLOv3: An Incremental Improvement", arXiv:1804.02767 (2018), and its
    ``yolov3.cfg``, as used by paper 002 (Yan et al. 2021, Sect. 3.2) to localise masses in full mammograms.
    Every convolution is conv (no bias) + batch norm + LeakyReLU(0.1) except the three 1x1 detection convs
    (bias, linear output, ``3 * (5 + num_classes)`` channels). The stride-32 head's fifth conv is routed through a
    1x1 conv (256), nearest x2 up-sampling and concatenation with the stride-16 trunk features, and the same again
    (128) to stride 8. 61,523,734 parameters for ``num_classes=1`` and 61,949,149 for the COCO 80 classes.

    Any input whose sides are multiples of 32 works, including non-square ones (the paper's 160x320 ... 480x960
    multi-scale fusion views). Anchors are (width, height) in input pixels, sorted by area: head k (stride 8, 16,
    32) uses anchors ``3k .. 3k+2``. The anchors and the class count are checked when a state dict is loaded, so a
    checkpoint trained with other anchors refuses to load.

    Outputs:
        - ``train()``: the raw head outputs, a list of three tensors ``(B, 3, H/s, W/s, 5 + num_classes)`` for
          s = 8, 16, 32, channels ``(tx, ty, tw, th, objectness, classes...)`` as logits (for :py:class:`YOLOv3Loss`).
        - ``eval()``: one tensor ``(B, N, 5 + num_classes)``, every anchor of every cell decoded to
          ``(x0, y0, x1, y1)`` input pixels, objectness and class probabilities; :py:func:`decode_boxes` turns it
          into scored boxes.

    Args:
        spatial_dims: must be 2 (kept for the network factory's call convention).
        in_channels: number of input channels.
        num_classes: number of object classes (1 for masses).
        anchors: nine (width, height) pairs in input pixels, sorted by area (default: the cfg's COCO anchors).
        base_channels: Darknet-53 stem width (32 in the cfg); every width of the network scales with it (an even
            number; smaller values give a light detector for CPU smoke runs, not the paper's network).
        prior_probability: initial objectness (and class) probability set through the detection biases, so that
            training starts from few confident boxes instead of half the grid (RetinaNet's prior, 0.01).
        out_channels: accepted for the factory's call convention; must be ``None`` or equal to ``num_classes``.

    Raises:
        ValueError: for ``spatial_dims`` other than 2, fewer than one class, an odd or non-positive
            ``base_channels``, anchors that are not nine positive
            pairs sorted by area, or a ``prior_probability`` outside (0, 1).

    Examples::

        >>> net = YOLOv3(in_channels=1, num_classes=1)
        >>> [tuple(h.shape) for h in net.train()(torch.zeros(1, 1, 64, 96))]
        [(1, 3, 8, 12, 6), (1, 3, 4, 6, 6), (1, 3, 2, 3, 6)]
        >>> net.eval()(torch.zeros(1, 1, 64, 96)).shape
        torch.Size([1, 378, 6])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1,
        anchors: Sequence[Sequence[float]] = COCO_ANCHORS,
        base_channels: int = 32,
        prior_probability: float = 0.01,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"YOLOv3: spatial_dims must be 2, got {spatial_dims!r}.")
        if num_classes < 1:
            raise ValueError(f"YOLOv3: num_classes must be at least 1, got {num_classes}.")
        if out_channels is not None and out_channels != num_classes:
            raise ValueError(f"YOLOv3: out_channels ({out_channels}) must equal num_classes ({num_classes}).")
        if base_channels < 2 or base_channels % 2:
            raise ValueError(f"YOLOv3: base_channels must be a positive even number, got {base_channels}.")
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(f"YOLOv3: prior_probability must be in (0, 1), got {prior_probability}.")
        anchor_tensor = validate_anchors(anchors)
        self.num_classes = num_classes
        self.size_divisor = YOLO_STRIDES[-1]
        self.register_buffer("anchors", anchor_tensor)

        outputs = 3 * (5 + num_classes)
        c = base_channels  # the cfg's widths are multiples of its 32-channel stem: 1024 = 32c, 512 = 16c, ...
        self.backbone = Darknet53(in_channels, base_channels)
        self.head32 = _HeadBranch(32 * c, 16 * c, outputs)
        self.lateral16 = _conv(16 * c, 8 * c, 1)
        self.head16 = _HeadBranch(16 * c + 8 * c, 8 * c, outputs)
        self.lateral8 = _conv(8 * c, 4 * c, 1)
        self.head8 = _HeadBranch(8 * c + 4 * c, 4 * c, outputs)
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        prior = math.log(prior_probability / (1.0 - prior_probability))
        for head in (self.head8, self.head16, self.head32):
            with torch.no_grad():
                biases = head.detect.bias.view(3, 5 + num_classes)
                biases[:, :4] = 0.0  # untrained boxes start as the anchors, centred in their cells
                biases[:, 4:] = prior

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Detect in ``(B, in_channels, H, W)`` with H and W multiples of 32; see the class docstring for outputs."""
        check_divisible("YOLOv3", list(x.shape[2:]), self.size_divisor)
        features8, features16, features32 = self.backbone(x)
        out32, route = self.head32(features32)
        out16, route = self.head16(torch.cat([self.upsample(self.lateral16(route)), features16], dim=1))
        out8, _ = self.head8(torch.cat([self.upsample(self.lateral8(route)), features8], dim=1))
        heads = [self._split_anchors(out) for out in (out8, out16, out32)]
        if self.training:
            return heads
        decoded = [
            decode_head(head, self.anchors[3 * k : 3 * k + 3], stride).flatten(1, 3)
            for k, (head, stride) in enumerate(zip(heads, YOLO_STRIDES))
        ]
        return torch.cat(decoded, dim=1)

    def _split_anchors(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = out.shape
        return out.view(batch, 3, 5 + self.num_classes, height, width).permute(0, 1, 3, 4, 2).contiguous()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        saved_anchors = state_dict.get(prefix + "anchors")
        if saved_anchors is not None and (
            saved_anchors.shape != self.anchors.shape or not torch.allclose(saved_anchors.float(), self.anchors)
        ):
            raise ValueError(
                f"YOLOv3 checkpoint anchors {saved_anchors.tolist()} differ from the configured anchors "
                f"{self.anchors.tolist()}; rebuild the network with the checkpoint's anchors."
            )
        saved_head = state_dict.get(prefix + "head8.detect.bias")
        if saved_head is not None and saved_head.numel() != self.head8.detect.bias.numel():
            raise ValueError(
                f"YOLOv3 checkpoint has {saved_head.numel() // 3 - 5} classes, the configured network "
                f"{self.num_classes}; rebuild the network with num_classes={saved_head.numel() // 3 - 5}."
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)


def decode_head(head: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """Decode one raw head ``(B, 3, h, w, 5 + C)`` to ``(B, 3, h, w, 5 + C)``: corner boxes in input pixels
    (centre = (sigmoid(t_xy) + cell) * stride, size = anchor * exp(t_wh)), then sigmoid objectness and classes.

    Args:
        head: raw output of one head, as :py:class:`YOLOv3` returns it in training.
        anchors: ``(3, 2)`` (width, height) of this head's anchors in input pixels.
        stride: the head's stride (8, 16 or 32).
    """
    anchors = anchors.to(head.dtype)
    _, _, height, width, _ = head.shape
    rows = torch.arange(height, device=head.device, dtype=head.dtype)
    cols = torch.arange(width, device=head.device, dtype=head.dtype)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1)  # (h, w, 2) as (x, y)
    centre = (torch.sigmoid(head[..., 0:2]) + grid) * stride
    # exp of a clamped logit: an untrained head must not overflow to infinite boxes
    size = torch.exp(head[..., 2:4].clamp(max=10.0)) * anchors.view(1, 3, 1, 1, 2)
    return torch.cat([centre - size / 2, centre + size / 2, torch.sigmoid(head[..., 4:])], dim=-1)


def validate_anchors(anchors: Sequence[Sequence[float]]) -> torch.Tensor:
    """Return ``anchors`` as a ``(9, 2)`` float tensor; ``ValueError`` unless nine positive pairs sorted by area."""
    anchor_tensor = torch.as_tensor([list(map(float, a)) for a in anchors], dtype=torch.float32)
    if anchor_tensor.shape != (9, 2) or not bool((anchor_tensor > 0).all()):
        raise ValueError(f"anchors must be nine positive (width, height) pairs, got {list(map(tuple, anchors))}.")
    areas = anchor_tensor.prod(dim=1)
    if not bool((areas[1:] >= areas[:-1]).all()):
        raise ValueError(f"anchors must be sorted by area (small -> stride 8), got {anchor_tensor.tolist()}.")
    return anchor_tensor


def decode_boxes(
    predictions: torch.Tensor,
    conf_threshold: float = 0.25,
    nms_threshold: float = 0.45,
    image_size: Sequence[int] | None = None,
    max_detections: int = -1,
) -> list[torch.Tensor]:
    """Turn :py:class:`YOLOv3`'s ``eval()`` output into scored boxes per image.

    The score is objectness x the best class probability (class-agnostic: masses are the only class); boxes
    scoring below ``conf_threshold`` are dropped, the rest go through MONAI's
    :py:func:`monai.data.box_utils.non_max_suppression` at ``nms_threshold`` IoU. The defaults are Darknet's
    (thresh 0.25, NMS 0.45); paper 002 gives neither.

    Args:
        predictions: ``(B, N, 5 + C)`` decoded predictions, corner boxes in input pixels.
        conf_threshold: minimum score kept.
        nms_threshold: boxes overlapping a higher-scored kept box by more IoU than this are dropped.
        image_size: ``(H, W)`` of the input; when given, boxes are clipped to ``[0, W] x [0, H]``.
        max_detections: most boxes kept per image (-1: no limit).

    Returns:
        One ``(K, 5)`` tensor ``(x0, y0, x1, y1, score)`` per image, sorted by decreasing score (K may be 0).

    Raises:
        ValueError: for predictions that are not ``(B, N, >= 6)`` or thresholds outside [0, 1].
    """
    if predictions.ndim != 3 or predictions.shape[-1] < 6:
        raise ValueError(f"predictions must be (B, N, 5 + num_classes), got shape {tuple(predictions.shape)}.")
    for name, value in (("conf_threshold", conf_threshold), ("nms_threshold", nms_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    results = []
    for image in predictions.detach():
        boxes = image[:, :4]
        if image_size is not None:
            height, width = int(image_size[0]), int(image_size[1])
            boxes = torch.stack(
                [
                    boxes[:, 0].clamp(0, width),
                    boxes[:, 1].clamp(0, height),
                    boxes[:, 2].clamp(0, width),
                    boxes[:, 3].clamp(0, height),
                ],
                dim=1,
            )
        scores = image[:, 4] * image[:, 5:].max(dim=1).values
        keep = (scores >= conf_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[keep], scores[keep]
        if boxes.shape[0] > 0:
            order = non_max_suppression(boxes, scores, nms_threshold, max_proposals=max_detections)
            boxes, scores = boxes[order], scores[order]
        results.append(torch.cat([boxes, scores[:, None]], dim=1))
    return results


YoloV3 = YOLOv3
