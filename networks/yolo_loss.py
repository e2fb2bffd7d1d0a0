"""YOLOv3 training loss: best-anchor target assignment, box, objectness and class terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_iou
from torch import nn

from .yolov3 import COCO_ANCHORS, YOLO_STRIDES, decode_head, validate_anchors

__all__ = ["YOLOv3Loss", "YoloV3Loss", "assign_targets"]


def _anchor_shape_iou(sizes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of (w, h) pairs with anchors when both are centred on the same point: ``(M, 9)``."""
    inter = torch.minimum(sizes[:, None, 0], anchors[None, :, 0]) * torch.minimum(
        sizes[:, None, 1], anchors[None, :, 1]
    )
    union = sizes.prod(dim=1)[:, None] + anchors.prod(dim=1)[None, :] - inter
    return inter / union


def assign_targets(
    boxes: torch.Tensor, anchors: torch.Tensor, grid_sizes: Sequence[tuple[int, int]]
) -> list[tuple[int, int, int, int]]:
    """Assign each ground-truth box to the anchor (of all nine) whose shape overlaps it best.

    Args:
        boxes: ``(M, 4)`` corner boxes ``(x0, y0, x1, y1)`` in input pixels.
        anchors: ``(9, 2)`` anchors sorted by area; anchor ``a`` belongs to head ``a // 3`` (strides 8, 16, 32).
        grid_sizes: ``(h, w)`` of the three heads' grids.

    Returns:
        One ``(head, anchor_in_head, row, column)`` per box, the cell holding the box centre (clamped to the grid).
    """
    sizes = boxes[:, 2:4] - boxes[:, 0:2]
    best = _anchor_shape_iou(sizes, anchors).argmax(dim=1).tolist()
    centres = ((boxes[:, 0:2] + boxes[:, 2:4]) / 2).tolist()
    assignments = []
    for anchor, (cx, cy) in zip(best, centres):
        head = anchor // 3
        stride = YOLO_STRIDES[head]
        rows, cols = grid_sizes[head]
        row = min(max(int(cy // stride), 0), rows - 1)
        col = min(max(int(cx // stride), 0), cols - 1)
        assignments.append((head, anchor % 3, row, col))
    return assignments


class YOLOv3Loss(nn.Module):
    """The YOLOv3 loss over the three raw heads of :py:class:`breastseg.networks.YOLOv3`.

    Target assignment as YOLOv3: each ground-truth box goes to the one anchor (of nine) with the best
    shape IoU, in the head that anchor belongs to and the grid cell holding the box centre. Terms, summed over
    cells and divided by the batch size (the Keras YOLOv3 formulation; paper 002 trained in Keras):

    - box: binary cross-entropy of ``sigmoid(t_xy)`` against the centre's offset in its cell, plus
      ``0.5 * (t_wh - log(size / anchor))^2``, both weighted by ``2 - w*h/(W*H)`` so that small boxes count more;
    - objectness: binary cross-entropy, target 1 at assigned anchors and 0 elsewhere, except unassigned
      predictions whose decoded box already overlaps a ground-truth box by IoU >= ``ignore_threshold``
      (neither rewarded nor penalised);
    - class: binary cross-entropy of independent class logits at assigned anchors.

    Args:
        anchors: the nine (width, height) anchors of the network, sorted by area.
        num_classes: number of classes of the network.
        ignore_threshold: IoU above which an unassigned prediction is not penalised as background (0.5 in the
            Keras implementation; ``yolov3.cfg`` uses 0.7).
        box_weight: weight of the box term.
        objectness_weight: weight of the objectness term.
        class_weight: weight of the class term.

    Raises:
        ValueError: for anchors that are not nine positive pairs sorted by area, fewer than one class, an
            ``ignore_threshold`` outside [0, 1] or a negative weight.

    Examples::

        >>> net, loss = YOLOv3(in_channels=1, base_channels=4), YOLOv3Loss()
        >>> heads = net.train()(torch.zeros(1, 1, 64, 96))
        >>> loss(heads, [torch.tensor([[10.0, 12.0, 40.0, 50.0]])]).shape
        torch.Size([])
    """

    def __init__(
        self,
        anchors: Sequence[Sequence[float]] = COCO_ANCHORS,
        num_classes: int = 1,
        ignore_threshold: float = 0.5,
        box_weight: float = 1.0,
        objectness_weight: float = 1.0,
        class_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        if not 0.0 <= ignore_threshold <= 1.0:
            raise ValueError(f"ignore_threshold must be in [0, 1], got {ignore_threshold}.")
        weights = {"box_weight": box_weight, "objectness_weight": objectness_weight, "class_weight": class_weight}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}.")
        self.register_buffer("anchors", validate_anchors(anchors))
        self.num_classes = num_classes
        self.ignore_threshold = ignore_threshold
        self.weights = (box_weight, objectness_weight, class_weight)

    def forward(self, heads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Weighted sum of :py:meth:`components`."""
        terms = self.components(heads, targets)
        box_weight, objectness_weight, class_weight = self.weights
        return box_weight * terms["box"] + objectness_weight * terms["objectness"] + class_weight * terms["class"]

    def components(self, heads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The box, objectness and class terms, each a scalar tensor.

        Args:
            heads: the three raw heads ``(B, 3, H/s, W/s, 5 + num_classes)`` for s = 8, 16, 32.
            targets: one tensor per image, ``(M, 4)`` corner boxes ``(x0, y0, x1, y1)`` in input pixels or
                ``(M, 5)`` with the class index last (class 0 when absent); ``M`` may be 0 (no lesion).

        Raises:
            ValueError: for heads of the wrong number or layout, a target list whose length is not the batch
                size, or a box that is not ``x1 > x0, y1 > y0`` (the message names image and box).
        """
        self._check_heads(heads)
        batch = heads[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target tensors for a batch of {batch} images.")
        grid_sizes = [(int(h.shape[2]), int(h.shape[3])) for h in heads]
        image_height, image_width = grid_sizes[0][0] * YOLO_STRIDES[0], grid_sizes[0][1] * YOLO_STRIDES[0]
        anchors = self.anchors.to(heads[0].dtype)

        positive = [torch.zeros(h.shape[:4], dtype=torch.bool, device=h.device) for h in heads]
        target_xy = [torch.zeros((*h.shape[:4], 2), dtype=h.dtype, device=h.device) for h in heads]
        target_wh = [torch.zeros_like(t) for t in target_xy]
        box_scale = [torch.zeros(h.shape[:4], dtype=h.dtype, device=h.device) for h in heads]
        target_cls = [torch.zeros((*h.shape[:4], self.num_classes), dtype=h.dtype, device=h.device) for h in heads]
        image_boxes = []
        for image, target in enumerate(targets):
            boxes, labels = self._check_target(image, target, heads[0])
            image_boxes.append(boxes)
            for box, label, (head, anchor, row, col) in zip(boxes, labels, assign_targets(boxes, anchors, grid_sizes)):
                stride = YOLO_STRIDES[head]
                size = box[2:4] - box[0:2]
                centre = (box[0:2] + box[2:4]) / 2
                index = (image, anchor, row, col)
                positive[head][index] = True
                target_xy[head][index] = (centre / stride - centre.new_tensor([col, row])).clamp(0, 1)
                target_wh[head][index] = torch.log(size / anchors[3 * head + anchor])
                box_scale[head][index] = 2.0 - size.prod() / (image_height * image_width)
                target_cls[head][index + (int(label),)] = 1.0

        box_term = heads[0].new_zeros(())
        objectness_term = heads[0].new_zeros(())
        class_term = heads[0].new_zeros(())
        for k, head in enumerate(heads):
            mask = positive[k]
            scale = box_scale[k][mask]
            if mask.any():
                xy = F.binary_cross_entropy_with_logits(head[..., 0:2][mask], target_xy[k][mask], reduction="none")
                wh = 0.5 * (head[..., 2:4][mask] - target_wh[k][mask]) ** 2
                box_term = box_term + ((xy.sum(dim=1) + wh.sum(dim=1)) * scale).sum()
                class_term = class_term + F.binary_cross_entropy_with_logits(
                    head[..., 5:][mask], target_cls[k][mask], reduction="sum"
                )
            background = ~mask & ~self._ignored(head, k, image_boxes)
            objectness = F.binary_cross_entropy_with_logits(head[..., 4], mask.to(head.dtype), reduction="none")
            objectness_term = objectness_term + objectness[mask | background].sum()
        return {"box": box_term / batch, "objectness": objectness_term / batch, "class": class_term / batch}

    def _ignored(self, head: torch.Tensor, index: int, image_boxes: list[torch.Tensor]) -> torch.Tensor:
        """Predictions whose decoded box overlaps some ground-truth box of their image by >= ignore_threshold."""
        with torch.no_grad():
            decoded = decode_head(head.detach(), self.anchors[3 * index : 3 * index + 3], YOLO_STRIDES[index])
            ignored = torch.zeros(head.shape[:4], dtype=torch.bool, device=head.device)
            for image, boxes in enumerate(image_boxes):
                if boxes.shape[0] == 0:
                    continue
                predicted = decoded[image, ..., 0:4].reshape(-1, 4)
                best = box_iou(predicted, boxes.to(predicted.dtype)).max(dim=1).values
                ignored[image] = (best >= self.ignore_threshold).view(head.shape[1:4])
        return ignored

    def _check_heads(self, heads: Sequence[torch.Tensor]) -> None:
        if len(heads) != len(YOLO_STRIDES):
            raise ValueError(f"expected {len(YOLO_STRIDES)} heads (strides {YOLO_STRIDES}), got {len(heads)}.")
        for k, head in enumerate(heads):
            if head.ndim != 5 or head.shape[1] != 3 or head.shape[-1] != 5 + self.num_classes:
                raise ValueError(
                    f"head {k} must be (B, 3, h, w, {5 + self.num_classes}) for {self.num_classes} classes, "
                    f"got {tuple(head.shape)}."
                )

    def _check_target(self, image: int, target: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.as_tensor(target, dtype=like.dtype, device=like.device)
        if target.numel() == 0:
            return target.new_zeros((0, 4)), target.new_zeros((0,), dtype=torch.long)
        if target.ndim != 2 or target.shape[1] not in (4, 5):
            raise ValueError(f"targets[{image}] must be (M, 4) or (M, 5) boxes, got shape {tuple(target.shape)}.")
        boxes = target[:, :4]
        labels = target[:, 4].long() if target.shape[1] == 5 else torch.zeros(len(target), dtype=torch.long)
        bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"targets[{image}] box {bad[0]} {boxes[bad[0]].tolist()} is empty or inverted (x1 <= x0 or y1 <= y0)."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"targets[{image}] has class indices outside [0, {self.num_classes}): {labels.tolist()}.")
        return boxes, labels


YoloV3Loss = YOLOv3Loss
