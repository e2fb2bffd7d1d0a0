"""Is a candidate pair the same acquisition? Align by keypoints, then compare the pixels under the alignment.

1. **Alignment.** Descriptors are matched both ways with Lowe's ratio test, and an axis-aligned scale-and-shift
   transform (separate row and column scales, no rotation or shear: re-exports are rescaled, cropped, padded
   and shifted, never turned) is fitted to the matches with RANSAC. At least :data:`MIN_INLIERS` matches must
   agree on it within :data:`INLIER_TOLERANCE` working pixels.
2. **Pixels.** The second thumbnail is warped onto the first. Both are band-pass filtered (a difference of
   Gaussians: the broad layout every breast scan shares, dark depths and bright skin, is removed, and so is the
   finest grain that resampling changes), then correlated block by block over the overlap inside the field of
   view. The *similarity* is the median block correlation: calipers, crosses, dotted lines and text spoil a few
   blocks and move the median little, while two different scans of similar anatomy correlate near 0 however
   alike they look as a whole (their band-passed texture is unrelated). A pair is a near duplicate at
   :data:`MIN_SIMILARITY` or more, on an overlap of at least :data:`MIN_OVERLAP` of the smaller image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .fingerprint import THUMBNAIL_SIDE, WORKING_SIDE, Fingerprint

__all__ = ["MIN_INLIERS", "INLIER_TOLERANCE", "MIN_SIMILARITY", "MIN_OVERLAP", "Alignment", "verify_pair"]

MIN_INLIERS = 6
#: working-image pixels (of 192: about 2.6 pixels of a 500-pixel scan)
INLIER_TOLERANCE = 1.0
MIN_SIMILARITY = 0.5
MIN_OVERLAP = 0.25
#: largest scale change accepted between two copies (a copy 5 times smaller is still found)
_MAX_SCALE = 5.0
_RATIO = 0.8
#: blocks of the thumbnail correlated one by one, pixels
_BLOCK = 16
#: thumbnail grey level below which a pixel is outside the field of view (no signal: black borders)
_NO_SIGNAL = 8


@dataclass(frozen=True)
class Alignment:
    """How image ``b`` maps onto image ``a``: ``row_a = scale[0] * row_b + offset[0]`` (likewise columns), in
    each image's own pixels; ``similarity`` is the median block correlation, ``inliers`` the keypoints that agree."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    similarity: float
    inliers: int
    overlap: float


