"""Burned-in scanner overlays for synthetic ultrasound frames (private helper of ``ultrasound.py``).

Real BUSI frames carry text, depth ticks and caliper marks drawn into the pixels; a model must learn to
ignore them, so the generator paints them over the image and never into the mask.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["draw_calipers", "draw_annotations"]

_LABELS = (
    "BREAST", "RT BREAST", "LT BREAST", "AXILLA", "12 O'CLOCK", "2 CM FN", "RADIAL", "ANTI-RAD", "L12-5", "ML6-15",
)


def draw_calipers(image: np.ndarray, outline: np.ndarray, rng: np.random.Generator) -> None:
    """Draw two ``+`` caliper marks on the lesion's widest horizontal extent, and sometimes a dotted line."""
    left, right = outline[np.argmin(outline[:, 0])], outline[np.argmax(outline[:, 0])]
    arm = max(2, image.shape[1] // 90)
    for x, y in (left, right):
        x, y = int(round(x)), int(round(y))
        cv2.line(image, (x - arm, y), (x + arm, y), 235, 1)
        cv2.line(image, (x, y - arm), (x, y + arm), 235, 1)
    if rng.random() < 0.5:
        steps = max(2, int(np.hypot(*(right - left)) // (3 * arm)))
        for t in np.linspace(0.15, 0.85, steps):
            x, y = np.round(left + t * (right - left)).astype(int)
            image[max(0, y), max(0, x)] = 220


def draw_annotations(image: np.ndarray, rng: np.random.Generator, border: int) -> None:
    """Draw a probe/body-mark label in the top band and depth ticks along the right edge."""
    height, width = image.shape
    scale = max(0.25, width / 1400.0)
    label = str(rng.choice(_LABELS))
    cv2.putText(image, label, (border + 2, max(8, border - 3)), cv2.FONT_HERSHEY_SIMPLEX, scale, 200, 1, cv2.LINE_AA)
    if rng.random() < 0.6:
        depth = f"{rng.integers(3, 6)}.{rng.integers(0, 10)}cm"
        cv2.putText(image, depth, (width - border - int(60 * scale * 2), height - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, 180, 1, cv2.LINE_AA)
    tick_x = width - max(3, border // 2)
    for y in range(border, height - 4, max(6, height // 12)):
        cv2.line(image, (tick_x - 2, y), (tick_x, y), 170, 1)
