"""Dictionary twins of the intensity transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from .array import CLAHE, HistogramEqualize, ScaleByBitDepth, WienerFilter

__all__ = ["HistogramEqualized", "CLAHEd", "WienerFilterd", "ScaleByBitDepthd"]


class _Apply(MapTransform):
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class HistogramEqualized(_Apply):
    """Dictionary version of :class:`HistogramEqualize` (apply to image keys only)."""

    backend = HistogramEqualize.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_bins: int = 256,
        out_min: float = 0.0,
        out_max: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = HistogramEqualize(num_bins, out_min, out_max)


class CLAHEd(_Apply):
    """Dictionary version of :class:`CLAHE` (apply to image keys only)."""

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float = 0.01,
        tile_grid: Sequence[int] | int = 8,
        num_bins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CLAHE(clip_limit, tile_grid, num_bins)


class WienerFilterd(_Apply):
    """Dictionary version of :class:`WienerFilter` (apply to image keys only)."""

    backend = WienerFilter.backend

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[int] | int = 3,
        noise: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = WienerFilter(window, noise)


class ScaleByBitDepthd(_Apply):
    """Dictionary version of :class:`ScaleByBitDepth` (apply to image keys only)."""

    backend = ScaleByBitDepth.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ScaleByBitDepth()