def _matches(a: Fingerprint, b: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint positions ``(points of a, points of b)`` that are each other's nearest descriptor and pass Lowe's
    ratio test both ways (one distance matrix serves both directions)."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    squared = (da * da).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * da @ db.T
    rows, columns = np.arange(len(da)), np.arange(len(db))
    nearest_ab, nearest_ba = squared.argmin(axis=1), squared.argmin(axis=0)
    runner_up = squared.copy()
    runner_up[rows, nearest_ab] = np.inf
    second_ab = runner_up.min(axis=1)
    runner_up = squared.copy()
    runner_up[nearest_ba, columns] = np.inf
    second_ba = runner_up.min(axis=0)
    ratio = _RATIO * _RATIO  # on squared distances
    good_ab = squared[rows, nearest_ab] < ratio * second_ab
    good_ba = squared[nearest_ba, columns] < ratio * second_ba
    mutual = good_ab & (nearest_ba[nearest_ab] == rows) & good_ba[nearest_ab]
    return a.points[rows[mutual]], b.points[nearest_ab[mutual]]


def _fit_scale_shift(pa: np.ndarray, pb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """RANSAC fit of ``pa = s * pb + t`` (per axis); ``(2x3 matrix, inlier mask)`` or ``None``."""
    matrix, inliers = cv2.estimateAffine2D(
        pb, pa, method=cv2.RANSAC, ransacReprojThreshold=INLIER_TOLERANCE, maxIters=2000, confidence=0.995
    )
    if matrix is None:
        return None
    sx, sy = matrix[0, 0], matrix[1, 1]
    shear = max(abs(matrix[0, 1]), abs(matrix[1, 0]))
    if min(sx, sy) <= 1 / _MAX_SCALE or max(sx, sy) >= _MAX_SCALE or shear > 0.05 * min(sx, sy):
        return None  # turned, sheared or mirrored: no re-export does that
    return matrix, inliers.ravel().astype(bool)


def _band_pass(thumbnail: np.ndarray) -> np.ndarray:
    image = thumbnail.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.0) - cv2.GaussianBlur(image, (0, 0), 4.0)


def _median_block_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Median over the blocks mostly inside ``valid`` of the correlation of ``a`` and ``b``; 0 when fewer than 4."""
    rows, columns = (size // _BLOCK for size in valid.shape)
    if rows * columns == 0:
        return 0.0

    def blocks(image: np.ndarray) -> np.ndarray:
        return image[: rows * _BLOCK, : columns * _BLOCK].reshape(rows, _BLOCK, columns, _BLOCK).swapaxes(1, 2).reshape(
            rows * columns, _BLOCK * _BLOCK)

    weight = blocks(valid.astype(np.float32))
    usable = weight.mean(axis=1) >= 0.9
    if usable.sum() < 4:
        return 0.0
    weight, xa, xb = weight[usable], blocks(a)[usable], blocks(b)[usable]
    count = weight.sum(axis=1, keepdims=True)
    xa = (xa - (xa * weight).sum(axis=1, keepdims=True) / count) * weight
    xb = (xb - (xb * weight).sum(axis=1, keepdims=True) / count) * weight
    norm = np.sqrt((xa * xa).sum(axis=1) * (xb * xb).sum(axis=1))
    correlation = np.where(norm > 1e-6, (xa * xb).sum(axis=1) / np.maximum(norm, 1e-6), 0.0)
    return float(np.median(correlation))


def _pixel_similarity(a: Fingerprint, b: Fingerprint, matrix: np.ndarray) -> tuple[float, float]:
    """``(median block correlation, overlap fraction of the smaller image)`` of ``b`` warped onto ``a``."""
    to_thumbnail = THUMBNAIL_SIDE / WORKING_SIDE
    warp = matrix.astype(np.float64).copy()
    warp[:, 2] *= to_thumbnail  # the thumbnails are both at the same fraction of their working images
    rows, columns = a.thumbnail.shape
    warped = cv2.warpAffine(_band_pass(b.thumbnail), warp, (columns, rows), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(b.thumbnail.shape, np.uint8), warp, (columns, rows), flags=cv2.INTER_NEAREST)
    overlap = float(inside.sum()) / min(a.thumbnail.size, b.thumbnail.size)
    signal = (a.thumbnail > _NO_SIGNAL) & (cv2.warpAffine(b.thumbnail, warp, (columns, rows)) > _NO_SIGNAL)
    # off the filters' reach of the overlap's edge and of the field of view's border
    valid = cv2.erode((inside.astype(bool) & signal).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return _median_block_correlation(_band_pass(a.thumbnail), warped, valid), overlap


def verify_pair(a: Fingerprint, b: Fingerprint) -> Alignment | None:
    """The alignment of ``b`` onto ``a`` when they are the same acquisition, else ``None``."""
    pa, pb = _matches(a, b)
    if len(pa) < MIN_INLIERS:
        return None
    fitted = _fit_scale_shift(pa, pb)
    if fitted is None or fitted[1].sum() < MIN_INLIERS:
        return None
    matrix, inliers = fitted
    similarity, overlap = _pixel_similarity(a, b, matrix)
    if similarity < MIN_SIMILARITY or overlap < MIN_OVERLAP:
        # a small part of the other image can fail one way only: its warp may leave too few whole blocks
        inverse = cv2.invertAffineTransform(matrix)
        similarity, overlap = _pixel_similarity(b, a, inverse)
        if similarity < MIN_SIMILARITY or overlap < MIN_OVERLAP:
            return None
    # working pixels -> each image's own pixels
    scale = (matrix[1, 1] * b.working_scale / a.working_scale, matrix[0, 0] * b.working_scale / a.working_scale)
    offset = (matrix[1, 2] / a.working_scale, matrix[0, 2] / a.working_scale)
    return Alignment(
        scale=(round(float(scale[0]), 4), round(float(scale[1]), 4)),
        offset=(round(float(offset[0]), 2), round(float(offset[1]), 2)),
        similarity=round(similarity, 4),
        inliers=int(inliers.sum()),
        overlap=round(min(overlap, 1.0), 4),
    )
