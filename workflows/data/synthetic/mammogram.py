"""A synthetic mammogram renderer shared by the CBIS-DDSM and INbreast layouts.

The picture is built in display units (0 = air/black, 1 = brightest; dense tissue is bright, as in
MONOCHROME2): a breast outline with a compression fall-off near the skin, fibroglandular texture from
multi-scale noise, the pectoral muscle on MLO views, masses of several shapes and margins (see
:data:`MASS_CONTRAST`, with their own texture),
optional calcification clusters, quantum noise, and, for digitised film, film-border strips and a
burned-in label. Everything is vectorised; noise is drawn at low resolution and upsampled with
``cv2.resize`` so a 1024-row image takes a few tens of milliseconds.

Lesion outlines are polygons ``(x, y)`` = (column, row); their masks are the filled polygons (pixel
centres inside), the rule the INbreast XML rasteriser uses, so an outline written to XML and read
back gives the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.draw import polygon as fill_polygon

__all__ = ["MASS_CONTRAST", "MASS_STYLES", "Lesion", "Mammogram", "render_mammogram", "outline_mask"]

#: mass style -> (CBIS-DDSM mass shape, CBIS-DDSM mass margins)
MASS_STYLES = {
    "round": ("ROUND", "CIRCUMSCRIBED"),
    "oval": ("OVAL", "OBSCURED"),
    "lobulated": ("LOBULATED", "MICROLOBULATED"),
    "spiculated": ("IRREGULAR", "SPICULATED"),
    "ill_defined": ("IRREGULAR", "ILL_DEFINED"),
}

#: a mass's peak brightness above the surrounding tissue, in display units. Real masses sit a few percent
#: above it; at that contrast a whole-mammogram network from random initialisation learns nothing within
#: a CPU budget, and a stand-in dataset on which no model learns cannot tell a broken pipeline from a hard
#: task. Masses are drawn denser than fibroglandular tissue instead (small ones in dense breasts stay subtle).
MASS_CONTRAST = (0.2, 0.35)

#: edge blur of a mass, as a fraction of its radius: circumscribed masses are sharp, ill-defined ones fade out
_EDGE_BLUR = {"round": 0.06, "oval": 0.18, "lobulated": 0.1, "spiculated": 0.12, "ill_defined": 0.4}


@dataclass
class Lesion:
    """One rendered lesion.

    Attributes:
        kind: ``"mass"`` or ``"calcification"``.
        style: a :data:`MASS_STYLES` key for masses, ``"cluster"`` for calcifications.
        outline: ``(N, 2)`` float polygon ``(x, y)`` drawn by a reader (the calcification cluster's hull).
        mask: boolean image, the filled outline.
        points: ``(M, 2)`` ``(x, y)`` centres of the calcifications (empty for masses).
    """

    kind: str
    style: str
    outline: np.ndarray
    mask: np.ndarray
    points: np.ndarray


@dataclass
class Mammogram:
    """A rendered image in display units ``[0, 1]`` (float32) and its lesions."""

    image: np.ndarray
    lesions: list[Lesion]


def outline_mask(outline: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill the polygon ``outline`` (``(x, y)`` points) into a boolean image of ``shape``."""
    mask = np.zeros(shape, dtype=bool)
    rr, cc = fill_polygon(outline[:, 1], outline[:, 0], shape=shape)
    mask[rr, cc] = True
    return mask


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``cell`` pixels wide."""
    # four samples per feature, blurred at low resolution: smooth blobs without interpolation artefacts
    low = (max(4, int(round(4 * shape[0] / cell)) + 4), max(4, int(round(4 * shape[1] / cell)) + 4))
    field = cv2.GaussianBlur(rng.standard_normal(low).astype(np.float32), (0, 0), 2.0)
    field = cv2.resize(field, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return (field - field.mean()) / (field.std() + 1e-6)


def _breast_and_pectoral(rng: np.random.Generator, rows: int, cols: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Breast and pectoral-muscle masks with the chest wall on the left edge."""
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    wobble = 1.0 + 0.03 * _smooth_noise(rng, (rows, 1), rows / 6)
    if view == "CC":
        centre, half_height, reach = rows * rng.uniform(0.47, 0.53), rows * rng.uniform(0.40, 0.46), cols * rng.uniform(0.72, 0.88)
    else:  # MLO: the breast reaches the top edge (axilla)
        centre, half_height, reach = rows * rng.uniform(0.40, 0.46), rows * rng.uniform(0.52, 0.58), cols * rng.uniform(0.75, 0.9)
    edge = reach * np.sqrt(np.clip(1.0 - ((y - centre) / half_height) ** 2, 0.0, None)) * wobble
    breast = x < edge
    pectoral = np.zeros_like(breast)
    if view != "CC":
        top_width, height = cols * rng.uniform(0.28, 0.42), rows * rng.uniform(0.32, 0.48)
        pectoral = breast & (x < top_width * np.clip(1.0 - y / height, 0.0, None) ** 1.15)
    return breast, pectoral


def _tissue(rng: np.random.Generator, breast: np.ndarray, pectoral: np.ndarray, density: int) -> np.ndarray:
    rows, cols = breast.shape
    inside = cv2.distanceTransform(breast.astype(np.uint8), cv2.DIST_L2, 3)
    falloff = np.sqrt(np.clip(inside / (0.06 * cols), 0.0, 1.0))  # thinner tissue towards the skin line
    coarse = _smooth_noise(rng, (rows, cols), rows / 10)
    fine = _smooth_noise(rng, (rows, cols), rows / 60)
    threshold = {1: 1.1, 2: 0.6, 3: 0.1, 4: -0.4}[density]
    gland = 1.0 / (1.0 + np.exp(-2.5 * (coarse + 0.5 * fine - threshold)))
    gland *= np.clip(inside / (0.25 * cols), 0.0, 1.0)  # fibroglandular tissue sits away from the skin
    image = (0.32 + 0.26 * gland + 0.025 * fine) * falloff
    soft_pectoral = cv2.GaussianBlur(pectoral.astype(np.float32), (0, 0), max(1.0, rows / 400))
    image = image + soft_pectoral * (0.3 + 0.03 * fine)
    return np.where(breast, image, 0.0).astype(np.float32)


def _mass_outline(rng: np.random.Generator, style: str, centre: tuple[float, float], radius: float) -> np.ndarray:
    count = int(np.clip(2 * np.pi * radius / 2.0, 24, 180))
    theta = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
    harmonics = sum(rng.uniform(0.0, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
    if style == "oval":
        aspect = rng.uniform(1.3, 1.8)
        radial = radius / np.sqrt(np.cos(theta) ** 2 / aspect + np.sin(theta) ** 2 * aspect)
    elif style == "lobulated":
        radial = radius * (1.0 + rng.uniform(0.12, 0.2) * np.cos(rng.integers(3, 6) * theta + rng.uniform(0, 6.3)))
    elif style in ("spiculated", "ill_defined"):
        bumps = sum(rng.uniform(0.04, 0.1) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (4, 5, 7, 9))
        radial = radius * (1.0 + bumps)
    else:
        radial = np.full_like(theta, radius)
    radial = radial * (1.0 + harmonics)
    turn = rng.uniform(0, np.pi)
    x = centre[1] + radial * np.cos(theta + turn)
    y = centre[0] + radial * np.sin(theta + turn)
    return np.stack([x, y], axis=1)


def _patch_bounds(shape: tuple[int, int], centre: tuple[float, float], half: float) -> tuple[int, int, int, int]:
    top, left = max(0, int(centre[0] - half)), max(0, int(centre[1] - half))
    bottom, right = min(shape[0], int(centre[0] + half) + 1), min(shape[1], int(centre[1] + half) + 1)
    return top, bottom, left, right


def _add_mass(image: np.ndarray, rng: np.random.Generator, style: str, outline: np.ndarray, radius: float) -> None:
    centre = (float(outline[:, 1].mean()), float(outline[:, 0].mean()))
    top, bottom, left, right = _patch_bounds(image.shape, centre, 2.8 * radius + 4)
    local_shape = (bottom - top, right - left)
    local = outline_mask(outline - [left, top], local_shape).astype(np.float32)
    depth = cv2.distanceTransform((local > 0).astype(np.uint8), cv2.DIST_L2, 3) / max(radius, 1.0)
    dome = np.where(local > 0, 0.7 + 0.3 * np.clip(depth, 0.0, 1.0), 0.0)
    profile = cv2.GaussianBlur(dome.astype(np.float32), (0, 0), max(0.6, _EDGE_BLUR[style] * radius))
    if style == "spiculated":
        spicules = np.zeros(local_shape, dtype=np.float32)
        width = max(1, int(round(radius / 25)))
        for index in rng.choice(len(outline), size=rng.integers(8, 16), replace=False):
            x, y = outline[index] - [left, top]
            ax, ay = x - (centre[1] - left), y - (centre[0] - top)
            stretch = rng.uniform(0.6, 1.6)
            end = (int(round(x + ax * stretch)), int(round(y + ay * stretch)))
            cv2.line(spicules, (int(round(x)), int(round(y))), end, 0.55, width)
        profile += cv2.GaussianBlur(spicules, (0, 0), max(0.6, width * 0.6))
    texture = 1.0 + 0.25 * _smooth_noise(rng, local_shape, max(2.0, radius / 4))
    amplitude = rng.uniform(*MASS_CONTRAST)
    image[top:bottom, left:right] += amplitude * profile * texture


def _add_calcifications(
    image: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], radius: float
) -> tuple[np.ndarray, np.ndarray]:
    count = int(rng.integers(5, 14))
    angle, spread = rng.uniform(0, 2 * np.pi, count), radius * np.sqrt(rng.uniform(0, 1, count))
    points = np.stack([centre[1] + spread * np.cos(angle), centre[0] + spread * np.sin(angle)], axis=1)
    dots = np.zeros(image.shape, dtype=np.float32)
    size = max(1, int(round(image.shape[0] / 700)))
    for x, y in points:
        cv2.circle(dots, (int(round(x)), int(round(y))), size, float(rng.uniform(0.18, 0.32)), -1)
    top, bottom, left, right = _patch_bounds(image.shape, centre, radius + 4 * size + 4)
    image[top:bottom, left:right] += cv2.GaussianBlur(dots[top:bottom, left:right], (0, 0), 0.7)
    theta = np.linspace(0.0, 2 * np.pi, 32, endpoint=False)
    hull = 1.25 * radius + 2 * size
    outline = np.stack([centre[1] + hull * np.cos(theta), centre[0] + hull * np.sin(theta)], axis=1)
    return outline, points


def _place(
    rng: np.random.Generator, allowed: np.ndarray, depth: np.ndarray, radius: float, taken: list[tuple[float, float, float]]
) -> tuple[float, float]:
    """A centre at least ``1.3 * radius`` inside the allowed region and clear of the lesions already placed."""
    candidates = np.argwhere(allowed & (depth > 1.3 * radius))
    if len(candidates) == 0:
        candidates = np.argwhere(allowed & (depth >= depth[allowed].max() * 0.8))
    for _ in range(64):
        row, col = candidates[rng.integers(len(candidates))]
        if all(np.hypot(row - r, col - c) > 1.2 * (radius + other) for r, c, other in taken):
            break
    return float(row), float(col)


def _add_film_artefacts(image: np.ndarray, rng: np.random.Generator, breast: np.ndarray) -> np.ndarray:
    """Digitised-film look: fog, bright unexposed film borders and a burned-in label on the air side."""
    rows, cols = image.shape
    image = np.where(breast, image, rng.uniform(0.03, 0.08) + 0.01 * _smooth_noise(rng, image.shape, rows / 30))
    for edge in rng.choice(["top", "bottom", "far"], size=rng.integers(1, 4), replace=False):
        width = int(rows * rng.uniform(0.008, 0.03))
        level = rng.uniform(0.75, 0.95)
        if edge == "top":
            image[:width] = level
        elif edge == "bottom":
            image[rows - width :] = level
        else:
            image[:, cols - int(width * 0.6) - 1 :] = level
    label_h, label_w = int(rows * rng.uniform(0.04, 0.06)), int(cols * rng.uniform(0.18, 0.28))
    top = int(rows * rng.uniform(0.05, 0.12)) if rng.random() < 0.5 else int(rows * rng.uniform(0.8, 0.88))
    left = cols - label_w - int(cols * 0.04)
    label = np.full((label_h, label_w), rng.uniform(0.8, 0.95), dtype=np.float32)
    glyph_h, glyph_w = max(1, label_h // 3), max(1, label_w // 14)
    for index in range(10):  # dark glyph-like blocks, as printed text
        if rng.random() < 0.8:
            gx = 1 + index * (glyph_w + max(1, glyph_w // 3))
            label[label_h // 3 : label_h // 3 + glyph_h, gx : gx + glyph_w] = rng.uniform(0.1, 0.3)
    region = image[top : top + label_h, left : left + label_w]
    free = ~breast[top : top + label_h, left : left + label_w]
    region[free] = label[: region.shape[0], : region.shape[1]][free]
    return image


def render_mammogram(
    rng: np.random.Generator,
    shape: tuple[int, int],
    view: str,
    chest_wall_left: bool,
    density: int = 2,
    masses: tuple[str, ...] = (),
    calcification_clusters: int = 0,
    film: bool = False,
    mass_at_chest_wall: bool = False,
) -> Mammogram:
    """Render one mammogram.

    Args:
        rng: the random generator (the picture depends only on its state and the arguments).
        shape: ``(rows, columns)``.
        view: ``"CC"`` or ``"MLO"`` (MLO adds the pectoral muscle and reaches the axilla).
        chest_wall_left: put the chest wall on the left edge (else on the right).
        density: ACR density 1-4 (share of fibroglandular tissue).
        masses: one :data:`MASS_STYLES` key per mass to draw.
        calcification_clusters: number of calcification clusters.
        film: add the digitised-film artefacts of CBIS-DDSM.
        mass_at_chest_wall: centre the first mass next to the chest-wall edge, so that part of its
            outline lies outside the image (as annotations that run past the image in INbreast).

    Raises:
        ValueError: for an unknown view, density or mass style, or an image under 32 pixels a side.
    """
    rows, cols = (int(size) for size in shape)
    if min(rows, cols) < 32:
        raise ValueError(f"shape must be at least 32x32, got {shape}")
    if view not in ("CC", "MLO"):
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if density not in (1, 2, 3, 4):
        raise ValueError(f"density must be 1-4, got {density!r}")
    unknown = set(masses) - set(MASS_STYLES)
    if unknown:
        raise ValueError(f"unknown mass style(s) {sorted(unknown)}; choose from {sorted(MASS_STYLES)}")

    breast, pectoral = _breast_and_pectoral(rng, rows, cols, view)
    image = _tissue(rng, breast, pectoral, density)
    allowed = breast & ~cv2.dilate(pectoral.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    allowed[[0, -1], :] = allowed[:, [0, -1]] = False  # keep lesions off the image edges too
    depth = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 3)
    taken: list[tuple[float, float, float]] = []
    lesions = []
    for number, style in enumerate(masses):
        radius = rows * rng.uniform(0.018, 0.06)
        if number == 0 and mass_at_chest_wall:  # partly imaged: its outline runs past the image edge
            band = np.argwhere(allowed[:, 1])
            centre = (float(band[rng.integers(len(band))][0]), 0.4 * radius)
        else:
            centre = _place(rng, allowed, depth, radius, taken)
        taken.append((*centre, radius * 1.6))
        outline = _mass_outline(rng, style, centre, radius)
        _add_mass(image, rng, style, outline, radius)
        lesions.append(Lesion("mass", style, outline, outline_mask(outline, (rows, cols)), np.zeros((0, 2))))
    for _ in range(calcification_clusters):
        radius = rows * rng.uniform(0.012, 0.025)
        centre = _place(rng, allowed, depth, radius, taken)
        taken.append((*centre, radius * 1.3))
        outline, points = _add_calcifications(image, rng, centre, radius)
        lesions.append(Lesion("calcification", "cluster", outline, outline_mask(outline, (rows, cols)), points))

    image += 0.012 * rng.standard_normal((rows, cols), dtype=np.float32) * breast
    if film:
        image = _add_film_artefacts(image, rng, breast)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if not chest_wall_left:
        image = image[:, ::-1].copy()
        for lesion in lesions:
            lesion.outline = lesion.outline * [-1, 1] + [cols - 1, 0]
            lesion.mask = outline_mask(lesion.outline, (rows, cols))  # the mask is always the outline's fill
            lesion.points = lesion.points * [-1, 1] + [cols - 1, 0] if len(lesion.points) else lesion.points
    return Mammogram(image=image, lesions=lesions)
