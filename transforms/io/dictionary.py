"""Dictionary twins of the loaders, for samples built from datalist records."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from .array import LoadBreastImage, LoadLesionMask

__all__ = ["LoadBreastImaged", "LoadLesionMaskd"]


class LoadBreastImaged(MapTransform):
    """Dictionary version of :class:`LoadBreastImage`: replaces each path under ``keys`` by its image.

    Args:
        keys: keys holding image paths (usually ``"image"``).
        reader, apply_voi, decoding_plugin: see :class:`LoadBreastImage`.
        default_spacing_key: sample key of a nominal ``(row_mm, col_mm)`` used when a file states no
            spacing (datalist records of INbreast carry 0.07 mm); the key is consumed.
        allow_missing_keys: don't raise for missing keys.
    """

    backend = LoadBreastImage.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        reader: str = "pydicom",
        apply_voi: bool = False,
        decoding_plugin: str = "",
        default_spacing_key: str = "default_spacing",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadBreastImage(reader=reader, apply_voi=apply_voi, decoding_plugin=decoding_plugin)
        self.default_spacing_key = default_spacing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        default_spacing = d.pop(self.default_spacing_key, None)  # None cannot travel into a batch
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], default_spacing=default_spacing)
        return d


class LoadLesionMaskd(MapTransform):
    """Dictionary version of :class:`LoadLesionMask`: ``d[label] = mask(d[label], d[label_format], d[image])``.

    Args:
        keys: keys holding the label spec (usually ``"label"``).
        image_key: key of the already-loaded image whose size the mask must have.
        format_key: key holding the label format (``"dicom"``, ``"png"``, ``"inbreast-xml"``, ``"none"``).
        inbreast_kinds: INbreast ROI kinds rasterised.
        allow_missing_keys: don't raise for missing keys.
    """

    backend = LoadLesionMask.backend

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        format_key: str = "label_format",
        inbreast_kinds: Sequence[str] = ("mass",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.format_key = format_key
        self.loader = LoadLesionMask(inbreast_kinds=inbreast_kinds)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for needed in (self.image_key, self.format_key):
                if needed not in d:
                    raise KeyError(f"LoadLesionMaskd needs key {needed!r} in the sample (keys: {sorted(map(str, d))})")
            d[key] = self.loader(d[key], d[self.format_key], d[self.image_key])
        return d
