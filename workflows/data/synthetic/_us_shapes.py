"""Lesion outlines for the synthetic ultrasound renderer (private helper of ``ultrasound.py``)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["LESION_SHAPES", "lesion_outline", "fill_outline"]

#: outline families seen in breast ultrasound (BI-RADS US shape descriptors)
LESION_SHAPES = ("oval", "lobulated", "irregular")


def lesion_outline(
    rng: np.random.Generator, shape: str, center: tuple[float, float], radius: float, aspect: float, angle: float
) -> np.ndarray:
    """Return the ``(N, 2)`` polygon ``(x, y)`` of one lesion outline.

    Args:
        rng: random source.
        shape: one of :data:`LESION_SHAPES`.
        center: ``(x, y)`` centre in pixels.
        radius: mean radius along the long axis in pixels.
        aspect: short axis / long axis (< 1 is wider than tall before rotation).
        angle: rotation in radians.
    """
    if shape not in LESION_SHAPES:
        raise ValueError(f"unknown lesion shape {shape!r}; choose one of {LESION_SHAPES}")
    theta = np.linspace(0.0, 2.0 * np.pi, 180, endpoint=False)
    radial = np.ones_like(theta)
    if shape == "oval":
        radial += 0.04 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "lobulated":
        lobes = int(rng.integers(3, 6))
        radial += rng.uniform(0.12, 0.22) * np.abs(np.sin(lobes * theta / 2 + rng.uniform(0, np.pi)))
        radial += 0.05 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
    else:
        # angular margins: sum of random harmonics plus sharp spikes at a few random angles
        for order in range(2, 9):
            radial += rng.uniform(0.0, 0.22 / order**0.7) * np.sin(order * theta + rng.uniform(0, 2 * np.pi))
        for spike in rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))):
            distance = np.angle(np.exp(1j * (theta - spike)))
            radial += rng.uniform(0.15, 0.4) * np.clip(1.0 - np.abs(distance) / 0.18, 0.0, None)
    radial = np.clip(radial, 0.45, None)
    x = radius * radial * np.cos(theta)
    y = radius * aspect * radial * np.sin(theta)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([center[0] + cos * x - sin * y, center[1] + sin * x + cos * y], axis=1)


def fill_outline(outline: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon to a boolean ``(height, width)`` mask (sub-pixel vertices, 8x fixed point)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 8).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=3)
    return mask.astype(bool)
