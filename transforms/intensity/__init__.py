"""Intensity transforms: histogram equalisation, CLAHE, Wiener denoising, scaling by bit depth (array + dictionary forms)."""

from .array import CLAHE, HistogramEqualize, ScaleByBitDepth, WienerFilter
from .dictionary import CLAHEd, HistogramEqualized, ScaleByBitDepthd, WienerFilterd
from .functional import CLAHE_BINS, clahe, histogram_equalize, wiener_filter

__all__ = [
    "CLAHE",
    "CLAHE_BINS",
    "CLAHEd",
    "HistogramEqualize",
    "HistogramEqualized",
    "ScaleByBitDepth",
    "ScaleByBitDepthd",
    "WienerFilter",
    "WienerFilterd",
    "clahe",
    "histogram_equalize",
    "wiener_filter",
]
