"""Detector anchors by k-means on ground-truth box sizes with the 1 - IoU distance (YOLOv2/YOLOv3)."""

from __future__ import annotations

import numpy as np

__all__ = ["box_sizes", "size_iou", "kmeans_anchors", "mean_best_iou"]


def box_sizes(boxes, scale_x: float = 1.0, scale_y: float = 1.0) -> np.ndarray:
    """``(M, 2)`` widths and heights of corner boxes ``(x0, y0, x1, y1)``, scaled (e.g. to the network input).

    Raises:
        ValueError: for an array that is not ``(M, 4)``, a non-positive scale, or an empty or inverted box
            (the message gives its index).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an (M, 4) array of (x0, y0, x1, y1), got shape {boxes.shape}.")
    if scale_x <= 0 or scale_y <= 0:
        raise ValueError(f"scales must be positive, got ({scale_x}, {scale_y}).")
    sizes = (boxes[:, 2:4] - boxes[:, 0:2]) * np.array([scale_x, scale_y])
    bad = np.flatnonzero((sizes <= 0).any(axis=1))
    if bad.size:
        raise ValueError(f"box {bad[0]} {boxes[bad[0]].tolist()} is empty or inverted (x1 <= x0 or y1 <= y0).")
    return sizes


def size_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``(M, K)`` IoU of (w, h) pairs with anchors, both centred on the same point (only the shapes compared)."""
    inter = np.minimum(sizes[:, None, 0], anchors[None, :, 0]) * np.minimum(sizes[:, None, 1], anchors[None, :, 1])
    return inter / (sizes.prod(axis=1)[:, None] + anchors.prod(axis=1)[None, :] - inter)


def kmeans_anchors(sizes, num_anchors: int = 9, seed: int = 0, max_iterations: int = 300) -> np.ndarray:
    """Cluster box sizes into ``num_anchors`` anchors with the distance 1 - IoU, sorted by area.

    The YOLOv2/YOLOv3 recipe (paper 002 re-computes YOLOv3's nine anchors this way on the mammograms):
    centroids start by k-means++ seeding under the 1 - IoU distance (reproducible from ``seed``), every
    size joins the centroid it overlaps best, each centroid moves to the mean (w, h) of its members, until the
    assignment stops changing. A centroid that loses all members is re-seeded on the size it fits worst.
    Sorted by area, anchors 0-2 go to the stride-8 head, 3-5 to stride 16 and 6-8 to stride 32.

    Args:
        sizes: ``(M, 2)`` widths and heights in network-input pixels (see :py:func:`box_sizes`).
        num_anchors: number of anchors (9 for YOLOv3).
        seed: seed of the k-means++ draws; the same seed and sizes give the same anchors.
        max_iterations: upper bound on the update rounds.

    Returns:
        ``(num_anchors, 2)`` float array of (width, height), increasing area.

    Raises:
        ValueError: for sizes that are not ``(M, 2)`` positive values, or fewer distinct sizes than anchors.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.all(sizes > 0):
        raise ValueError(f"sizes must be an (M, 2) array of positive (width, height), got shape {sizes.shape}.")
    if num_anchors < 1 or max_iterations < 1:
        raise ValueError(f"num_anchors and max_iterations must be positive, got {num_anchors}, {max_iterations}.")
    distinct = np.unique(sizes, axis=0).shape[0]
    if distinct < num_anchors:
        raise ValueError(f"{num_anchors} anchors need at least as many distinct box sizes; got {distinct}.")
    rng = np.random.default_rng(seed)
    centroids = _kmeans_plus_plus(sizes, num_anchors, rng)
    assignment = np.full(len(sizes), -1)
    for _ in range(max_iterations):
        overlap = size_iou(sizes, centroids)
        new_assignment = overlap.argmax(axis=1)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for k in range(num_anchors):
            members = sizes[assignment == k]
            if len(members):
                centroids[k] = members.mean(axis=0)
            else:
                centroids[k] = sizes[overlap.max(axis=1).argmin()]
    return centroids[np.argsort(centroids.prod(axis=1), kind="stable")]


def _kmeans_plus_plus(sizes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centroid drawn with probability proportional to its squared 1 - IoU distance."""
    centroids = [sizes[rng.integers(len(sizes))]]
    for _ in range(1, count):
        distance = 1.0 - size_iou(sizes, np.array(centroids)).max(axis=1)
        weights = distance**2
        total = weights.sum()
        index = rng.choice(len(sizes), p=weights / total) if total > 0 else rng.integers(len(sizes))
        centroids.append(sizes[index])
    return np.array(centroids, dtype=np.float64)


def mean_best_iou(sizes, anchors) -> float:
    """Mean over boxes of the IoU with their best anchor (the YOLOv2 "Avg IOU" quality of a set of anchors)."""
    return float(
        size_iou(np.asarray(sizes, dtype=np.float64), np.asarray(anchors, dtype=np.float64)).max(axis=1).mean()
    )
