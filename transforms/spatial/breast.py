"""Locating the breast in a mammogram: the largest bright connected region, found on a small copy.

Rule (documented for the bundles): the image is shrunk so its longer side is at most ``work_size``
pixels; the intensity range is taken robustly as the 1st to 95th percentile (film labels and border
lines, a few per cent of the pixels, cannot stretch it; the breast covers far more); pixels above
``low + threshold * (high - low)`` are foreground; a morphological opening (``opening`` pixels on the
small copy, i.e. ~40 px on a 4k image) cuts thin border lines and text from the breast; the largest
8-connected component, holes filled and grown by ``grow`` pixels (to keep the skin line), is the breast.
"""

from __future__ import annotations

import numpy as np

__all__ = ["breast_region", "breast_box", "NoBreastFoundError"]


class NoBreastFoundError(ValueError):
    """No breast-sized bright region in the image (blank, inverted or non-mammographic input)."""


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)  # everything reachable from outside is background
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes


def breast_region(
    image: np.ndarray,
    threshold: float = 0.1,
    min_area: float = 0.02,
    work_size: int = 512,
    opening: int = 5,
    grow: int = 2,
    name: str | None = None,
    full_size: bool = True,
) -> np.ndarray:
    """Bool mask of the breast in a 2D image (full size, or the small working copy if ``full_size=False``).

    Raises:
        NoBreastFoundError: the largest region covers less than ``min_area`` of the image; the message
            names ``name`` (the file) so the caller can quarantine it.
    """
    import cv2

    values = np.asarray(image, dtype=np.float32)
    rows, cols = values.shape
    factor = max(1, int(np.ceil(max(rows, cols) / work_size)))
    small = cv2.resize(values, (max(1, cols // factor), max(1, rows // factor)), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(small, (1.0, 95.0))
    foreground = (small > low + threshold * (high - low)) if high > low else np.zeros(small.shape, bool)
    if opening > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (opening, opening))
        foreground = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if count < 2 or areas.max() < min_area * small.size:
        raise NoBreastFoundError(f"{name or '<image>'}: no breast found (no bright region over {min_area:.0%} of the image)")
    region = _fill_holes(labels == 1 + int(np.argmax(areas)))
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        region = cv2.dilate(region.astype(np.uint8), kernel).astype(bool)
    if not full_size:
        return region
    return cv2.resize(region.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST).astype(bool)


def breast_box(image: np.ndarray, name: str | None = None, **kwargs) -> tuple[float, float, float, float]:
    """``(row_start, row_end, col_start, col_end)`` of the breast in full-image pixels (ends exclusive)."""
    region = breast_region(image, name=name, full_size=False, **kwargs)
    rows_any, cols_any = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    scale_r = image.shape[0] / region.shape[0]
    scale_c = image.shape[1] / region.shape[1]
    return (
        rows_any[0] * scale_r,
        (rows_any[-1] + 1) * scale_r,
        cols_any[0] * scale_c,
        (cols_any[-1] + 1) * scale_c,
    )
