"""Re-exports of a synthetic ultrasound frame: the near duplicates real BUSI holds (private helper of the BUSI and
UDIAT writers).

Each kind changes the frame the way a second export of the same acquisition does, and moves its lesion masks with
it (geometry only), so a copy keeps a correct ground truth. The kinds cycle in :data:`REEXPORT_KINDS` order, so any
layout with at least that many copies plants every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["REEXPORT_KINDS", "Reexport", "reexport", "copy_plan"]

REEXPORT_KINDS = (
    "rescaled", "cropped", "padded", "shifted", "contrast", "calipers", "crosses", "dotted-lines", "text",
    "jpeg", "16-bit", "combined",
)
_TEXTS = ("RT BREAST 10 O'CLOCK", "LT BREAST 2 CM FN", "MASS 1.2 x 0.9 cm", "RADIAL", "D 1.34cm", "ANTI-RAD")


@dataclass
class Reexport:
    """The copy's pixels (uint8, or uint16 for ``16-bit``) and its masks."""

    image: np.ndarray
    masks: list[np.ndarray]


def _warp(image: np.ndarray, masks: list[np.ndarray], matrix: np.ndarray, size: tuple[int, int]) -> Reexport:
    """Apply the 2x3 ``matrix`` (source -> copy) into a copy of ``size`` (rows, columns); black outside."""
    rows, columns = size
    warped = cv2.warpAffine(image, matrix, (columns, rows), flags=cv2.INTER_AREA if matrix[0, 0] < 1 else cv2.INTER_LINEAR)
    moved = [cv2.warpAffine(m.astype(np.uint8), matrix, (columns, rows), flags=cv2.INTER_NEAREST).astype(bool) for m in masks]
    return Reexport(warped, moved)


