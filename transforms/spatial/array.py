"""Geometry transforms for mammograms, invertible through MONAI's traced operations.

``BorderCrop`` and ``LesionRoiCrop`` are MONAI ``Crop`` subclasses and ``BreastCentredSquarePad`` a
``Pad`` subclass: the crop/pad is recorded in ``applied_operations`` by the same mechanics as
``SpatialCrop``/``BorderPad``, the affine (hence the mm spacing) follows, and ``inverse`` (or MONAI
``Invertd``) restores the original geometry. ``CanonicalSide`` wraps MONAI ``Flip`` like ``RandFlip``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Crop, Flip, InvertibleTransform, Pad, Resize, Transform
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from .breast import breast_box, breast_region

__all__ = [
    "BorderCrop",
    "RemoveArtefacts",
    "CanonicalSide",
    "BreastCentredSquarePad",
    "LesionRoiCrop",
    "lesion_boxes",
    "square_box",
    "paste_back",
    "detector_views",
    "MSF_SCALES_WH",
]

#: the five detector input sizes of the two-stage MSF paper, as printed there: (width, height)
MSF_SCALES_WH = ((160, 320), (256, 512), (320, 640), (416, 832), (480, 960))


def _name(img: torch.Tensor) -> str | None:
    meta = getattr(img, "meta", None)
    return None if meta is None else meta.get("filename_or_obj")


def _first_channel(img: torch.Tensor) -> np.ndarray:
    if img.ndim != 3:
        raise ValueError(f"expected a channel-first 2D image (C, rows, cols), got shape {tuple(img.shape)}")
    return np.asarray(img[0].detach().cpu().numpy(), dtype=np.float32)


class BorderCrop(Crop):
    """Cut a fixed share of every border (digitised-film borders and corners, ConnectedUNets++).

    Args:
        fraction: share of the size removed from each side, ``(rows, cols)`` or one value, in ``[0, 0.5)``.
    """

    def __init__(self, fraction: Sequence[float] | float = 0.01, lazy: bool = False) -> None:
        super().__init__(lazy=lazy)
        frac = tuple(float(f) for f in ensure_tuple_rep(fraction, 2))
        if any(not 0.0 <= f < 0.5 for f in frac):
            raise ValueError(f"fraction must be in [0, 0.5) per axis, got {fraction}")
        self.fraction = frac

    def slices_for(self, spatial_shape: Sequence[int]) -> tuple[slice, slice]:
        cuts = [int(round(f * n)) for f, n in zip(self.fraction, spatial_shape)]
        return tuple(slice(c, n - c) for c, n in zip(cuts, spatial_shape))  # type: ignore[return-value]

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().__call__(img, self.slices_for(img.shape[1:]), lazy=lazy)


class RemoveArtefacts(Transform):
    """Keep only the breast (largest bright component, see :mod:`.breast`); set the rest to the background.

    Removes film labels, burned-in text and border lines. Geometry is unchanged, so nothing to invert.

    Args:
        threshold: foreground level as a share of the robust intensity range.
        min_area: smallest breast, as a share of the image; smaller → :class:`NoBreastFoundError`
            (a ``ValueError`` naming the file, for the caller to quarantine).
        background: value written outside the breast; ``None`` uses the image minimum.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.1, min_area: float = 0.02, background: float | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not 0.0 < min_area < 1.0:
            raise ValueError(f"min_area must be in (0, 1), got {min_area}")
        self.threshold = threshold
        self.min_area = min_area
        self.background = background

    def region(self, img: torch.Tensor) -> np.ndarray:
        """The full-size bool breast mask of ``img``'s first channel."""
        return breast_region(_first_channel(img), self.threshold, self.min_area, name=_name(img))

    def __call__(self, img: NdarrayOrTensor, region: np.ndarray | None = None) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        keep = self.region(img_t) if region is None else region
        fill = float(img_t.min()) if self.background is None else self.background
        keep_t = torch.as_tensor(keep, device=img_t.device)[None]
        return torch.where(keep_t, img_t, torch.as_tensor(fill, dtype=img_t.dtype, device=img_t.device))


