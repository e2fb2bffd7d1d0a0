"""Dictionary twins of the geometry transforms: the decision (breast box, flip, lesion boxes) is made
once on ``reference_key`` (the image) and applied identically to every key (image and label)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import convert_to_tensor

from .array import BorderCrop, BreastCentredSquarePad, CanonicalSide, LesionRoiCrop, RemoveArtefacts, lesion_boxes, square_box

__all__ = ["BorderCropd", "RemoveArtefactsd", "CanonicalSided", "BreastCentredSquarePadd", "LesionRoiCropd"]


class _InvertibleMap(MapTransform, InvertibleTransform):
    """Inverse shared by the dictionary transforms: the array transform undoes its own records."""

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d


class BorderCropd(_InvertibleMap):
    """Dictionary version of :class:`BorderCrop`."""

    backend = BorderCrop.backend

    def __init__(self, keys: KeysCollection, fraction: Sequence[float] | float = 0.01, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BorderCrop(fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class RemoveArtefactsd(MapTransform):
    """Dictionary version of :class:`RemoveArtefacts`: the breast is found on ``reference_key`` and
    everything outside it is cleared in ``keys`` (image keys; labels are left as annotated)."""

    backend = RemoveArtefacts.backend

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "image",
        threshold: float = 0.1,
        min_area: float = 0.02,
        background: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.transform = RemoveArtefacts(threshold, min_area, background)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        region = self.transform.region(convert_to_tensor(d[self.reference_key], track_meta=get_track_meta()))
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], region=region)
        return d


class CanonicalSided(_InvertibleMap):
    """Dictionary version of :class:`CanonicalSide`: decided on ``reference_key``, applied to all ``keys``."""

    backend = CanonicalSide.backend

    def __init__(self, keys: KeysCollection, reference_key: str = "image", side: str = "left", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.transform = CanonicalSide(side)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        flip = self.transform.needs_flip(convert_to_tensor(d[self.reference_key], track_meta=get_track_meta()))
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], flip=flip)
        return d


class BreastCentredSquarePadd(_InvertibleMap):
    """Dictionary version of :class:`BreastCentredSquarePad`: padding computed on ``reference_key``."""

    backend = BreastCentredSquarePad.backend

    def __init__(self, keys: KeysCollection, reference_key: str = "image", value: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.transform = BreastCentredSquarePad(value=value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        to_pad = self.transform.pad_for(convert_to_tensor(d[self.reference_key], track_meta=get_track_meta()))
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], to_pad=to_pad)
        return d


class LesionRoiCropd(_InvertibleMap):
    """One sample per lesion: crop ``keys`` around each connected component of ``label_key``.

    Returns a list of dicts (like MONAI ``RandCropByPosNegLabeld``); each has ``lesion_index`` (0-based),
    ``lesion_count`` and ``roi_box = [row_start, row_end, col_start, col_end]`` in the pixels of the image
    it was cut from, and its crop is recorded so ``inverse`` pads the patch back to that image.

    Args:
        keys: keys to crop (image and label).
        label_key: the lesion mask the boxes come from.
        margin: context added on each side, as a share of the lesion's longer side (default 0.25: the
            UNet++ paper crops "around the lesion" without a number; a quarter of the lesion on each side
            keeps the margin and nearby tissue in a 224x224 patch).
        min_size: smallest box side in pixels (very small lesions keep some context).
        box_key: if the sample holds boxes under this key (inference with known lesion positions and no
            label), they are used instead of the label's.
        expand_boxes: the boxes under ``box_key`` are the lesions' own bounds (an annotation, a reader's mark):
            each is cropped as training crops a lesion of the label (:func:`square_box` with ``margin`` and
            ``min_size``). ``False``: they are crop boxes already, used as they are (the two-stage pipeline's).

    Raises:
        ValueError: the sample has no lesion and no boxes (the message names the image file); ROI
            chains are trained on lesion images only, so filter ``lesion_count > 0`` records first.
    """

    backend = LesionRoiCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        margin: float = 0.25,
        min_size: int = 32,
        box_key: str = "roi_boxes",
        expand_boxes: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        self.label_key = label_key
        self.margin = margin
        self.min_size = min_size
        self.box_key = box_key
        self.expand_boxes = expand_boxes
        self.transform = LesionRoiCrop()

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:  # type: ignore[override]
        d = dict(data)
        if d.get(self.box_key) is not None:
            boxes = [tuple(int(v) for v in box) for box in d[self.box_key]]
            if self.expand_boxes:
                size = next(d[key].shape[-2:] for key in self.keys if key in d)
                boxes = [square_box(box, size, self.margin, self.min_size) for box in boxes]
        elif self.label_key in d:
            boxes = lesion_boxes(d[self.label_key], self.margin, self.min_size)
        else:
            raise KeyError(f"LesionRoiCropd needs {self.label_key!r} or {self.box_key!r} in the sample")
        if not boxes:
            source = next((getattr(d[k], "meta", {}).get("filename_or_obj") for k in self.keys if k in d), None)
            raise ValueError(f"{source or '<sample>'}: no lesion in {self.label_key!r}, so no ROI to crop")
        samples: list[dict[Hashable, Any]] = []
        for index, box in enumerate(boxes):
            sample = {k: (v if k in self.keys else deepcopy(v)) for k, v in d.items()}
            sample.update(lesion_index=index, lesion_count=len(boxes), roi_box=list(box))
            samples.append(sample)
        for key in self.key_iterator(d):
            for sample, crop in zip(samples, self.transform(d[key], boxes)):
                sample[key] = crop
        return samples

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], torch.Tensor):
                d[key] = self.transform.inverse(d[key])
        return d