def _lesion_box(masks: list[np.ndarray], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` around every lesion, or the frame's centre pixel without any."""
    union = np.any(masks, axis=0) if masks else np.zeros(shape, bool)
    if not union.any():
        return shape[0] // 2, shape[0] // 2 + 1, shape[1] // 2, shape[1] // 2 + 1
    rows, columns = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1


def _crop(image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator) -> Reexport:
    """A sub-window of 65-90 % of each side that keeps every lesion whole."""
    rows, columns = image.shape
    top, bottom, left, right = _lesion_box(masks, image.shape)
    height = max(int(rows * rng.uniform(0.65, 0.9)), bottom - top + 6)
    width = max(int(columns * rng.uniform(0.65, 0.9)), right - left + 6)
    row0 = _start(rng, bottom + 3 - height, min(rows - height, top - 3))
    col0 = _start(rng, right + 3 - width, min(columns - width, left - 3))
    window = (slice(row0, row0 + height), slice(col0, col0 + width))
    return Reexport(image[window].copy(), [m[window].copy() for m in masks])


def _start(rng: np.random.Generator, low: int, high: int) -> int:
    """A window start in ``[low, high]`` clipped to the frame (``high`` wins when the lesion leaves no choice)."""
    low, high = max(0, low), max(0, high)
    return int(rng.integers(min(low, high), high + 1))


def _draw_crosses(image: np.ndarray, points: list[tuple[int, int]], arm: int, diagonal: bool = False) -> None:
    for x, y in points:
        if diagonal:
            cv2.line(image, (x - arm, y - arm), (x + arm, y + arm), 235, 1)
            cv2.line(image, (x - arm, y + arm), (x + arm, y - arm), 235, 1)
        else:
            cv2.line(image, (x - arm, y), (x + arm, y), 235, 1)
            cv2.line(image, (x, y - arm), (x, y + arm), 235, 1)


def _dotted_line(image: np.ndarray, start: tuple[int, int], end: tuple[int, int], step: int) -> None:
    length = int(np.hypot(end[0] - start[0], end[1] - start[1]))
    for t in np.linspace(0.0, 1.0, max(2, length // step)):
        x, y = (int(round(a + t * (b - a))) for a, b in zip(start, end))
        cv2.circle(image, (x, y), 1, 225, -1)


def _calipers(image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Two ``+`` calipers on the lesion's widest extent joined by a dotted line (a measurement)."""
    marked = image.copy()
    top, bottom, left, right = _lesion_box(masks, image.shape)
    y = (top + bottom) // 2 + int(rng.integers(-2, 3))
    arm = max(3, image.shape[1] // 60)
    _draw_crosses(marked, [(left, y), (right, y)], arm)
    _dotted_line(marked, (left, y), (right, y), max(4, arm))
    return marked


def _field_points(image: np.ndarray, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    rows, columns = image.shape
    return [(int(rng.integers(columns // 8, columns - columns // 8)), int(rng.integers(rows // 5, rows - rows // 8)))
            for _ in range(count)]


def _text(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    marked = image.copy()
    scale = max(0.3, image.shape[1] / 700.0)
    for x, y in _field_points(image, rng, 2):
        label = str(rng.choice(_TEXTS))
        cv2.putText(marked, label, (min(x, image.shape[1] // 2), y), cv2.FONT_HERSHEY_SIMPLEX, scale, 230, 1, cv2.LINE_AA)
    return marked


def _jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(45, 80))])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)


def reexport(image: np.ndarray, masks: list[np.ndarray], kind: str, rng: np.random.Generator) -> Reexport:
    """The frame ``image`` (uint8) and its lesion ``masks`` re-exported as ``kind`` (one of :data:`REEXPORT_KINDS`)."""
    rows, columns = image.shape
    if kind == "rescaled":
        factor = float(rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.15, 1.4)]))
        size = (max(64, round(rows * factor)), max(64, round(columns * factor)))
        matrix = np.float32([[size[1] / columns, 0, 0], [0, size[0] / rows, 0]])
        return _warp(image, masks, matrix, size)
    if kind == "cropped":
        return _crop(image, masks, rng)
    if kind == "padded":
        top, left = (int(v) for v in rng.integers(8, 40, 2))
        size = (rows + top + int(rng.integers(8, 40)), columns + left + int(rng.integers(8, 40)))
        return _warp(image, masks, np.float32([[1, 0, left], [0, 1, top]]), size)
    if kind == "shifted":
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(2, 7, 2))
        return _warp(image, masks, np.float32([[1, 0, dx], [0, 1, dy]]), (rows, columns))
    if kind == "contrast":
        gain, offset, gamma = rng.uniform(0.7, 1.3), rng.uniform(-25, 25), rng.uniform(0.8, 1.25)
        values = 255.0 * (image / 255.0) ** gamma * gain + offset
        return Reexport(np.clip(values, 0, 255).astype(np.uint8), [m.copy() for m in masks])
    if kind == "calipers":
        return Reexport(_calipers(image, masks, rng), [m.copy() for m in masks])
    if kind == "crosses":
        marked = image.copy()
        _draw_crosses(marked, _field_points(image, rng, 4), max(3, columns // 50), diagonal=bool(rng.integers(2)))
        return Reexport(marked, [m.copy() for m in masks])
    if kind == "dotted-lines":
        marked = image.copy()
        for start, end in zip(_field_points(image, rng, 2), _field_points(image, rng, 2)):
            _dotted_line(marked, start, end, 5)
        return Reexport(marked, [m.copy() for m in masks])
    if kind == "text":
        return Reexport(_text(image, rng), [m.copy() for m in masks])
    if kind == "jpeg":
        return Reexport(_jpeg(image, rng), [m.copy() for m in masks])
    if kind == "16-bit":
        return Reexport(image.astype(np.uint16) * 257, [m.copy() for m in masks])
    if kind == "combined":
        cropped = _crop(_calipers(image, masks, rng), masks, rng)
        factor = rng.uniform(0.6, 0.85)
        size = (max(64, round(cropped.image.shape[0] * factor)), max(64, round(cropped.image.shape[1] * factor)))
        matrix = np.float32([[size[1] / cropped.image.shape[1], 0, 0], [0, size[0] / cropped.image.shape[0], 0]])
        scaled = _warp(cropped.image, cropped.masks, matrix, size)
        return Reexport(_jpeg(scaled.image, rng), scaled.masks)
    raise ValueError(f"unknown re-export {kind!r}; choose one of {REEXPORT_KINDS}")


def copy_plan(count: int, share: float = 0.18) -> dict[int, int]:
    """Which image numbers of a folder of ``count`` regular images are copies, and of which earlier number:
    the last ``share`` of the folder copies sources spread over the rest; the second copy of a source makes a
    group of three. ``{}`` for folders too small to spare an image."""
    copies = int(round(count * share)) if count >= 6 else 0
    if copies == 0:
        return {}
    originals = count - copies
    sources = [1 + (index * originals) // copies for index in range(copies)]
    if copies >= 4:
        sources[-1] = sources[0]  # a group of three: one frame exported three times
    return {originals + 1 + index: source for index, source in enumerate(sources)}