class CanonicalSide(InvertibleTransform):
    """Flip left-right so the breast lies on the ``side`` of the image (decided from the image content).

    The decision compares the breast area in the left and right halves of the breast mask. Like MONAI
    ``RandFlip``, a record is pushed whether or not it flips, so ``inverse`` is always valid.

    Args:
        side: ``"left"`` (chest wall at column 0) or ``"right"``.
    """

    backend = Flip.backend

    def __init__(self, side: str = "left") -> None:
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        self.side = side
        self.flipper = Flip(spatial_axis=1)
        self._do_transform = False

    def needs_flip(self, img: torch.Tensor) -> bool:
        region = breast_region(_first_channel(img), name=_name(img), full_size=False)
        half = region.shape[1] // 2
        breast_on_left = region[:, :half].sum() >= region[:, region.shape[1] - half :].sum()
        return breast_on_left != (self.side == "left")

    def __call__(self, img: NdarrayOrTensor, flip: bool | None = None) -> torch.Tensor:
        """Flip ``img`` if needed; ``flip`` forces the decision (the dictionary form decides once per sample)."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        self._do_transform = self.needs_flip(img_t) if flip is None else bool(flip)
        out = self.flipper(img_t) if self._do_transform else img_t
        out = convert_to_tensor(out, track_meta=get_track_meta())
        self.push_transform(out, replace=True)
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        if not transform[TraceKeys.DO_TRANSFORM]:
            return data
        data.applied_operations.append(transform[TraceKeys.EXTRA_INFO])  # type: ignore[union-attr]
        return self.flipper.inverse(data)


class BreastCentredSquarePad(Pad):
    """Zero-pad to a square of the longer side, placing the breast's bounding-box centre as near the
    square's centre as the padding allows (BReMS-Net "zero-padded ... by centering the breast part").

    The padding of each axis is ``clip(round(side / 2 - centre), 0, side - size)`` before and the rest after.
    """

    def __init__(self, value: float = 0.0, lazy: bool = False) -> None:
        super().__init__(mode="constant", lazy=lazy, value=value)

    def pad_for(self, img: torch.Tensor) -> list[tuple[int, int]]:
        rows, cols = (int(v) for v in img.shape[1:])
        side = max(rows, cols)
        r0, r1, c0, c1 = breast_box(_first_channel(img), name=_name(img))
        to_pad = [(0, 0)]
        for size, centre in ((rows, (r0 + r1) / 2), (cols, (c0 + c1) / 2)):
            total = side - size
            before = int(np.clip(round(side / 2 - centre), 0, total))
            to_pad.append((before, total - before))
        return to_pad

    def __call__(  # type: ignore[override]
        self, img: torch.Tensor, to_pad: list[tuple[int, int]] | None = None, lazy: bool | None = None
    ) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        return super().__call__(img_t, to_pad=self.pad_for(img_t) if to_pad is None else to_pad, lazy=lazy)


def square_box(
    bounds: Sequence[int], image_size: Sequence[int], margin: float = 0.25, min_size: int = 32
) -> tuple[int, int, int, int]:
    """The crop around a lesion of ``bounds`` ``(row_start, row_end, col_start, col_end)`` in an image of
    ``image_size`` ``(rows, cols)``: a square centred on the bounds, of side ``max(height, width) * (1 + 2 * margin)``
    (at least ``min_size``), shifted to lie inside the image and clipped where the image is smaller."""
    r0, r1, c0, c1 = (int(v) for v in bounds)
    side = max(int(round(max(r1 - r0, c1 - c0) * (1 + 2 * margin))), min_size)
    box = []
    for start, stop, limit in ((r0, r1, int(image_size[-2])), (c0, c1, int(image_size[-1]))):
        length = min(side, limit)
        begin = int(round((start + stop) / 2 - length / 2))
        begin = min(max(begin, 0), limit - length)
        box += [begin, begin + length]
    return tuple(box)


def lesion_boxes(
    label: NdarrayOrTensor, margin: float = 0.25, min_size: int = 32
) -> list[tuple[int, int, int, int]]:
    """One :func:`square_box` ``(row_start, row_end, col_start, col_end)`` per 8-connected lesion of ``label``,
    in the order of the components' first pixel in raster order."""
    import cv2

    mask = np.asarray(convert_to_dst_type(label, np.zeros(1))[0])
    mask = (mask[0] if mask.ndim == 3 else mask) > 0
    rows, cols = mask.shape
    any_rows, any_cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if any_rows.size == 0:
        return []
    # components are searched only inside the labels' bounding box: masks are sparse on a full mammogram
    r_off, c_off = int(any_rows[0]), int(any_cols[0])
    window = mask[r_off : any_rows[-1] + 1, c_off : any_cols[-1] + 1]
    count, _, stats, _ = cv2.connectedComponentsWithStats(window.astype(np.uint8), connectivity=8)
    boxes = []
    for index in range(1, count):
        top, left = stats[index, cv2.CC_STAT_TOP] + r_off, stats[index, cv2.CC_STAT_LEFT] + c_off
        height, width = stats[index, cv2.CC_STAT_HEIGHT], stats[index, cv2.CC_STAT_WIDTH]
        boxes.append(square_box((top, top + height, left, left + width), (rows, cols), margin, min_size))
    return boxes


