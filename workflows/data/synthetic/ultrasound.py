"""A small B-mode breast-ultrasound renderer shared by the synthetic BUSI and UDIAT layouts.

The frame is built the way a scanner's picture looks, not the way it is physically formed:

1. an echogenicity map of the breast layers (skin, hypoechoic subcutaneous fat with fat lobules,
   heterogeneous fibroglandular tissue, striated pectoral muscle);
2. hypoechoic lesions (oval, lobulated or irregular/angular outlines) with soft margins, faint internal
   echoes, an echogenic halo on some irregular ones, and posterior acoustic shadowing or enhancement;
3. depth-dependent attenuation with partial time-gain compensation;
4. multiplicative speckle: the magnitude of low-pass filtered complex Gaussian noise (Rayleigh distributed),
   with grains longer laterally than axially;
5. log compression to 8 bits, a dark border outside the field of view, and burned-in text and calipers.

Fat lobules are hypoechoic but unlabelled and margins are blurred, so a segmenter cannot reach Dice 1.0 by
thresholding; the lesions stay darker and more compact than anything else, so they remain learnable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from breastseg.workflows.data.synthetic._us_overlay import draw_annotations, draw_calipers
from breastseg.workflows.data.synthetic._us_shapes import LESION_SHAPES, fill_outline, lesion_outline

__all__ = ["POSTERIOR_FEATURES", "LesionStyle", "UltrasoundFrame", "render_ultrasound", "sample_lesion_styles"]

#: what the beam does behind a lesion
POSTERIOR_FEATURES = ("shadow", "enhancement", "none")


@dataclass(frozen=True)
class LesionStyle:
    """How one lesion looks.

    Args:
        shape: outline family, one of ``oval``, ``lobulated``, ``irregular``.
        posterior: ``shadow``, ``enhancement`` or ``none``.
        scale: radius as a fraction of the field of view's smaller side.
    """

    shape: str = "oval"
    posterior: str = "none"
    scale: float = 0.15

    def __post_init__(self) -> None:
        if self.shape not in LESION_SHAPES:
            raise ValueError(f"unknown lesion shape {self.shape!r}; choose one of {LESION_SHAPES}")
        if self.posterior not in POSTERIOR_FEATURES:
            raise ValueError(f"unknown posterior feature {self.posterior!r}; choose one of {POSTERIOR_FEATURES}")
        if not 0.02 <= self.scale <= 0.4:
            raise ValueError(f"lesion scale must be in [0.02, 0.4], got {self.scale}")


def sample_lesion_styles(rng: np.random.Generator, pathology: str, count: int) -> list[LesionStyle]:
    """Draw ``count`` lesion styles typical of ``pathology`` (``benign`` or ``malignant``).

    Benign masses are mostly oval or lobulated with enhancement or no posterior feature; malignant ones are
    mostly irregular with shadowing (BI-RADS US lexicon). Several lesions in one frame are drawn smaller.
    """
    if pathology not in ("benign", "malignant"):
        raise ValueError(f"pathology must be 'benign' or 'malignant', got {pathology!r}")
    if pathology == "benign":
        shapes, shape_p, posterior_p, scale = LESION_SHAPES, (0.5, 0.35, 0.15), (0.1, 0.4, 0.5), (0.08, 0.2)
    else:
        shapes, shape_p, posterior_p, scale = LESION_SHAPES, (0.1, 0.2, 0.7), (0.6, 0.1, 0.3), (0.1, 0.24)
    if count > 1:
        scale = (0.06, 0.11)
    return [
        LesionStyle(
            shape=str(rng.choice(shapes, p=shape_p)),
            posterior=str(rng.choice(POSTERIOR_FEATURES, p=posterior_p)),
            scale=float(rng.uniform(*scale)),
        )
        for _ in range(count)
    ]


@dataclass
class UltrasoundFrame:
    """A rendered frame: ``image`` uint8 ``(H, W)`` and one boolean ``(H, W)`` mask per lesion."""

    image: np.ndarray
    lesion_masks: list[np.ndarray]


def render_ultrasound(
    rng: np.random.Generator,
    height: int,
    width: int,
    lesions: Sequence[LesionStyle] = (),
    calipers: bool = False,
    annotations: bool = True,
) -> UltrasoundFrame:
    """Render one B-mode frame with the given lesions (non-overlapping, inside the field of view).

    Args:
        rng: the only random source, so a seed fixes the frame.
        height: rows, at least 64.
        width: columns, at least 64.
        lesions: one style per lesion; an empty sequence renders normal tissue.
        calipers: burn caliper marks at the first lesion's edges.
        annotations: burn a label and depth ticks into the border.

    Raises:
        ValueError: a size below 64 pixels, or lesions that cannot be placed without overlap.
    """
    if height < 64 or width < 64:
        raise ValueError(f"frame must be at least 64x64 pixels, got {height}x{width}")
    top, side = max(6, int(0.07 * height)), max(2, int(0.03 * width))
    fov = (slice(top, height), slice(side, width - side))
    fov_h, fov_w = height - top, width - 2 * side
    echo = _tissue_map(rng, fov_h, fov_w)
    depth = np.linspace(0.0, 1.0, fov_h)[:, None]

    masks_fov: list[np.ndarray] = []
    outlines: list[np.ndarray] = []
    taken = np.zeros((fov_h, fov_w), dtype=bool)
    for style in lesions:
        outline, mask = _place_lesion(rng, style, fov_h, fov_w, taken)
        taken |= ndimage.binary_dilation(mask, iterations=max(2, fov_w // 60))
        echo = _apply_lesion(rng, echo, mask, style, fov_h)
        masks_fov.append(mask)
        outlines.append(outline)

    attenuation = rng.uniform(0.9, 1.8)
    echo = echo * np.exp(-attenuation * depth) * (1.0 + rng.uniform(0.3, 0.9) * attenuation * depth)
    signal = echo * _speckle(rng, fov_h, fov_w) + rng.uniform(0.005, 0.02)
    compressed = np.log1p(30.0 * signal) / np.log1p(30.0 * np.percentile(signal, 99.7))
    gain = rng.uniform(0.75, 0.95)

    image = np.zeros((height, width), dtype=np.uint8)
    image[fov] = np.clip(255.0 * gain * compressed, 0, 255).astype(np.uint8)
    lesion_masks = []
    for mask, outline in zip(masks_fov, outlines):
        full = np.zeros((height, width), dtype=bool)
        full[fov] = mask
        lesion_masks.append(full)
    if calipers and outlines:
        draw_calipers(image, outlines[0] + np.array([side, top]), rng)
    if annotations:
        draw_annotations(image, rng, top)
    return UltrasoundFrame(image=image, lesion_masks=lesion_masks)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma`` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _wavy_boundary(rng: np.random.Generator, width: int, mean: float, amplitude: float) -> np.ndarray:
    """A smooth layer boundary: depth fraction per column."""
    return mean + amplitude * _smooth_noise(rng, (1, width), width / 6.0)[0]


def _tissue_map(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Echogenicity of normal breast layers, in roughly [0, 1]."""
    depth = np.linspace(0.0, 1.0, height)[:, None]
    skin = _wavy_boundary(rng, width, rng.uniform(0.03, 0.06), 0.005)
    fat = _wavy_boundary(rng, width, rng.uniform(0.15, 0.3), 0.04)
    gland = _wavy_boundary(rng, width, rng.uniform(0.7, 0.88), 0.04)
    texture = _smooth_noise(rng, (height, width), max(1.5, width / 70.0))
    strands = np.clip(_smooth_noise(rng, (height, width), max(1.0, width / 120.0)), 0, None)

    echo = np.full((height, width), 0.32) + 0.06 * texture
    echo = np.where(depth < skin, 0.95, echo)
    glandular = (depth >= fat) & (depth < gland)
    echo = np.where(glandular, 0.62 + 0.12 * texture + 0.15 * strands, echo)
    striations = 0.5 + 0.5 * np.sin(2 * np.pi * depth * rng.uniform(14, 24) + 0.8 * texture)
    echo = np.where(depth >= gland, 0.35 + 0.2 * striations, echo)
    # unlabelled hypoechoic fat lobules inside the gland: the look-alikes a segmenter must reject
    for _ in range(int(rng.integers(1, 4))):
        center = (rng.uniform(0.1, 0.9) * width, rng.uniform(fat.mean() + 0.05, gland.mean()) * height)
        radius = rng.uniform(0.06, 0.12) * width
        outline = lesion_outline(rng, "oval", center, radius, rng.uniform(0.3, 0.5), rng.uniform(-0.2, 0.2))
        lobule = ndimage.gaussian_filter(fill_outline(outline, height, width).astype(float), 2.0)
        echo = echo * (1.0 - rng.uniform(0.25, 0.45) * lobule)
    return np.clip(echo, 0.02, 1.2)


