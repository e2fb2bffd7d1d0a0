"""Intensity transforms: histogram equalisation, CLAHE, Wiener denoising (array + dictionary forms)."""

from .array import CLAHE, HistogramEqualize, WienerFilter
from .dictionary import CLAHEd, HistogramEqualized, WienerFilterd
from .functional import CLAHE_BINS, clahe, histogram_equalize, wiener_filter

__all__ = [
    "CLAHE",
    "CLAHE_BINS",
    "CLAHEd",
    "HistogramEqualize",
    "HistogramEqualized",
    "WienerFilter",
    "WienerFilterd",
    "clahe",
    "histogram_equalize",
    "wiener_filter",
]