class LesionRoiCrop(Crop):
    """Crop one patch per box (from :func:`lesion_boxes`); each crop is recorded and invertible.

    ``inverse`` pads a patch back into the full image (zeros elsewhere), which is the paste-back of
    a patch prediction once it has been resized back to the box size.
    """

    def __call__(  # type: ignore[override]
        self, img: torch.Tensor, boxes: Sequence[Sequence[int]], lazy: bool | None = None
    ) -> list[torch.Tensor]:
        crops = []
        for box in boxes:
            r0, r1, c0, c1 = (int(v) for v in box)
            if not (0 <= r0 < r1 <= img.shape[1] and 0 <= c0 < c1 <= img.shape[2]):
                raise ValueError(f"box {tuple(box)} is outside the image of size {tuple(img.shape[1:])}")
            crops.append(super().__call__(img, (slice(r0, r1), slice(c0, c1)), lazy=lazy))
        return crops


def paste_back(
    patches: Sequence[torch.Tensor] | torch.Tensor,
    boxes: Sequence[Sequence[int]],
    image_shape: Sequence[int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Place patch predictions into a zero ``(C, rows, cols)`` canvas of the original image.

    Each patch ``(C, h, w)`` is resized to its box ``(row_start, row_end, col_start, col_end)`` (``mode``:
    ``"bilinear"`` for probabilities, ``"nearest"`` for labels); overlapping patches keep the maximum.
    """
    if isinstance(patches, torch.Tensor) and patches.ndim == 3:
        patches = [patches]
    if len(patches) != len(boxes):
        raise ValueError(f"got {len(patches)} patches for {len(boxes)} boxes")
    rows, cols = (int(v) for v in image_shape[-2:])
    if not patches:
        raise ValueError("paste_back needs at least one patch (the channel count comes from it)")
    canvas = torch.zeros((patches[0].shape[0], rows, cols), dtype=torch.float32)
    for patch, box in zip(patches, boxes):
        r0, r1, c0, c1 = (int(v) for v in box)
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise ValueError(f"box {tuple(box)} is outside the image of size {(rows, cols)}")
        patch_t = patch.as_tensor() if isinstance(patch, MetaTensor) else torch.as_tensor(patch)
        corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        resized = torch.nn.functional.interpolate(patch_t.float()[None], size=(r1 - r0, c1 - c0), mode=mode, **corners)[0]
        canvas[:, r0:r1, c0:c1] = torch.maximum(canvas[:, r0:r1, c0:c1], resized)
    return canvas


def detector_views(
    img: torch.Tensor, scales_wh: Sequence[Sequence[int]] = MSF_SCALES_WH, mode: str = "area"
) -> list[torch.Tensor]:
    """The full image resized to each detector scale (the MSF paper's five ``(width, height)`` sizes).

    Each view is an invertible MONAI ``Resize`` of ``img`` (its affine carries the new spacing).
    """
    views = []
    for width, height in scales_wh:
        views.append(Resize((int(height), int(width)), mode=mode)(img))
    return views