def _place_lesion(
    rng: np.random.Generator, style: LesionStyle, height: int, width: int, taken: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an outline that stays inside the field of view and off the lesions already placed."""
    radius = style.scale * min(height, width)
    aspect = rng.uniform(0.5, 0.8) if style.shape != "irregular" else rng.uniform(0.7, 1.1)
    for _ in range(50):
        center = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.65) * height)
        outline = lesion_outline(rng, style.shape, center, radius, aspect, rng.uniform(-0.35, 0.35))
        low, high = outline.min(axis=0), outline.max(axis=0)
        if low[0] < 2 or low[1] < 2 or high[0] > width - 3 or high[1] > height - 3:
            continue
        mask = fill_outline(outline, height, width)
        if mask.any() and not (mask & taken).any():
            return outline, mask
    raise ValueError(f"cannot place a {style.shape} lesion of scale {style.scale} in a {height}x{width} field")


def _apply_lesion(
    rng: np.random.Generator, echo: np.ndarray, mask: np.ndarray, style: LesionStyle, height: int
) -> np.ndarray:
    """Darken the lesion (soft margin), add internal echoes, a halo and the posterior feature."""
    margin = rng.uniform(1.0, 2.5) * max(1.0, echo.shape[1] / 250.0)
    soft = ndimage.gaussian_filter(mask.astype(float), margin)
    # internal echoes stay positive (the tissue map's floor): a negative echo has no log compression (NaN pixels)
    interior = np.clip(rng.uniform(0.08, 0.35) * (1.0 + 0.25 * _smooth_noise(rng, echo.shape, 2.0)), 0.02, None)
    echo = echo * (1.0 - soft) + interior * soft
    if style.shape == "irregular" and rng.random() < 0.5:
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        echo = echo + 0.25 * ndimage.gaussian_filter(ring.astype(float), 1.5)
    if style.posterior == "none":
        return echo
    rows = np.arange(echo.shape[0])[:, None]
    bottom = np.where(mask.any(axis=0), echo.shape[0] - 1 - np.argmax(mask[::-1], axis=0), -1)
    behind = (rows > bottom[None, :]) & (bottom[None, :] >= 0)
    decay = np.exp(-(rows - bottom[None, :]).clip(0) / (rng.uniform(0.3, 0.8) * height))
    strength = rng.uniform(0.4, 0.65) if style.posterior == "shadow" else -rng.uniform(0.3, 0.6)
    effect = ndimage.gaussian_filter1d(behind * decay, sigma=max(1.0, echo.shape[1] / 80.0), axis=1)
    return echo * (1.0 - strength * effect)


def _speckle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Unit-mean Rayleigh speckle with laterally elongated grains."""
    grain = max(0.6, width / 400.0)
    real = ndimage.gaussian_filter(rng.standard_normal((height, width)), (0.7 * grain, 1.6 * grain))
    imag = ndimage.gaussian_filter(rng.standard_normal((height, width)), (0.7 * grain, 1.6 * grain))
    magnitude = np.hypot(real, imag)
    return magnitude / magnitude.mean()
